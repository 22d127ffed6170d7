//! The enqueue routes against moto: reserve, idempotency, caps, hostile input.

use serde_json::json;
use shared::routes::enqueue::{handle, IMAGE_ROUTE, VIDEO_ROUTE};
use testkit::{image_body, parts, user, Event, World};

async fn post(
    world: &World,
    route: &'static str,
    sub: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    parts(
        handle(
            &world.state,
            Event::new(route, user(sub)).body(body).build(),
        )
        .await,
    )
}

#[tokio::test]
async fn image_request_reserves_credits_records_the_session_and_queues_it() {
    let world = World::new().await;
    world.grant("alice", 100, None).await;
    let body = json!({"prompt": "a lake", "n": 4, "size": "2K", "client_key": "ui-42"}).to_string();
    let (status, accepted) = post(&world, IMAGE_ROUTE, "alice", &body).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["status"], "queued");
    assert_eq!(accepted["client_key"], "ui-42");
    assert_eq!(accepted["credits_reserved"], 8);
    let session_id = accepted["session_id"].as_str().unwrap();

    let account = world.assert_conserved("alice").await;
    assert_eq!(
        (account.available, account.held, account.inflight),
        (92, 8, 1)
    );
    assert_eq!(account.holds[session_id].amount, 8);
    let session = shared::sessions::get(world.ddb(), world.table(), "alice", session_id)
        .await
        .unwrap()
        .expect("session stored with its hold");
    assert_eq!(session.status, shared::sessions::Status::Queued);
    assert_eq!(session.credits_reserved, 8);
    assert_eq!(session.open_pk.as_deref(), Some("OPEN"));

    let messages = world.drain_queue().await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["session_id"], session_id);
    assert_eq!(messages[0]["user_id"], "alice");
}

#[tokio::test]
async fn video_request_is_priced_per_second_and_resolution() {
    let world = World::new().await;
    world.grant("vic", 100, None).await;
    let body =
        json!({"prompt": "a kitten yawns", "resolution": "1080p", "duration": 6}).to_string();
    let (status, accepted) = post(&world, VIDEO_ROUTE, "vic", &body).await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["credits_reserved"], 48);
    assert!(
        !accepted["client_key"].as_str().unwrap().is_empty(),
        "a client_key is generated"
    );
    assert_eq!(world.account("vic").await.available, 52);
}

#[tokio::test]
async fn happy_path_costs_two_aws_calls() {
    let world = World::new().await;
    world.grant("counted", 100, None).await;
    world.calls.reset();
    let (status, _) = post(&world, IMAGE_ROUTE, "counted", &image_body("a fox")).await;
    assert_eq!(status, 202);
    let log = world.calls.log.lock().unwrap().clone();
    assert_eq!(world.calls.count(), 2, "calls: {log:?}");
    assert!(log[0].ends_with("TransactWriteItems"), "{log:?}");
}

