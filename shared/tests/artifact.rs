//! The artifact that ships, tested: the generator bootstrap `cargo lambda build --release`
//! writes (what `sam build` runs), not a plain cargo build. `cargo lambda build` turns
//! `panic = "abort"` on unless the workspace says otherwise, and with abort a panic in one SQS
//! record would kill the process and send the whole batch back.
//!
//! Needs `make build-lambda` first (`make test` runs it).

use mock_provider::Knobs;
use serde_json::{json, Value};
use shared::routes::enqueue::{handle, IMAGE_ROUTE};
use shared::sessions::{self, Status};
use testkit::runtime::{bootstrap, function_env, invoke_once, sqs_event};
use testkit::{parts, user, Event, World};

const PANIC_PROMPT: &str = "the record that panics";

#[tokio::test]
async fn a_panicking_record_fails_alone_in_the_shipped_generator() {
    let world = World::new().await;
    world.grant("ship", 100, None).await;
    let mock = mock_provider::start(Knobs::default()).await.unwrap();
    let mut ids = Vec::new();
    for prompt in ["first neighbour", PANIC_PROMPT, "second neighbour"] {
        let event = Event::new(IMAGE_ROUTE, user("ship"))
            .body(json!({"prompt": prompt, "n": 2}).to_string());
        let (status, accepted) = parts(handle(&world.state, event.build()).await);
        assert_eq!(status, 202, "{accepted}");
        ids.push(accepted["session_id"].as_str().unwrap().to_owned());
    }
    world.drain_queue().await;
    let mut env = function_env(&world, &mock);
    env.push(("INJECT_PANIC_PROMPT".into(), PANIC_PROMPT.into()));

    let run = invoke_once(&bootstrap("generator"), &env, sqs_event("ship", &ids)).await;

    let answer: Value = serde_json::from_str(
        run.answer
            .strip_prefix("response: ")
            .unwrap_or_else(|| panic!("not a response: {}", run.answer)),
    )
    .unwrap();
    assert_eq!(
        answer,
        json!({"batchItemFailures": [{"itemIdentifier": "record-1"}]}),
        "only the panicking record is handed back"
    );
    assert!(run.polled_again, "the process survived the panic");
    let mut statuses = Vec::new();
    for id in &ids {
        let session = sessions::get(world.ddb(), world.table(), "ship", id)
            .await
            .unwrap()
            .unwrap();
        statuses.push((session.status, session.credits_captured));
    }
    assert_eq!(
        statuses,
        [
            (Status::Completed, 4),
            (Status::Running, 0),
            (Status::Completed, 4)
        ],
        "the neighbours completed; the panicked session waits for its redelivery, uncharged"
    );
    let account = world.assert_conserved("ship").await;
    assert_eq!((account.captured, account.held), (8, 4));
}
