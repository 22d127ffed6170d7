//! Poison messages: DLQ → deadletter function → credits released → admin list, retry, delete,
//! purge (admins only).

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage};
use mock_provider::Knobs;
use serde_json::{json, Value};
use shared::routes::enqueue;
use shared::sessions::{self, Status};
use testkit::{admin, deliver_once, generator_for, parts, serve, user, Event, World};

async fn admin_call(world: &World, event: Event) -> (u16, Value) {
    serve(&world.state, event).await
}

/// Sends a poisoned request through every delivery into the DLQ and the deadletter function;
/// returns the session and the DLQ's event.
async fn poison(
    world: &World,
    mock: &mock_provider::MockHandle,
    prompt: &str,
) -> (String, SqsEvent) {
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
    let response = shared::deadletter::handle_batch(world.state.clone(), event.clone()).await;
    assert!(response.batch_item_failures.is_empty());
    (accepted["session_id"].as_str().unwrap().to_owned(), event)
}

/// A session of `p` (granted 50) dead-lettered after three failed deliveries: its id, the
/// DLQ's event and the dead letter's id.
async fn dead_lettered(
    world: &World,
    mock: &mock_provider::MockHandle,
) -> (String, SqsEvent, String) {
    world.grant("p", 50, None).await;
    let (id, event) = poison(world, mock, "x [fail-first:6:InternalServiceError]").await;
    let letter = letters(world).await[0]["dead_letter_id"]
        .as_str()
        .unwrap()
        .to_owned();
    (id, event, letter)
}

/// An admin's retry of a dead letter.
fn retry_of(letter_id: &str) -> Event {
    Event::new("POST /api/admin/dlq/messages/{id}/retry", admin("root")).path_param("id", letter_id)
}

/// The DLQ's event for a message body.
fn dead_letter_event(body: &Value) -> SqsEvent {
    let mut record = SqsMessage::default();
    record.message_id = Some(format!("m-{}", body["session_id"]));
    record.body = Some(body.to_string());
    record
        .attributes
        .insert("SentTimestamp".into(), "1795000000000".into());
    let mut event = SqsEvent::default();
    event.records.push(record);
    event
}

