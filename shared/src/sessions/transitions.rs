//! Every change of a session's status, each one conditional write with a name. A transition
//! is conditioned on the state its caller read (status, attempt, or the value it moves on), so
//! two deliveries or runs racing for one session cannot both make it; the loser learns so
//! (`false`, or [`Claim::Busy`] / [`Claim::Finished`]) and leaves the session alone.
//!
//! ```text
//! queued ──claim──> running ──start_rendering──> rendering ──schedule_next_check─┐
//!   ^  ^              │  │                          │   ^─────────────────────────┘
//!   │  └──hand_back───┘  └─complete_with_capture──> completed <──────────────────┤
//!   │                    └─fail_with_release─────> failed <──────────────────────┘
//!   └──requeue (an admin retries a dead letter)──────┘
//! ```
//! `claim_redispatch` marks a stuck `queued` session as re-sent without changing its status.

use std::collections::HashMap;

use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, Put, ReturnValue, ReturnValuesOnConditionCheckFailure, TransactWriteItem,
    Update,
};

use super::{session_key, Output, Session, SessionError, Status, Timing, DUE_PK, OPEN_PK};
use crate::clock;
use crate::fault::{Context, Fault, Result};
use crate::ledger::{self, ExpiredShare, SettleError, Settlement};
use crate::table::{self, number, string, Item};
use crate::telemetry::metrics;

/// Session error code of a dead-lettered session; only such a session can be re-queued.
pub const DEAD_LETTERED: &str = "dead_lettered";

/// A status as an attribute value.
fn status(status: Status) -> AttributeValue {
    string(status.as_str())
}

/// The result of trying to claim a session.
#[derive(Debug)]
pub enum Claim {
    /// This delivery owns the session now.
    Claimed(Box<Session>),
    /// The session has finished or moved on (or never existed): nothing to do.
    Finished,
    /// Another delivery holds a live lease.
    Busy,
}

/// Claims a session for a delivery: `queued → running`, or takes over a `running` one whose
/// lease lapsed. The lease lasts `lease_ms`.
pub async fn claim(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    user_id: &str,
    session_id: &str,
    lease_ms: i64,
) -> Result<Claim> {
    let now = clock::now_ms();
    let result = ddb
        .update_item()
        .table_name(table)
        .set_key(Some(session_key(user_id, session_id)))
        .update_expression(
            "SET #status = :running, lease_until = :lease, claimed_at = :now, \
             updated_at = :now ADD attempt :one",
        )
        .condition_expression(
            "attribute_exists(pk) AND (#status = :queued \
             OR (#status = :running AND lease_until < :now))",
        )
        .expression_attribute_names("#status", "status")
        .expression_attribute_values(":running", status(Status::Running))
        .expression_attribute_values(":queued", status(Status::Queued))
        .expression_attribute_values(":lease", number(now + lease_ms))
        .expression_attribute_values(":now", number(now))
        .expression_attribute_values(":one", number(1))
        .return_values(ReturnValue::AllNew)
        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
        .send()
        .await;
    match result {
        Ok(output) => {
            let item = output
                .attributes
                .ok_or_else(|| Fault::new("claim returned nothing"))?;
            Ok(Claim::Claimed(Box::new(serde_dynamo::from_item(item)?)))
        }
        Err(e) => match e.into_service_error() {
            UpdateItemError::ConditionalCheckFailedException(failure) => {
                let Some(item) = failure.item else {
                    tracing::warn!("message for a session that does not exist");
                    return Ok(Claim::Finished);
                };
                let session: Session = serde_dynamo::from_item(item)?;
                Ok(if session.status == Status::Running {
                    Claim::Busy
                } else {
                    Claim::Finished
                })
            }
            other => Err(Fault::caused("claim the session", other)),
        },
    }
}

