//! Dead letters: messages that failed every delivery land in the DLQ, whose consumer records
//! each one in DynamoDB (partition `DLQ`, newest first), releases the session's hold and marks
//! it failed (`dead_lettered`), then lets the message go; it leaves alone a session somebody
//! still drives (a live lease, a rendering video) or that an admin retried since. Admins list, retry, delete and purge
//! the records through the admin routes ([`crate::routes::admin`]).

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::batch::{run_batch, Outcome};
use crate::fault::{Context, Result};
use crate::queue::GenerationMessage;
use crate::sessions::transitions::{self, DEAD_LETTERED};
use crate::sessions::{self, Session, SessionError, Status};
use crate::table::{self, Item};
use crate::{clock, AppState};

/// Partition of dead-letter records.
pub const DLQ_PK: &str = "DLQ";
/// Sort key prefix of dead-letter records.
pub const DLQ_PREFIX: &str = "DLQ#";

/// A recorded dead letter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Time-ordered id (from the message's first send), stable across redeliveries.
    pub dead_letter_id: String,
    /// SQS message id.
    pub message_id: String,
    /// Session concerned, when the body could be read.
    pub session_id: Option<String>,
    /// Its owner.
    pub user_id: Option<String>,
    /// The message body as received.
    pub body: String,
    /// Why the last delivery failed.
    pub last_error: Option<String>,
    /// Deliveries made before it was dead-lettered.
    pub receive_count: u32,
    /// First failed delivery (epoch ms).
    #[serde(rename = "first_failure_at")]
    pub first_failure_at_ms: i64,
    /// Last failed delivery (epoch ms).
    #[serde(rename = "last_failure_at")]
    pub last_failure_at_ms: i64,
    /// When an admin last retried it (epoch ms).
    #[serde(
        default,
        rename = "retried_at",
        skip_serializing_if = "Option::is_none"
    )]
    pub retried_at_ms: Option<i64>,
}

/// A dead letter's id: a ULID whose time is the message's first send and whose randomness
/// comes from the message id, so a redelivered dead letter maps to the same record.
pub fn dead_letter_id(message_id: &str, sent_ms: u64) -> String {
    let digest = Sha256::digest(message_id.as_bytes());
    let mut random = [0u8; 16];
    random.copy_from_slice(&digest[..16]);
    ulid::Ulid::from_parts(sent_ms, u128::from_be_bytes(random)).to_string()
}

/// Key of a dead-letter record.
pub fn record_key(id: &str) -> Item {
    table::key(DLQ_PK, format!("{DLQ_PREFIX}{id}"))
}

/// Handles a batch from the DLQ.
pub async fn handle_batch(app: AppState, event: SqsEvent) -> SqsBatchResponse {
    run_batch(event, move |record| {
        let app = app.clone();
        async move {
            match record_dead_letter(&app, &record).await {
                Ok(Disposal::Done) => Outcome::Done,
                Ok(Disposal::LookAgain(reason)) => Outcome::Retry(reason.into()),
                Err(e) => Outcome::Retry(e.chain()),
            }
        }
    })
    .await
}

/// What became of a dead letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposal {
    /// Recorded, or nothing to do: let the message go.
    Done,
    /// Someone may still be driving the session: look again at the next delivery.
    LookAgain(&'static str),
}