#[tokio::test]
async fn fifty_concurrent_reserves_against_twenty_costs_accept_exactly_twenty() {
    let world = World::with(|c| c.inflight_cap = 1000).await;
    // Default request: four 2K images, 8 credits.
    world.grant("hot", 20 * 8, None).await;
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let state = world.state.clone();
            tokio::spawn(async move {
                let request = Event::new(IMAGE_ROUTE, user("hot"))
                    .body(image_body(&format!("prompt {i}")))
                    .build();
                parts(handle(&state, request).await).0
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let accepted = statuses.iter().filter(|s| **s == 202).count();
    let refused = statuses.iter().filter(|s| **s == 402).count();
    assert_eq!((accepted, refused), (20, 30), "{statuses:?}");
    let account = world.assert_conserved("hot").await;
    assert_eq!(
        (account.available, account.held, account.inflight),
        (0, 160, 20)
    );
    assert_eq!(world.count("hot", "SESSION#").await, 20);
    assert_eq!(world.drain_queue().await.len(), 20);
}

#[tokio::test]
async fn short_balance_is_402_and_writes_nothing() {
    let world = World::new().await;
    world.grant("poor", 5, None).await;
    let before = world.keys().await;
    let (status, body) = post(&world, IMAGE_ROUTE, "poor", &image_body("x")).await;
    assert_eq!(status, 402);
    assert_eq!(body["error"]["code"], "insufficient_credits");
    assert_eq!(world.keys().await, before);
    assert!(world.drain_queue().await.is_empty());
    // A user who never had credits gets the same answer.
    let (status, _) = post(&world, IMAGE_ROUTE, "nobody", &image_body("x")).await;
    assert_eq!(status, 402);
    assert_eq!(world.keys().await, before);
}

#[tokio::test]
async fn same_idempotency_key_and_body_replays_the_first_answer_with_one_hold() {
    let world = World::new().await;
    world.grant("idem", 100, None).await;
    let request = || {
        Event::new(IMAGE_ROUTE, user("idem"))
            .header("idempotency-key", "req-1")
            .body(image_body("same"))
            .build()
    };
    let first = parts(handle(&world.state, request()).await);
    let (a, b) = tokio::join!(
        handle(&world.state, request()),
        handle(&world.state, request())
    );
    let (second, third) = (parts(a), parts(b));
    assert_eq!(first.0, 202);
    assert_eq!(second, first);
    assert_eq!(third, first);
    let account = world.assert_conserved("idem").await;
    assert_eq!((account.held, account.holds.len()), (8, 1));
    assert_eq!(world.count("idem", "SESSION#").await, 1);
    assert_eq!(world.drain_queue().await.len(), 1);

    let before = world.keys().await;
    let other = Event::new(IMAGE_ROUTE, user("idem"))
        .header("idempotency-key", "req-1")
        .body(image_body("different"))
        .build();
    let (status, body) = parts(handle(&world.state, other).await);
    assert_eq!(status, 422);
    assert_eq!(body["error"]["code"], "idempotency_key_reused");
    assert_eq!(world.keys().await, before);
    assert_eq!(world.account("idem").await.held, 8);
}

#[tokio::test]
async fn idempotency_keys_are_per_user() {
    let world = World::new().await;
    world.grant("u1", 100, None).await;
    world.grant("u2", 100, None).await;
    let send = |sub: &'static str| {
        Event::new(IMAGE_ROUTE, user(sub))
            .header("idempotency-key", "shared-key")
            .body(image_body("p"))
            .build()
    };
    let (s1, b1) = parts(handle(&world.state, send("u1")).await);
    let (s2, b2) = parts(handle(&world.state, send("u2")).await);
    assert_eq!((s1, s2), (202, 202));
    assert_ne!(b1["session_id"], b2["session_id"]);
}

#[tokio::test]
async fn inflight_cap_answers_429_and_writes_nothing() {
    let world = World::with(|c| c.inflight_cap = 2).await;
    world.grant("busy", 100, None).await;
    for _ in 0..2 {
        assert_eq!(
            post(&world, IMAGE_ROUTE, "busy", &image_body("x")).await.0,
            202
        );
    }
    let before = world.keys().await;
    let held = world.account("busy").await.held;
    let (status, body) = post(&world, IMAGE_ROUTE, "busy", &image_body("x")).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "too_many_inflight");
    assert_eq!(world.keys().await, before);
    assert_eq!(world.account("busy").await.held, held);
    assert_eq!(world.drain_queue().await.len(), 2);
}