/// The dead-letter records an admin sees.
async fn letters(world: &World) -> Vec<Value> {
    let (status, page) = admin_call(
        world,
        Event::new("GET /api/admin/dlq/messages", admin("root")),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    page["items"].as_array().unwrap().clone()
}

/// A queued image session of `p` holding 4 credits, and the body of its message.
async fn queued_session(world: &World) -> (String, Value) {
    world.grant("p", 50, None).await;
    let event = Event::new(enqueue::IMAGE_ROUTE, user("p"))
        .body(json!({"prompt": "live", "n": 2}).to_string());
    let (status, accepted) = parts(enqueue::handle(&world.state, event.build()).await);
    assert_eq!(status, 202);
    let mut bodies = world.drain_queue().await;
    (
        accepted["session_id"].as_str().unwrap().to_owned(),
        bodies.remove(0),
    )
}

/// Claims `p`'s session as a delivery would, with a one-minute lease.
async fn claimed(world: &World, id: &str) -> sessions::Session {
    use shared::sessions::transitions::{claim, Claim};
    match claim(world.ddb(), world.table(), "p", id, 60_000)
        .await
        .unwrap()
    {
        Claim::Claimed(session) => *session,
        other => panic!("{other:?}"),
    }
}

async fn session(world: &World, id: &str) -> sessions::Session {
    sessions::get(world.ddb(), world.table(), "p", id)
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn a_poison_message_is_recorded_released_and_can_be_retried() {
    let world = World::new().await;
    world.grant("p", 50, None).await;
    let mock = mock_provider::start(Knobs::default()).await.unwrap();
    // Fails the three deliveries, then the provider recovers.
    let (id, _) = poison(&world, &mock, "x [fail-first:6:InternalServiceError]").await;

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

#[tokio::test]
async fn a_stale_dead_letter_cannot_undo_an_admin_retry() {
    let world = World::new().await;
    let mock = mock_provider::start(Knobs::default()).await.unwrap();
    let (id, event, letter_id) = dead_lettered(&world, &mock).await;
    assert_eq!(admin_call(&world, retry_of(&letter_id)).await.0, 202);
    // The consumer's acknowledgement was lost: the DLQ delivers the old message again, and
    // the session it finds is queued with the attempt it had then (ABA).
    let response = shared::deadletter::handle_batch(world.state.clone(), event).await;
    assert!(response.batch_item_failures.is_empty());
    let retried = session(&world, &id).await;
    assert_eq!(retried.status, Status::Queued, "the retry stands");
    let account = world.assert_conserved("p").await;
    assert_eq!(account.held, 4, "its new hold stands");
    assert_eq!(letters(&world).await.len(), 1);
    let generator = generator_for(&world, &mock).await;
    let (_, failed) = deliver_once(&world, &generator).await;
    assert!(failed.is_empty());
    assert_eq!(session(&world, &id).await.status, Status::Completed);
}

#[tokio::test]
async fn a_dead_letter_waits_while_another_delivery_runs_the_session() {
    let world = World::new().await;
    let (id, body) = queued_session(&world).await;
    claimed(&world, &id).await;
    let response =
        shared::deadletter::handle_batch(world.state.clone(), dead_letter_event(&body)).await;
    assert_eq!(
        response.batch_item_failures.len(),
        1,
        "looked at again later"
    );
    assert_eq!(session(&world, &id).await.status, Status::Running);
    assert_eq!(world.assert_conserved("p").await.held, 4);
    assert!(letters(&world).await.is_empty());

    // The delivery died: its lease lapses and nobody drives the session any more.
    world
        .ddb()
        .update_item()
        .table_name(world.table())
        .set_key(Some(sessions::session_key("p", &id)))
        .update_expression("SET lease_until = :past")
        .expression_attribute_values(":past", shared::table::number(1))
        .send()
        .await
        .unwrap();
    let response =
        shared::deadletter::handle_batch(world.state.clone(), dead_letter_event(&body)).await;
    assert!(response.batch_item_failures.is_empty());
    let failed = session(&world, &id).await;
    assert_eq!(failed.status, Status::Failed);
    assert_eq!(failed.error.unwrap().code, "dead_lettered");
    let account = world.assert_conserved("p").await;
    assert_eq!((account.held, account.available), (0, 50));
    assert_eq!(letters(&world).await.len(), 1);
}

#[tokio::test]
async fn a_dead_letter_of_a_rendering_session_changes_nothing() {
    let world = World::new().await;
    let (id, body) = queued_session(&world).await;
    let claimed = claimed(&world, &id).await;
    let rendering = shared::sessions::transitions::start_rendering(
        world.ddb(),
        world.table(),
        &claimed,
        "cgt-1",
        i64::MAX / 2,
    )
    .await
    .unwrap();
    assert!(rendering);
    // The sweeper drives a rendering session (and cancels it past the longest render).
    let response =
        shared::deadletter::handle_batch(world.state.clone(), dead_letter_event(&body)).await;
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(session(&world, &id).await.status, Status::Rendering);
    assert_eq!(world.assert_conserved("p").await.held, 4);
    assert!(
        letters(&world).await.is_empty(),
        "nothing for an admin to do"
    );
}

#[tokio::test]
async fn an_admin_retry_whose_reserve_answer_is_lost_still_answers_202() {
    let world = World::new().await;
    let mock = mock_provider::start(Knobs::default()).await.unwrap();
    let (id, _, letter_id) = dead_lettered(&world, &mock).await;
    // The reserve commits but its answer is lost; the SDK's retry meets its own commit.
    world
        .inject("TransactWriteItems", testkit::Fault::LostResponse, 0, 1)
        .await;
    let (status, accepted) = admin_call(&world, retry_of(&letter_id)).await;
    assert_eq!(status, 202, "{accepted}");
    let queued = session(&world, &id).await;
    assert_eq!((queued.status, queued.retries), (Status::Queued, 1));
    let account = world.assert_conserved("p").await;
    assert_eq!((account.held, account.holds.len()), (4, 1), "one hold");
    let messages = world.drain_queue().await;
    assert_eq!(messages.len(), 1, "sent once");
    assert_eq!(messages[0]["retries"], 1);
}
