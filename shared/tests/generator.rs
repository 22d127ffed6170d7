//! The generator against moto and the mock provider.

use std::time::Duration;

use mock_provider::{Knobs, Latency};
use serde_json::json;
use shared::batch::{run_batch, Outcome};
use shared::routes::enqueue::{handle, IMAGE_ROUTE, VIDEO_ROUTE};
use shared::sessions::{self, Session, Status};
use testkit::{
    deliver_once, generator_for, generator_with_timeout, objects, parts, user, Event, World,
};

async fn enqueue(world: &World, route: &'static str, body: serde_json::Value) -> String {
    let event = Event::new(route, user("gen")).body(body.to_string());
    let (status, accepted) = parts(handle(&world.state, event.build()).await);
    assert_eq!(status, 202, "{accepted}");
    accepted["session_id"].as_str().unwrap().to_owned()
}

async fn session(world: &World, id: &str) -> Session {
    sessions::get(world.ddb(), world.table(), "gen", id)
        .await
        .unwrap()
        .unwrap()
}

async fn setup(knobs: Knobs) -> (World, mock_provider::MockHandle) {
    let world = World::with(|c| c.inflight_cap = 20).await;
    world.grant("gen", 200, None).await;
    (world, mock_provider::start(knobs).await.unwrap())
}

#[tokio::test]
async fn four_images_are_generated_at_once_stored_and_captured() {
    let mut knobs = Knobs::default();
    knobs.latency.images = Latency::fixed(300);
    let (world, mock) = setup(knobs).await;
    let generator = generator_for(&world, &mock).await;
    let id = enqueue(
        &world,
        IMAGE_ROUTE,
        json!({"prompt": "a lake", "n": 4, "size": "2K"}),
    )
    .await;

    let (count, failed) = deliver_once(&world, &generator).await;
    assert_eq!((count, failed.len()), (1, 0));
    let done = session(&world, &id).await;
    assert_eq!(done.status, Status::Completed);
    assert_eq!(done.credits_captured, 8);
    assert_eq!(done.outputs.len(), 4);
    assert!(
        done.open_pk.is_none(),
        "a finished session leaves the open index"
    );
    let timing = done.timing.expect("timing breakdown stored");
    assert!(
        timing.provider_ms >= 300 && timing.total_ms >= timing.provider_ms,
        "{timing:?}"
    );
    let expected: Vec<(String, String)> = (0..4)
        .map(|i| (format!("gen/{id}/{i}.png"), "image/png".to_owned()))
        .collect();
    assert_eq!(objects(&world).await, expected);
    let stats = mock.stats();
    assert_eq!(stats.requests.images, 4);
    assert_eq!(stats.images_max_in_flight, 4, "the four calls ran at once");
    let account = world.assert_conserved("gen").await;
    assert_eq!(
        (account.captured, account.held, account.inflight),
        (8, 0, 0)
    );
}

#[tokio::test]
async fn one_image_withheld_by_the_filter_captures_three_and_releases_one() {
    let (world, mock) = setup(Knobs::default()).await;
    let generator = generator_for(&world, &mock).await;
    let prompt = "a beach [fail-first:1:OutputImageSensitiveContentDetected]";
    let id = enqueue(
        &world,
        IMAGE_ROUTE,
        json!({"prompt": prompt, "n": 4, "size": "1K"}),
    )
    .await;
    let (_, failed) = deliver_once(&world, &generator).await;
    assert!(failed.is_empty());
    let done = session(&world, &id).await;
    assert_eq!(done.status, Status::Completed);
    assert_eq!(done.credits_captured, 3);
    assert!(
        done.note.as_deref().unwrap().contains("1 of 4"),
        "{:?}",
        done.note
    );
    assert_eq!(objects(&world).await.len(), 3);
    let account = world.assert_conserved("gen").await;
    assert_eq!((account.captured, account.available), (3, 197));
}

#[tokio::test]
async fn every_image_withheld_fails_the_session_and_releases_everything() {
    let (world, mock) = setup(Knobs::default()).await;
    let generator = generator_for(&world, &mock).await;
    let id = enqueue(
        &world,
        IMAGE_ROUTE,
        json!({"prompt": "x [reject:all]", "n": 2}),
    )
    .await;
    let (_, failed) = deliver_once(&world, &generator).await;
    assert!(failed.is_empty());
    let done = session(&world, &id).await;
    assert_eq!(done.status, Status::Failed);
    assert_eq!(done.error.unwrap().code, "content_policy");
    assert!(objects(&world).await.is_empty());
    let account = world.assert_conserved("gen").await;
    assert_eq!(
        (account.captured, account.available, account.inflight),
        (0, 200, 0)
    );
}