/// Gives a claimed session back to the queue (`running → queued`) for the redelivery, with
/// the reason, which the dead-letter record shows if every delivery fails. Best effort: if it
/// fails, the lease lapses by itself and the redelivery takes the session over then.
pub async fn hand_back(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    session: &Session,
    reason: &str,
) {
    let result = ddb
        .update_item()
        .table_name(table)
        .set_key(Some(session.key()))
        .update_expression(
            "SET #status = :queued, updated_at = :now, last_error = :reason, \
             first_failed_at = if_not_exists(first_failed_at, :now) REMOVE lease_until",
        )
        .condition_expression("#status = :running AND attempt = :attempt")
        .expression_attribute_names("#status", "status")
        .expression_attribute_values(":queued", status(Status::Queued))
        .expression_attribute_values(":running", status(Status::Running))
        .expression_attribute_values(":reason", string(reason))
        .expression_attribute_values(":now", number(clock::now_ms()))
        .expression_attribute_values(":attempt", number(i64::from(session.attempt)))
        .send()
        .await;
    if let Err(e) = result {
        let fault = Fault::from(e);
        tracing::warn!(error = %fault.chain(), "could not hand the session back");
    }
}

/// Records that this delivery sets out to create the video's task (the first such time is
/// kept). False when this delivery no longer owns the session.
pub async fn intend_task(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    session: &Session,
) -> Result<bool> {
    let now = clock::now_ms();
    let result = ddb
        .update_item()
        .table_name(table)
        .set_key(Some(session.key()))
        .update_expression(
            "SET task_intent_at = if_not_exists(task_intent_at, :now), updated_at = :now",
        )
        .condition_expression("#status = :running AND attempt = :attempt")
        .expression_attribute_names("#status", "status")
        .expression_attribute_values(":running", status(Status::Running))
        .expression_attribute_values(":now", number(now))
        .expression_attribute_values(":attempt", number(i64::from(session.attempt)))
        .send()
        .await;
    applied(result, "record the intent to create a video task")
}

/// Records a created video task (`running → rendering`), due for its first status check at
/// `first_check_at_ms`. False when this delivery no longer owns the session (its lease lapsed
/// and another delivery took over).
pub async fn start_rendering(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    session: &Session,
    task_id: &str,
    first_check_at_ms: i64,
) -> Result<bool> {
    let result = ddb
        .update_item()
        .table_name(table)
        .set_key(Some(session.key()))
        .update_expression(
            "SET #status = :rendering, provider_task_id = :task, due_pk = :due, \
             due_at = :at, updated_at = :now REMOVE lease_until",
        )
        .condition_expression("#status = :running AND attempt = :attempt")
        .expression_attribute_names("#status", "status")
        .expression_attribute_values(":rendering", status(Status::Rendering))
        .expression_attribute_values(":running", status(Status::Running))
        .expression_attribute_values(":task", string(task_id))
        .expression_attribute_values(":due", string(DUE_PK))
        .expression_attribute_values(":at", number(first_check_at_ms))
        .expression_attribute_values(":now", number(clock::now_ms()))
        .expression_attribute_values(":attempt", number(i64::from(session.attempt)))
        .send()
        .await;
    applied(result, "record the video task")
}

/// Moves a rendering session's next status check to `next_at_ms` and counts the check. False
/// when another run checked it first.
pub async fn schedule_next_check(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    session: &Session,
    next_at_ms: i64,
) -> Result<bool> {
    let result = ddb
        .update_item()
        .table_name(table)
        .set_key(Some(session.key()))
        .update_expression("SET due_at = :next ADD checks :one")
        .condition_expression("#status = :rendering AND due_at = :seen")
        .expression_attribute_names("#status", "status")
        .expression_attribute_values(":rendering", status(Status::Rendering))
        .expression_attribute_values(":next", number(next_at_ms))
        .expression_attribute_values(":seen", number(session.due_at_ms.unwrap_or_default()))
        .expression_attribute_values(":one", number(1))
        .send()
        .await;
    applied(result, "schedule the next status check")
}