/// What a dead letter means for the session it names, as read now.
enum Verdict {
    /// No session to act on (an unreadable body, a deleted session): record it for an admin.
    RecordOnly,
    /// Nothing to do: the session is final, rendering (the sweeper drives it to its end and
    /// cancels it past the longest render), or moved on to a later round (an admin retried
    /// it since this message was sent: acting on it would undo the retry).
    Ignore(&'static str),
    /// Another delivery holds a live lease and may still finish the session.
    Driven,
    /// Nobody drives the session: set it aside (fail it, release its hold, record it).
    SetAside(Box<Session>),
}

fn verdict(message: Option<&GenerationMessage>, session: Option<Session>, now_ms: i64) -> Verdict {
    let (Some(message), Some(session)) = (message, session) else {
        return Verdict::RecordOnly;
    };
    if message.retries != session.retries {
        return Verdict::Ignore("the session was retried since this message was sent");
    }
    match session.status {
        status if status.is_final() => Verdict::Ignore("the session has finished"),
        Status::Rendering => Verdict::Ignore("the sweeper drives the rendering video"),
        Status::Running if session.lease_until_ms.is_some_and(|t| t >= now_ms) => Verdict::Driven,
        _ => Verdict::SetAside(Box::new(session)),
    }
}

/// Records one dead letter and sets its session aside, if nobody is driving it any more.
/// The record and the session's failure (with the release of its hold) are one transaction,
/// so a crash between them cannot leave one without the other.
pub async fn record_dead_letter(app: &AppState, record: &SqsMessage) -> Result<Disposal> {
    let (ddb, table) = (&app.aws.dynamodb, &app.config.table);
    let body = record.body.clone().unwrap_or_default();
    let message: Option<GenerationMessage> = serde_json::from_str(&body).ok();
    let session = match &message {
        Some(m) => sessions::get(ddb, table, &m.user_id, &m.session_id).await?,
        None => None,
    };
    let letter = dead_letter(record, message.as_ref(), session.as_ref());
    let mut item: Item = serde_dynamo::to_item(&letter)?;
    item.extend(record_key(&letter.dead_letter_id));
    match verdict(message.as_ref(), session, clock::now_ms()) {
        Verdict::Ignore(why) => {
            tracing::info!(session = ?letter.session_id, why, "dead letter needs nothing");
            return Ok(Disposal::Done);
        }
        Verdict::Driven => {
            return Ok(Disposal::LookAgain(
                "another delivery holds the session's lease",
            ))
        }
        Verdict::RecordOnly => put_record(app, item).await?,
        Verdict::SetAside(session) => {
            let error = SessionError {
                code: DEAD_LETTERED.into(),
                message: "The generation failed repeatedly and was set aside for review. \
                          No credits were charged."
                    .into(),
            };
            if !transitions::dead_letter(ddb, table, &session, error, item).await? {
                return Ok(Disposal::LookAgain("the session moved while it was read"));
            }
        }
    }
    tracing::warn!(dead_letter = %letter.dead_letter_id, session = ?letter.session_id, error = ?letter.last_error, "dead letter recorded");
    Ok(Disposal::Done)
}

/// Records a dead letter that names no session; a redelivery finds it recorded.
async fn put_record(app: &AppState, item: Item) -> Result<()> {
    let put = app
        .aws
        .dynamodb
        .put_item()
        .table_name(&app.config.table)
        .set_item(Some(item))
        .condition_expression("attribute_not_exists(pk)")
        .send()
        .await;
    match put {
        Err(e) if !table::is_conditional_check_failed(&e) => {
            Err(e).context("record the dead letter")
        }
        _ => Ok(()),
    }
}

/// The record of a dead letter, from the message and, when it names one, its session.
fn dead_letter(
    record: &SqsMessage,
    message: Option<&GenerationMessage>,
    session: Option<&Session>,
) -> DeadLetter {
    let message_id = record.message_id.clone().unwrap_or_default();
    let attribute = |name: &str| {
        record
            .attributes
            .get(name)
            .and_then(|v| v.parse::<u64>().ok())
    };
    let now = clock::now_ms();
    let sent = attribute("SentTimestamp").unwrap_or(now as u64);
    DeadLetter {
        dead_letter_id: dead_letter_id(&message_id, sent),
        message_id,
        session_id: message.map(|m| m.session_id.clone()),
        user_id: message.map(|m| m.user_id.clone()),
        body: record.body.clone().unwrap_or_default(),
        last_error: session.and_then(|s| s.last_error.clone()).or_else(|| {
            message
                .is_none()
                .then(|| "the message body is not a generation message".into())
        }),
        // The session counts its deliveries; the DLQ's own receive count may or may not
        // include the receives before the redrive, so it is only the fallback.
        receive_count: session
            .map(|s| s.attempt)
            .unwrap_or_else(|| attribute("ApproximateReceiveCount").unwrap_or(0) as u32),
        first_failure_at_ms: session.and_then(|s| s.first_failed_at_ms).unwrap_or(now),
        last_failure_at_ms: session.map(|s| s.updated_at_ms).unwrap_or(now),
        retried_at_ms: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_ids_are_stable_and_time_ordered() {
        let a = dead_letter_id("m-1", 1_000);
        assert_eq!(a, dead_letter_id("m-1", 1_000));
        assert_ne!(a, dead_letter_id("m-2", 1_000));
        assert!(dead_letter_id("m-0", 2_000) > a);
    }
}