#[tokio::test]
async fn invalid_parameter_fails_releases_and_is_not_retried() {
    let (world, mock) = setup(Knobs::default()).await;
    let generator = generator_for(&world, &mock).await;
    let id = enqueue(
        &world,
        IMAGE_ROUTE,
        json!({"prompt": "x [fail:InvalidParameter]", "n": 1}),
    )
    .await;
    let (count, failed) = deliver_once(&world, &generator).await;
    assert_eq!((count, failed.len()), (1, 0), "acknowledged, not retried");
    let done = session(&world, &id).await;
    assert_eq!(done.status, Status::Failed);
    assert_eq!(done.error.unwrap().code, "invalid_request");
    assert_eq!(world.assert_conserved("gen").await.available, 200);
    assert!(world.drain_queue().await.is_empty());
}

async fn retried_then_succeeds(code: &str) {
    let (world, mock) = setup(Knobs::default()).await;
    let generator = generator_for(&world, &mock).await;
    let prompt = format!("x [fail-first:2:{code}]");
    let id = enqueue(&world, IMAGE_ROUTE, json!({"prompt": prompt, "n": 2})).await;
    let (_, failed) = deliver_once(&world, &generator).await;
    assert_eq!(failed.len(), 1, "{code} is retryable");
    let waiting = session(&world, &id).await;
    assert_eq!(
        waiting.status,
        Status::Queued,
        "handed back for the redelivery"
    );
    assert_eq!(
        world.account("gen").await.held,
        4,
        "credits stay held, not released"
    );
    let (_, failed) = deliver_once(&world, &generator).await;
    assert!(failed.is_empty());
    let done = session(&world, &id).await;
    assert_eq!(
        (done.status, done.credits_captured, done.attempt),
        (Status::Completed, 4, 2)
    );
    let account = world.assert_conserved("gen").await;
    assert_eq!(account.captured, 4);
    let captures = shared::ledger::entries_between(world.ddb(), world.table(), "gen", "0", "~")
        .await
        .unwrap()
        .iter()
        .filter(|e| e.kind == shared::ledger::EntryKind::Capture)
        .count();
    assert_eq!(captures, 1);
}

#[tokio::test]
async fn a_500_is_retried_and_succeeds_on_redelivery_with_one_capture() {
    retried_then_succeeds("InternalServiceError").await;
}

#[tokio::test]
async fn a_429_is_retried_and_succeeds_on_redelivery_with_one_capture() {
    retried_then_succeeds("RateLimitExceeded.EndpointRPMExceeded").await;
}

#[tokio::test]
async fn a_timeout_is_retried_and_never_charged() {
    let (world, mock) = setup(Knobs::default()).await;
    let impatient = generator_with_timeout(&world, &mock, Duration::from_millis(300)).await;
    let id = enqueue(
        &world,
        IMAGE_ROUTE,
        json!({"prompt": "x [latency:3000]", "n": 1}),
    )
    .await;
    let (_, failed) = deliver_once(&world, &impatient).await;
    assert_eq!(failed.len(), 1);
    assert_eq!(session(&world, &id).await.status, Status::Queued);
    assert_eq!(world.account("gen").await.held, 2);
    let patient = generator_with_timeout(&world, &mock, Duration::from_secs(10)).await;
    let (_, failed) = deliver_once(&world, &patient).await;
    assert!(failed.is_empty());
    assert_eq!(session(&world, &id).await.status, Status::Completed);
    assert_eq!(world.assert_conserved("gen").await.captured, 2);
}

#[tokio::test]
async fn a_duplicate_delivery_makes_one_provider_call_set_and_one_capture() {
    let mut knobs = Knobs::default();
    knobs.latency.images = Latency::fixed(200);
    let (world, mock) = setup(knobs).await;
    let generator = generator_for(&world, &mock).await;
    let id = enqueue(&world, IMAGE_ROUTE, json!({"prompt": "dup", "n": 3})).await;
    let (mut event, _) =
        testkit::receive_event(&world.state.aws.sqs, &world.state.config.queue_url).await;
    // The same message twice in one batch, and once more afterwards.
    let mut twin = event.records[0].clone();
    twin.message_id = Some("twin".into());
    event.records.push(twin);
    let response =
        shared::generator::handle_batch(generator.clone(), event.clone(), testkit::long_deadline())
            .await;
    assert!(response.batch_item_failures.len() <= 1);
    let mut again = event.clone();
    again.records.truncate(1);
    let response =
        shared::generator::handle_batch(generator.clone(), again, testkit::long_deadline()).await;
    assert!(
        response.batch_item_failures.is_empty(),
        "a finished session is acknowledged"
    );
    assert_eq!(mock.stats().requests.images, 3, "one provider call set");
    let done = session(&world, &id).await;
    assert_eq!((done.status, done.credits_captured), (Status::Completed, 6));
    assert_eq!(world.assert_conserved("gen").await.captured, 6);
}