/// Claims the re-dispatch of a stuck `queued` session, so an overlapping run does not send it
/// too: false when it was re-dispatched or active (handed back, say) after `cutoff_ms`, or is
/// no longer queued.
pub async fn claim_redispatch(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    session: &Session,
    now_ms: i64,
    cutoff_ms: i64,
) -> Result<bool> {
    let result = ddb
        .update_item()
        .table_name(table)
        .set_key(Some(session.key()))
        .update_expression("SET dispatched_at = :now")
        .condition_expression(
            "#status = :queued AND updated_at <= :cutoff \
             AND (attribute_not_exists(dispatched_at) OR dispatched_at < :cutoff)",
        )
        .expression_attribute_names("#status", "status")
        .expression_attribute_values(":queued", status(Status::Queued))
        .expression_attribute_values(":now", number(now_ms))
        .expression_attribute_values(":cutoff", number(cutoff_ms))
        .send()
        .await;
    applied(result, "claim the re-dispatch")
}

/// The update that re-queues a dead-lettered session (`failed → queued`) for an admin's
/// retry, to be written in the transaction that reserves its credits again.
pub fn requeue(
    table: &str,
    user_id: &str,
    session_id: &str,
    now_ms: i64,
) -> Result<TransactWriteItem> {
    let update = Update::builder()
        .table_name(table)
        .set_key(Some(session_key(user_id, session_id)))
        .update_expression(
            "SET #status = :queued, open_pk = :open, open_at = :now, updated_at = :now, \
             credits_captured = :zero ADD retries :one \
             REMOVE #error, last_error, first_failed_at, dispatched_at",
        )
        .condition_expression("#status = :failed AND #error.code = :dead")
        .set_expression_attribute_names(Some(HashMap::from([
            ("#status".to_owned(), "status".to_owned()),
            ("#error".to_owned(), "error".to_owned()),
        ])))
        .expression_attribute_values(":queued", status(Status::Queued))
        .expression_attribute_values(":failed", status(Status::Failed))
        .expression_attribute_values(":dead", string(DEAD_LETTERED))
        .expression_attribute_values(":open", string(OPEN_PK))
        .expression_attribute_values(":now", number(now_ms))
        .expression_attribute_values(":zero", number(0))
        .expression_attribute_values(":one", number(1))
        .build()?;
    Ok(TransactWriteItem::builder().update(update).build())
}

/// What a completed session delivered.
#[derive(Clone, Debug)]
pub struct Completion {
    /// Credits to capture (the rest of the hold is released).
    pub captured: i64,
    /// The outputs stored.
    pub outputs: Vec<Output>,
    /// A remark for the user (some images withheld, ...).
    pub note: Option<String>,
    /// Where the time went.
    pub timing: Timing,
}