#[tokio::test]
async fn hostile_input_gets_its_4xx_code_and_writes_nothing() {
    let world = World::new().await;
    world.grant("mallory", 1000, None).await;
    let long = "a".repeat(10_000);
    let cases: Vec<(&'static str, String, u16, &str)> = vec![
        (IMAGE_ROUTE, "{not json".into(), 400, "invalid_json"),
        (IMAGE_ROUTE, "".into(), 400, "invalid_json"),
        (
            IMAGE_ROUTE,
            r#"{"prompt": 42}"#.into(),
            400,
            "invalid_field",
        ),
        (
            IMAGE_ROUTE,
            r#"{"prompt": "x", "n": "four"}"#.into(),
            400,
            "invalid_field",
        ),
        (IMAGE_ROUTE, r#"{"prompt": ""}"#.into(), 400, "prompt_empty"),
        (
            IMAGE_ROUTE,
            json!({"prompt": long}).to_string(),
            400,
            "prompt_too_long",
        ),
        (
            IMAGE_ROUTE,
            r#"{"prompt": "x", "n": 0}"#.into(),
            400,
            "invalid_n",
        ),
        (
            IMAGE_ROUTE,
            r#"{"prompt": "x", "n": 100}"#.into(),
            400,
            "invalid_n",
        ),
        (
            IMAGE_ROUTE,
            r#"{"prompt": "x", "size": "16K"}"#.into(),
            400,
            "invalid_size",
        ),
        (
            IMAGE_ROUTE,
            r#"{"prompt": "x", "model": "midjourney"}"#.into(),
            400,
            "invalid_model",
        ),
        (
            IMAGE_ROUTE,
            r#"{"prompt": "x", "user_id": "victim"}"#.into(),
            400,
            "unknown_field",
        ),
        (
            VIDEO_ROUTE,
            r#"{"prompt": "x", "resolution": "4k"}"#.into(),
            400,
            "invalid_resolution",
        ),
        (
            VIDEO_ROUTE,
            r#"{"prompt": "x --resolution 1080p"}"#.into(),
            400,
            "prompt_contains_flags",
        ),
        (
            VIDEO_ROUTE,
            r#"{"prompt": "x", "duration": 600}"#.into(),
            400,
            "invalid_duration",
        ),
    ];
    let before = world.keys().await;
    for (route, body, status, code) in cases {
        let (got, answer) = post(&world, route, "mallory", &body).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "body {body}"
        );
    }
    // No claims at all: 401.
    let anonymous = Event::new(IMAGE_ROUTE, None).body(image_body("x")).build();
    let (status, body) = parts(handle(&world.state, anonymous).await);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    // A malformed idempotency key: 400.
    let bad_key = Event::new(IMAGE_ROUTE, user("mallory"))
        .header("idempotency-key", "has spaces")
        .body(image_body("x"))
        .build();
    let (status, body) = parts(handle(&world.state, bad_key).await);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_idempotency_key"))
    );

    assert_eq!(world.keys().await, before, "nothing may be written");
    assert_eq!(world.account("mallory").await.held, 0);
    assert!(world.drain_queue().await.is_empty());
}

/// A reserve whose commit the caller could not see answers 202 all the same: the session was
/// written, its credits held and its message sent, so "failed, nothing charged" would be a lie.
async fn an_unseen_commit_is_accepted(fault: testkit::Fault) {
    let world = World::new().await;
    world.grant("amb", 20, None).await;
    world.inject("TransactWriteItems", fault, 0, 1).await;
    let body = json!({"prompt": "unseen", "n": 1}).to_string();
    let (status, accepted) = post(&world, IMAGE_ROUTE, "amb", &body).await;
    assert_eq!(status, 202, "{fault:?}: {accepted}");
    let session_id = accepted["session_id"].as_str().unwrap();
    let session = shared::sessions::get(world.ddb(), world.table(), "amb", session_id)
        .await
        .unwrap()
        .expect("the committed session");
    assert_eq!(session.status, shared::sessions::Status::Queued);
    let account = world.assert_conserved("amb").await;
    assert_eq!((account.held, account.holds.len()), (2, 1), "one hold");
    let messages = world.drain_queue().await;
    assert_eq!(messages.len(), 1, "dispatched once");
    assert_eq!(messages[0]["session_id"], session_id);
}

#[tokio::test]
async fn a_lost_reserve_response_still_answers_202_with_one_hold() {
    an_unseen_commit_is_accepted(testkit::Fault::LostResponse).await;
}

#[tokio::test]
async fn a_reserve_that_times_out_after_committing_still_answers_202() {
    an_unseen_commit_is_accepted(testkit::Fault::Stall).await;
}

#[tokio::test]
async fn a_reserve_that_never_committed_is_500_and_writes_nothing() {
    let world = World::new().await;
    world.grant("down", 20, None).await;
    let before = world.keys().await;
    // Every attempt the SDK makes answers 500 without committing.
    world
        .inject("TransactWriteItems", testkit::Fault::Internal, 0, 3)
        .await;
    let body = json!({"prompt": "down", "n": 1}).to_string();
    let (status, answer) = post(&world, IMAGE_ROUTE, "down", &body).await;
    assert_eq!(status, 500, "{answer}");
    assert_eq!(world.keys().await, before, "nothing written");
    let account = world.assert_conserved("down").await;
    assert_eq!((account.available, account.held), (20, 0));
    assert!(world.drain_queue().await.is_empty());
}
