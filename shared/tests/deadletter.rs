//! Poison messages: DLQ → deadletter function → credits released → admin list, retry, delete,
//! purge (admins only).

use mock_provider::Knobs;
use serde_json::{json, Value};
use shared::routes::enqueue;
use shared::sessions::{self, Status};
use testkit::{admin, deliver_once, generator_for, parts, serve, user, Event, World};

async fn admin_call(world: &World, event: Event) -> (u16, Value) {
    serve(&world.state, event).await
}

/// Sends a poisoned request through every delivery into the DLQ and the deadletter function.
async fn poison(world: &World, mock: &mock_provider::MockHandle, prompt: &str) -> String {
    let event = Event::new(enqueue::IMAGE_ROUTE, user("p"))
        .body(json!({"prompt": prompt, "n": 2}).to_string());
    let (status, accepted) = parts(enqueue::handle(&world.state, event.build()).await);
    assert_eq!(status, 202);
    let generator = generator_for(world, mock).await;
    for _ in 0..4 {
        deliver_once(world, &generator).await;
    }
    let (event, receipts) = testkit::receive_event(&world.state.aws.sqs, &world.dlq_url).await;
    assert_eq!(receipts.len(), 1, "the poisoned message reached the DLQ");
    let response = shared::deadletter::handle_batch(world.state.clone(), event).await;
    assert!(response.batch_item_failures.is_empty());
    accepted["session_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_poison_message_is_recorded_released_and_can_be_retried() {
    let world = World::new().await;
    world.grant("p", 50, None).await;
    let mock = mock_provider::start(Knobs::default()).await.unwrap();
    // Fails the three deliveries, then the provider recovers.
    let id = poison(&world, &mock, "x [fail-first:6:InternalServiceError]").await;

    let failed = sessions::get(world.ddb(), world.table(), "p", &id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (failed.status, failed.error.unwrap().code.as_str()),
        (Status::Failed, "dead_lettered")
    );
    let account = world.assert_conserved("p").await;
    assert_eq!(
        (account.available, account.held),
        (50, 0),
        "credits came back"
    );

    let (status, page) = admin_call(
        &world,
        Event::new("GET /api/admin/dlq/messages", admin("root")),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let letters = page["items"].as_array().unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["session_id"], id.as_str());
    assert_eq!(letters[0]["receive_count"], 3);
    assert!(
        letters[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("InternalServiceError"),
        "{page}"
    );
    let letter_id = letters[0]["dead_letter_id"].as_str().unwrap().to_owned();

    // Non-admins may not see or touch dead letters.
    for (route, with_id) in [
        ("GET /api/admin/dlq/messages", false),
        ("POST /api/admin/dlq/messages/{id}/retry", true),
        ("DELETE /api/admin/dlq/messages/{id}", true),
        ("POST /api/admin/dlq/purge", false),
    ] {
        let mut event = Event::new(route, user("p"));
        if with_id {
            event = event.path_param("id", &letter_id);
        }
        let (status, body) = admin_call(&world, event).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (403, Some("forbidden")),
            "{route}"
        );
    }

    let retry = || {
        Event::new("POST /api/admin/dlq/messages/{id}/retry", admin("root"))
            .path_param("id", &letter_id)
    };
    let (status, accepted) = admin_call(&world, retry()).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(world.account("p").await.held, 4, "re-reserved");
    let (status, _) = admin_call(&world, retry()).await;
    assert_eq!(status, 409, "a second retry finds the session queued");

    let generator = generator_for(&world, &mock).await;
    let (_, failed) = deliver_once(&world, &generator).await;
    assert!(failed.is_empty());
    let done = sessions::get(world.ddb(), world.table(), "p", &id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((done.status, done.credits_captured), (Status::Completed, 4));
    let account = world.assert_conserved("p").await;
    assert_eq!((account.captured, account.available), (4, 46));

    let delete = Event::new("DELETE /api/admin/dlq/messages/{id}", admin("root"))
        .path_param("id", &letter_id);
    assert_eq!(admin_call(&world, delete).await.0, 200);
    let (_, page) = admin_call(
        &world,
        Event::new("GET /api/admin/dlq/messages", admin("root")),
    )
    .await;
    assert_eq!(page["items"], json!([]));
    let again = Event::new("DELETE /api/admin/dlq/messages/{id}", admin("root"))
        .path_param("id", &letter_id);
    assert_eq!(admin_call(&world, again).await.0, 404);
}

#[tokio::test]
async fn a_retry_the_user_cannot_pay_for_is_402_and_purge_removes_every_record() {
    let world = World::new().await;
    world.grant("p", 4, None).await;
    let mock = mock_provider::start(Knobs::default()).await.unwrap();
    poison(&world, &mock, "y [fail:ServiceUnavailable]").await;
    // The user spends the credits meanwhile.
    let event = Event::new(enqueue::IMAGE_ROUTE, user("p"))
        .body(json!({"prompt": "z", "n": 2}).to_string());
    assert_eq!(
        parts(enqueue::handle(&world.state, event.build()).await).0,
        202
    );

    let (_, page) = admin_call(
        &world,
        Event::new("GET /api/admin/dlq/messages", admin("root")),
    )
    .await;
    let letter_id = page["items"][0]["dead_letter_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let retry = Event::new("POST /api/admin/dlq/messages/{id}/retry", admin("root"))
        .path_param("id", &letter_id);
    let (status, body) = admin_call(&world, retry).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (402, Some("insufficient_credits"))
    );
    let account = world.assert_conserved("p").await;
    assert_eq!(account.held, 4, "only the new request holds credits");

    let (status, body) = admin_call(
        &world,
        Event::new("POST /api/admin/dlq/purge", admin("root")),
    )
    .await;
    assert_eq!((status, body["purged"].as_i64()), (200, Some(1)));
    let (_, page) = admin_call(
        &world,
        Event::new("GET /api/admin/dlq/messages", admin("root")),
    )
    .await;
    assert_eq!(page["items"], json!([]));
}

#[tokio::test]
async fn a_redelivered_dead_letter_is_recorded_once() {
    let world = World::new().await;
    let mut record = aws_lambda_events::event::sqs::SqsMessage::default();
    record.message_id = Some("m-1".into());
    record.body = Some("not a generation message".into());
    record
        .attributes
        .insert("SentTimestamp".into(), "1795000000000".into());
    for _ in 0..2 {
        shared::deadletter::record_dead_letter(&world.state, &record)
            .await
            .unwrap();
    }
    let (_, page) = admin_call(
        &world,
        Event::new("GET /api/admin/dlq/messages", admin("root")),
    )
    .await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["body"], "not a generation message");
    assert!(items[0]["session_id"].is_null());
}
