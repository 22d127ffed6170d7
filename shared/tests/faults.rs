//! DynamoDB under pressure, injected at the moto launcher (scripts/dynamodb_faults.py): each
//! fault reaches the SDK as DynamoDB sends it, and our code copes where it can.

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use shared::ledger::{self, Reservation};
use shared::table::{key, string};
use testkit::{Fault, World};

/// The SDK's own attempts per call (standard retry mode).
const SDK_ATTEMPTS: u32 = 3;

/// The error code DynamoDB answered with, if it refused the call.
fn error_code<T, E: ProvideErrorMetadata, R>(answer: Result<T, SdkError<E, R>>) -> Option<String> {
    let error = answer.err()?;
    error.as_service_error()?.code().map(str::to_owned)
}

async fn get_error_code(world: &World) -> Option<String> {
    let answer = world
        .ddb()
        .get_item()
        .table_name(world.table())
        .set_key(Some(key("U#a", "A")))
        .send()
        .await;
    error_code(answer)
}

#[tokio::test]
async fn each_fault_reaches_the_sdk_as_dynamodb_sends_it() {
    let world = World::new().await;
    for (fault, code) in [
        (Fault::Throttling, "ThrottlingException"),
        (
            Fault::ProvisionedThroughput,
            "ProvisionedThroughputExceededException",
        ),
        (Fault::Internal, "InternalServerError"),
    ] {
        world.inject("GetItem", fault, 0, SDK_ATTEMPTS).await;
        assert_eq!(
            get_error_code(&world).await.as_deref(),
            Some(code),
            "{fault:?}"
        );
        world.clear_faults().await;
    }
    assert_eq!(get_error_code(&world).await, None, "no fault once cleared");
    // The SDK retries this one by itself too.
    world
        .inject("TransactWriteItems", Fault::InProgress, 0, SDK_ATTEMPTS)
        .await;
    let put = shared::table::put_new(world.table(), key("U#a", "A")).unwrap();
    let answer = world
        .ddb()
        .transact_write_items()
        .transact_items(put)
        .send()
        .await;
    assert_eq!(
        error_code(answer).as_deref(),
        Some("TransactionInProgressException")
    );
    assert!(
        world.keys().await.is_empty(),
        "an injected refusal writes nothing"
    );
}

#[tokio::test]
async fn a_reserve_rides_out_transaction_conflicts() {
    let world = World::new().await;
    world.grant("hot", 10, None).await;
    world
        .inject("TransactWriteItems", Fault::Conflict, 0, 3)
        .await;
    let reservation = Reservation {
        user_id: "hot",
        session_id: "01J00000000000000000000000",
        amount: 4,
        model: "seedream-4.0",
        inflight_cap: 4,
    };
    ledger::reserve(world.ddb(), world.table(), &reservation, vec![])
        .await
        .expect("the reserve retries past the conflicts");
    assert_eq!(world.injected().await, 3);
    let account = world.assert_conserved("hot").await;
    assert_eq!(
        (account.available, account.held, account.holds.len()),
        (6, 4, 1)
    );
}

#[tokio::test]
async fn a_lost_response_commits_the_write_the_caller_thinks_failed() {
    let world = World::new().await;
    world.inject("PutItem", Fault::LostResponse, 0, 1).await;
    let mut item = key("U#a", "A");
    item.insert("note".into(), string("first"));
    let answer = world
        .ddb()
        .put_item()
        .table_name(world.table())
        .set_item(Some(item))
        .condition_expression("attribute_not_exists(pk)")
        .send()
        .await;
    // The SDK retried the 500; the retry met the write that had committed.
    assert_eq!(
        error_code(answer).as_deref(),
        Some("ConditionalCheckFailedException")
    );
    assert_eq!(world.keys().await, vec![("U#a".into(), "A".into())]);
    assert_eq!(world.injected().await, 1);
}

#[tokio::test]
async fn a_stalled_answer_ends_the_call_with_a_timeout_and_no_blind_resend() {
    let world = World::new().await;
    world.inject("UpdateItem", Fault::Stall, 0, 3).await;
    let answer = world
        .ddb()
        .update_item()
        .table_name(world.table())
        .set_key(Some(key("U#a", "A")))
        .update_expression("ADD writes :one")
        .expression_attribute_values(":one", shared::table::number(1))
        .send()
        .await;
    // The operation timeout (shared::aws) ended the call: without it the SDK would wait as long
    // as the endpoint does.
    assert!(
        matches!(answer, Err(SdkError::TimeoutError(_))),
        "{answer:?}"
    );
    // The write committed unseen, once: the SDK did not re-send it after the timeout.
    assert_eq!(world.injected().await, 1, "one attempt reached DynamoDB");
    let item = world
        .ddb()
        .get_item()
        .table_name(world.table())
        .set_key(Some(key("U#a", "A")))
        .send()
        .await
        .unwrap()
        .item
        .expect("the stalled write committed");
    assert_eq!(item["writes"].as_n().map(String::as_str), Ok("1"));
}