/// Completes a session and captures what it delivered, in one transaction, exactly once.
/// Returns whether this call ended it (false when another delivery or run ended it first).
pub async fn complete_with_capture(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    session: &Session,
    completion: Completion,
) -> Result<bool> {
    let delivered = completion.outputs.len();
    let mut values = HashMap::from([
        (":completed".to_owned(), status(Status::Completed)),
        (
            ":outputs".to_owned(),
            serde_dynamo::to_attribute_value(&completion.outputs)?,
        ),
        (
            ":timing".to_owned(),
            serde_dynamo::to_attribute_value(&completion.timing)?,
        ),
        (":captured".to_owned(), number(completion.captured)),
    ]);
    let mut sets =
        "#status = :completed, outputs = :outputs, #timing = :timing, credits_captured = :captured"
            .to_owned();
    if let Some(note) = completion.note {
        values.insert(":note".into(), string(note));
        sets.push_str(", note = :note");
    }
    let update = end_session(table, session, &sets, values)?;
    let capture = (completion.captured, ExpiredShare::Lost);
    match settle_with(ddb, table, session, capture, vec![update]).await? {
        Some(Settlement::Settled {
            captured, released, ..
        }) => {
            let timing = &completion.timing;
            tracing::info!(
                session = %session.session_id,
                captured,
                released,
                delivered,
                total_ms = timing.total_ms,
                provider_ms = timing.provider_ms,
                "session completed"
            );
            metrics::session_finished("completed", "none", delivered, captured, timing.total_ms);
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Fails a session and releases its hold, in one transaction, exactly once. Returns whether
/// this call ended it (false when another delivery or run moved the session first).
pub async fn fail_with_release(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    session: &Session,
    error: SessionError,
) -> Result<bool> {
    fail_writing(ddb, table, session, error, Vec::new()).await
}

/// Fails a dead-lettered session and releases its hold, and writes the dead letter's record
/// in the same transaction: the record exists exactly when the session was set aside.
pub async fn dead_letter(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    session: &Session,
    error: SessionError,
    record: Item,
) -> Result<bool> {
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(record))
        .build()?;
    let record = TransactWriteItem::builder().put(put).build();
    fail_writing(ddb, table, session, error, vec![record]).await
}

/// Fails a session, releases its hold and writes `also`, in one transaction.
async fn fail_writing(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    session: &Session,
    error: SessionError,
    also: Vec<TransactWriteItem>,
) -> Result<bool> {
    let reason = error.code.clone();
    let share = error.expired_share();
    let values = HashMap::from([
        (":failed".to_owned(), status(Status::Failed)),
        (
            ":error".to_owned(),
            serde_dynamo::to_attribute_value(&error)?,
        ),
    ]);
    let mut items = vec![end_session(
        table,
        session,
        "#status = :failed, #error = :error",
        values,
    )?];
    items.extend(also);
    match settle_with(ddb, table, session, (0, share), items).await? {
        Some(Settlement::Settled { .. }) => {
            tracing::info!(session = %session.session_id, %reason, "session failed; credits released");
            metrics::session_finished("failed", &reason, 0, 0, 0);
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Settles the session's hold (capturing `capture.0`, the expired share as `capture.1` says)
/// with its final update; `None` when the session's condition
/// failed (another delivery or run ended it first). Any other failure is the caller's to
/// retry: it must not be taken for an end, or the session would stay open with its hold.
async fn settle_with(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    session: &Session,
    (capture, share): (i64, ExpiredShare),
    items: Vec<TransactWriteItem>,
) -> Result<Option<Settlement>> {
    let settled = ledger::settle(
        ddb,
        table,
        &session.user_id,
        &session.session_id,
        capture,
        share,
        items,
    )
    .await;
    match settled {
        Ok(settlement) => Ok(Some(settlement)),
        Err(SettleError::ItemConflict) => {
            tracing::info!(session = %session.session_id, "session finished elsewhere");
            Ok(None)
        }
        Err(SettleError::Failed(e)) => Err(Fault::caused("finish the session", e)),
    }
}

/// The update that ends a session, conditioned on it being where this caller found it.
fn end_session(
    table: &str,
    session: &Session,
    sets: &str,
    mut values: HashMap<String, AttributeValue>,
) -> Result<TransactWriteItem> {
    values.insert(":expected".into(), status(session.status));
    values.insert(":attempt".into(), number(i64::from(session.attempt)));
    values.insert(":retries".into(), number(i64::from(session.retries)));
    values.insert(":now".into(), number(clock::now_ms()));
    let names: HashMap<String, String> = [
        ("#status", "status"),
        ("#timing", "timing"),
        ("#error", "error"),
    ]
    .into_iter()
    .filter(|(k, _)| sets.contains(k) || *k == "#status")
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let update = Update::builder()
        .table_name(table)
        .set_key(Some(session.key()))
        .update_expression(format!(
            "SET {sets}, updated_at = :now REMOVE open_pk, open_at, lease_until, due_pk, due_at"
        ))
        // Status and attempt alone repeat after an admin's retry (failed → queued with the
        // attempt unchanged): the retries make the condition ABA-safe. A session never
        // retried may predate the attribute.
        .condition_expression(
            "#status = :expected AND attempt = :attempt \
             AND (retries = :retries OR attribute_not_exists(retries))",
        )
        .set_expression_attribute_names(Some(names))
        .set_expression_attribute_values(Some(values))
        .build()?;
    Ok(TransactWriteItem::builder().update(update).build())
}

/// Whether a conditional update was applied: `false` when its condition refused it.
fn applied<T, E, R>(
    result: std::result::Result<T, aws_sdk_dynamodb::error::SdkError<E, R>>,
    what: &str,
) -> Result<bool>
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match result {
        Ok(_) => Ok(true),
        Err(e) if table::is_conditional_check_failed(&e) => Ok(false),
        Err(e) => Err(e).context(what),
    }
}
