//! The workers (generator, sweeper) wired to a mock provider and a [`World`], and what the
//! tests read back: deliveries as the event source mapping makes them, objects, entries.

use serde_json::json;

use crate::World;

/// A generator wired to a mock provider and this world.
pub async fn generator_for(
    world: &World,
    mock: &mock_provider::MockHandle,
) -> std::sync::Arc<shared::generator::Generator> {
    generator_with_timeout(world, mock, std::time::Duration::from_secs(10)).await
}

pub async fn generator_with_timeout(
    world: &World,
    mock: &mock_provider::MockHandle,
    timeout: std::time::Duration,
) -> std::sync::Arc<shared::generator::Generator> {
    std::sync::Arc::new(shared::generator::Generator {
        app: world.state.clone(),
        provider: provider_client(mock, timeout),
        image_concurrency: 8,
        lease_ms: 60_000,
        first_check_ms: 0,
        panic_prompt: None,
    })
}

/// A provider client of the mock whose calls give up after `timeout` (downloads after 30 s).
pub fn provider_client(
    mock: &mock_provider::MockHandle,
    timeout: std::time::Duration,
) -> shared::provider::Client {
    let config = shared::provider::ProviderConfig {
        base_url: mock.api_base(),
        request_timeout: timeout,
        connect_timeout: std::time::Duration::from_secs(2),
        download_timeout: std::time::Duration::from_secs(30),
    };
    shared::provider::Client::new(&config, mock.api_key())
}

/// Receives up to ten messages from a queue as an SQS Lambda event (without deleting them).
pub async fn receive_event(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
) -> (aws_lambda_events::event::sqs::SqsEvent, Vec<String>) {
    let out = sqs
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(10)
        .message_system_attribute_names(
            aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount,
        )
        .send()
        .await
        .unwrap();
    let mut event = aws_lambda_events::event::sqs::SqsEvent::default();
    let mut receipts = Vec::new();
    for m in out.messages.unwrap_or_default() {
        let mut record = aws_lambda_events::event::sqs::SqsMessage::default();
        record.message_id = m.message_id.clone();
        record.receipt_handle = m.receipt_handle.clone();
        record.body = m.body.clone();
        receipts.push(m.receipt_handle.unwrap_or_default());
        event.records.push(record);
    }
    (event, receipts)
}

/// Plays the event source mapping once: receive, invoke, delete what did not fail, and make
/// the failures visible again at once. Returns the ids reported as failed.
pub async fn deliver_once(
    world: &World,
    generator: &std::sync::Arc<shared::generator::Generator>,
) -> (usize, Vec<String>) {
    let sqs = &world.state.aws.sqs;
    let queue = &world.state.config.queue_url;
    let (event, receipts) = receive_event(sqs, queue).await;
    let ids: Vec<String> = event
        .records
        .iter()
        .map(|r| r.message_id.clone().unwrap())
        .collect();
    let count = ids.len();
    let response = shared::generator::handle_batch(generator.clone(), event, long_deadline()).await;
    let failed: Vec<String> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    for (id, receipt) in ids.iter().zip(receipts) {
        if failed.contains(id) {
            sqs.change_message_visibility()
                .queue_url(queue)
                .receipt_handle(receipt)
                .visibility_timeout(0)
                .send()
                .await
                .unwrap();
        } else {
            sqs.delete_message()
                .queue_url(queue)
                .receipt_handle(receipt)
                .send()
                .await
                .unwrap();
        }
    }
    (count, failed)
}

/// Keys and content types of the objects in the world's bucket.
pub async fn objects(world: &World) -> Vec<(String, String)> {
    let s3 = &world.state.aws.s3;
    let bucket = &world.state.config.bucket;
    let list = s3.list_objects_v2().bucket(bucket).send().await.unwrap();
    let mut out = Vec::new();
    for object in list.contents.unwrap_or_default() {
        let key = object.key.unwrap();
        let head = s3
            .head_object()
            .bucket(bucket)
            .key(&key)
            .send()
            .await
            .unwrap();
        out.push((key, head.content_type.unwrap_or_default()));
    }
    out.sort();
    out
}

/// A sweeper wired to a mock provider and this world.
pub fn sweeper_for(
    world: &World,
    mock: &mock_provider::MockHandle,
    settings: shared::sweeper::Settings,
) -> shared::sweeper::Sweeper {
    shared::sweeper::Sweeper {
        app: world.state.clone(),
        provider: provider_client(mock, std::time::Duration::from_secs(10)),
        settings,
    }
}

/// A deadline far enough away for any test run.
pub fn long_deadline() -> std::time::Instant {
    std::time::Instant::now() + std::time::Duration::from_secs(300)
}

/// Ledger entries of a user by kind.
pub async fn entry_count(world: &World, user: &str, kind: shared::ledger::EntryKind) -> usize {
    shared::ledger::entries_between(world.ddb(), world.table(), user, "0", "~")
        .await
        .unwrap()
        .iter()
        .filter(|e| e.kind == kind)
        .count()
}

/// `count` users, each with one video session rendering `task` and due now.
pub async fn rendering_sessions(
    world: &World,
    mock: &mock_provider::MockHandle,
    count: usize,
    prompt: &str,
) -> Vec<(String, String)> {
    use futures::StreamExt;
    use shared::ledger::{self, Reservation};
    use shared::provider::VideoTask;
    use shared::sessions::{self, Session, Status};
    let clock_ms = shared::clock::now_ms;
    let provider = sweeper_for(world, mock, shared::sweeper::Settings::default()).provider;
    futures::stream::iter(0..count)
        .map(|i| {
            let provider = provider.clone();
            async move {
                let user = format!("u{i}");
                world.grant(&user, 20, None).await;
                let task_id = provider
                    .create_task(&VideoTask {
                        model: "m",
                        prompt,
                        resolution: "480p",
                        ratio: "16:9",
                        duration: 5,
                        first_frame: None,
                        seed: i as u32,
                    })
                    .await
                    .unwrap();
                let parsed = shared::generation::parse_video(
                    json!({"prompt": "p"}).to_string().as_bytes(),
                    shared::generation::Limits {
                        max_prompt_chars: 100,
                    },
                )
                .unwrap();
                let id = shared::table::keys::new_id();
                let mut session =
                    Session::queued(id.clone(), &user, "k".into(), parsed.request, clock_ms());
                session.status = Status::Rendering;
                session.attempt = 1;
                session.provider_task_id = Some(task_id);
                session.due_pk = Some(sessions::DUE_PK.into());
                session.due_at_ms = Some(clock_ms() - 1);
                let reservation = Reservation {
                    user_id: &user,
                    session_id: &id,
                    amount: session.credits_reserved,
                    model: &session.model,
                    inflight_cap: 10,
                };
                let put =
                    shared::table::put_new(world.table(), session.to_item().unwrap()).unwrap();
                ledger::reserve(world.ddb(), world.table(), &reservation, vec![put])
                    .await
                    .unwrap();
                (user, id)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await
}