#[tokio::test]
async fn a_message_that_always_fails_lands_in_the_dlq_after_max_receives() {
    let (world, mock) = setup(Knobs::default()).await;
    let generator = generator_for(&world, &mock).await;
    let id = enqueue(
        &world,
        IMAGE_ROUTE,
        json!({"prompt": "x [fail:ServiceUnavailable]", "n": 1}),
    )
    .await;
    let mut deliveries = 0;
    for _ in 0..6 {
        let (count, failed) = deliver_once(&world, &generator).await;
        deliveries += count;
        assert_eq!(failed.len(), count);
    }
    assert_eq!(deliveries, 3, "maxReceiveCount is 3");
    let dead = testkit::drain(&world.state.aws.sqs, &world.dlq_url).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["session_id"], id.as_str());
    assert_eq!(
        world.account("gen").await.held,
        2,
        "held until the deadletter function releases it"
    );
}

#[tokio::test]
async fn a_panicking_record_does_not_fail_its_neighbours() {
    let mut event = aws_lambda_events::event::sqs::SqsEvent::default();
    for id in ["a", "boom", "c"] {
        let mut record = aws_lambda_events::event::sqs::SqsMessage::default();
        record.message_id = Some(id.into());
        event.records.push(record);
    }
    let done = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = done.clone();
    let response = run_batch(event, move |record| {
        let seen = seen.clone();
        async move {
            let id = record.message_id.unwrap();
            if id == "boom" {
                panic!("injected");
            }
            seen.lock().unwrap().push(id);
            Outcome::Done
        }
    })
    .await;
    let failed: Vec<&str> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(failed, ["boom"]);
    let mut done = done.lock().unwrap().clone();
    done.sort();
    assert_eq!(done, ["a", "c"]);
}

#[tokio::test]
async fn a_video_creates_its_task_with_flags_and_renders() {
    let (world, mock) = setup(Knobs::default()).await;
    let generator = generator_for(&world, &mock).await;
    let body = json!({"prompt": "a kitten yawns", "resolution": "1080p", "ratio": "9:16", "duration": 4,
                      "first_frame": "https://example.com/cat.png"});
    let id = enqueue(&world, VIDEO_ROUTE, body).await;
    let (_, failed) = deliver_once(&world, &generator).await;
    assert!(failed.is_empty());
    let rendering = session(&world, &id).await;
    assert_eq!(rendering.status, Status::Rendering);
    assert_eq!(rendering.due_pk.as_deref(), Some("DUE"));
    let task_id = rendering.provider_task_id.clone().expect("task id stored");
    let task = mock.task(&task_id).expect("the mock has the task");
    assert_eq!(task.resolution, "1080p");
    assert_eq!(task.ratio, "9:16");
    assert_eq!(task.duration, 4);
    assert_eq!(task.model, "seedance-1-0-pro-250528");
    assert!(
        task.text.starts_with("a kitten yawns --resolution 1080p"),
        "{}",
        task.text
    );
    assert_eq!(task.images.len(), 1);
    assert_eq!(task.images[0].role.as_deref(), Some("first_frame"));
    assert!(task.return_last_frame);
    let account = world.assert_conserved("gen").await;
    assert_eq!(
        (account.held, account.captured),
        (32, 0),
        "held until the render ends"
    );
}

#[tokio::test]
async fn a_finishing_transaction_that_fails_hands_the_session_back_instead_of_acknowledging() {
    let (world, mock) = setup(Knobs::default()).await;
    let generator = generator_for(&world, &mock).await;
    let id = enqueue(&world, IMAGE_ROUTE, json!({"prompt": "finish", "n": 2})).await;
    // Every attempt the SDK makes at the settle transaction answers 500.
    world
        .inject("TransactWriteItems", testkit::Fault::Internal, 0, 3)
        .await;
    let (_, failed) = deliver_once(&world, &generator).await;
    assert_eq!(
        failed.len(),
        1,
        "the record is redelivered, not acknowledged"
    );
    let waiting = session(&world, &id).await;
    assert_eq!(waiting.status, Status::Queued, "handed back at once");
    assert!(waiting.last_error.unwrap().contains("finish"));
    let account = world.assert_conserved("gen").await;
    assert_eq!((account.held, account.captured), (4, 0), "still held");

    let (_, failed) = deliver_once(&world, &generator).await;
    assert!(failed.is_empty());
    let done = session(&world, &id).await;
    assert_eq!((done.status, done.credits_captured), (Status::Completed, 4));
    let account = world.assert_conserved("gen").await;
    assert_eq!(
        (account.held, account.captured, account.inflight),
        (0, 4, 0)
    );
    assert_eq!(objects(&world).await.len(), 2, "one set of outputs");
}

/// A generator whose leases lapse at once, so a redelivery can take a session over.
async fn generator_with_short_lease(
    world: &World,
    mock: &mock_provider::MockHandle,
) -> std::sync::Arc<shared::generator::Generator> {
    let generator = std::sync::Arc::into_inner(generator_for(world, mock).await).unwrap();
    std::sync::Arc::new(shared::generator::Generator {
        lease_ms: 1,
        ..generator
    })
}

const VIDEO: fn(&str) -> serde_json::Value =
    |prompt| json!({"prompt": prompt, "resolution": "720p", "ratio": "16:9", "duration": 5});

#[tokio::test]
async fn a_task_whose_recording_fails_is_adopted_by_the_redelivery_not_created_again() {
    let (world, mock) = setup(Knobs::default()).await;
    let generator = generator_with_short_lease(&world, &mock).await;
    let id = enqueue(&world, VIDEO_ROUTE, VIDEO("record fails")).await;
    // The task is created; every write that would record its id fails.
    world
        .inject_into(
            "UpdateItem",
            "provider_task_id",
            testkit::Fault::Internal,
            0,
            1000,
        )
        .await;
    let (_, failed) = deliver_once(&world, &generator).await;
    assert_eq!(failed.len(), 1, "the record is redelivered");
    assert_eq!(mock.tasks().len(), 1);
    let unrecorded = session(&world, &id).await;
    assert_eq!(unrecorded.provider_task_id, None);

    world.clear_faults().await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (_, failed) = deliver_once(&world, &generator).await;
    assert!(failed.is_empty());
    let tasks = mock.tasks();
    assert_eq!(
        tasks.len(),
        1,
        "the first task is adopted, no second one is made"
    );
    let rendering = session(&world, &id).await;
    assert_eq!(rendering.status, Status::Rendering);
    assert_eq!(
        rendering.provider_task_id.as_deref(),
        Some(tasks[0].id.as_str())
    );
    let account = world.assert_conserved("gen").await;
    assert_eq!(
        (account.held, account.captured),
        (rendering.credits_reserved, 0)
    );
}

#[tokio::test]
async fn a_create_whose_answer_is_lost_is_found_among_others_and_adopted() {
    let (world, mock) = setup(Knobs::default()).await;
    let generator = generator_with_short_lease(&world, &mock).await;
    // Another session's task, with the same model and parameters, made just before.
    let other = enqueue(&world, VIDEO_ROUTE, VIDEO("a neighbour")).await;
    assert!(deliver_once(&world, &generator).await.1.is_empty());
    let id = enqueue(
        &world,
        VIDEO_ROUTE,
        VIDEO("lost answer [lost-answer-first:1]"),
    )
    .await;
    let (_, failed) = deliver_once(&world, &generator).await;
    assert_eq!(failed.len(), 1, "an ambiguous create is retried");
    assert_eq!(mock.tasks().len(), 2, "the lost answer's task exists");
    assert_eq!(
        session(&world, &id).await.status,
        Status::Queued,
        "handed back"
    );

    let (_, failed) = deliver_once(&world, &generator).await;
    assert!(failed.is_empty());
    assert_eq!(
        mock.tasks().len(),
        2,
        "found and adopted, not created again"
    );
    let adopted = session(&world, &id).await;
    assert_eq!(adopted.status, Status::Rendering);
    let task = mock
        .task(adopted.provider_task_id.as_deref().unwrap())
        .unwrap();
    assert!(
        task.prompt.starts_with("lost answer"),
        "its own task: {}",
        task.prompt
    );
    let neighbour = session(&world, &other).await.provider_task_id.unwrap();
    assert_ne!(Some(neighbour), adopted.provider_task_id);
}

#[tokio::test]
async fn a_create_refused_outright_is_made_again_once() {
    let (world, mock) = setup(Knobs::default()).await;
    let generator = generator_with_short_lease(&world, &mock).await;
    let id = enqueue(
        &world,
        VIDEO_ROUTE,
        VIDEO("refused [fail-first:1:ServerOverloaded]"),
    )
    .await;
    assert_eq!(deliver_once(&world, &generator).await.1.len(), 1);
    assert!(mock.tasks().is_empty(), "nothing was created");
    assert!(deliver_once(&world, &generator).await.1.is_empty());
    let tasks = mock.tasks();
    assert_eq!(tasks.len(), 1);
    let rendering = session(&world, &id).await;
    assert_eq!(
        rendering.provider_task_id.as_deref(),
        Some(tasks[0].id.as_str())
    );
}
