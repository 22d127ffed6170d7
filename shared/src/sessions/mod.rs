//! Generation sessions: one per accepted request, in the user's partition, from `queued` to
//! `completed` or `failed`. Unfinished sessions carry `open_pk`/`open_at` (sparse index `open`)
//! so the sweeper can find the stuck ones; rendering videos carry `due_pk`/`due_at` (sparse
//! index `due`, shared with accounts whose lots can expire) for their next status check.
//!
//! Every change of status is one conditional write with a name, in [`transitions`]; nothing
//! else writes a session's status.

pub mod transitions;

use serde::{Deserialize, Serialize};

use crate::fault::Result;
use crate::generation::GenerationRequest;
use crate::ledger::ExpiredShare;
use crate::table::page::{self, PageRequest};
use crate::table::{self, keys, Item};

/// Partition value of the `open` index.
pub const OPEN_PK: &str = "OPEN";
/// Partition value of rendering sessions in the `due` index.
pub const DUE_PK: &str = "DUE";

/// Where a session is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Accepted, credits held, waiting for the generator.
    Queued,
    /// A generator has claimed it.
    Running,
    /// The provider is rendering a video; the sweeper checks it.
    Rendering,
    /// Finished with outputs.
    Completed,
    /// Finished without outputs; credits released.
    Failed,
}

impl Status {
    /// The status as stored (the `status` attribute).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Rendering => "rendering",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }

    /// Whether the session has ended.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed)
    }
}

/// One stored output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    /// Position in the request.
    pub index: u32,
    /// S3 key (`{user}/{session}/{n}.{ext}`).
    pub key: String,
    /// MIME type.
    pub content_type: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// Where the time of a session went, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timing {
    /// From acceptance to the generator's claim.
    pub queue_wait_ms: i64,
    /// Waiting on the provider.
    pub provider_ms: i64,
    /// Copying outputs into S3.
    pub transfer_ms: i64,
    /// Our own DynamoDB calls before the finishing transaction (the claim); the finishing
    /// transaction cannot time itself, and shows in the generator's logs.
    pub database_ms: i64,
    /// From acceptance to the end.
    pub total_ms: i64,
}

/// Why a session failed, in words a user can read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionError {
    /// Machine-readable reason (`content_policy`, `invalid_request`, `dead_lettered`, ...).
    pub code: String,
    /// User-facing explanation.
    pub message: String,
}

impl SessionError {
    /// What becomes of the hold's share backed by lots that expired meanwhile: it expires only
    /// when the session ended for a reason of the user's (the content policy, an invalid
    /// request); every other end is a failure of ours, which gives it back.
    pub fn expired_share(&self) -> ExpiredShare {
        match self.code.as_str() {
            "content_policy" | "invalid_request" => ExpiredShare::Lost,
            _ => ExpiredShare::Refunded,
        }
    }
}

/// A generation session as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// Time-ordered id.
    pub session_id: String,
    /// Owner.
    pub user_id: String,
    /// The frontend's correlation key.
    pub client_key: String,
    /// `image` or `video`.
    pub kind: String,
    /// Public model name.
    pub model: String,
    /// Life-cycle state.
    pub status: Status,
    /// Credits held when accepted.
    pub credits_reserved: i64,
    /// Credits spent.
    #[serde(default)]
    pub credits_captured: i64,
    /// Accepted at (epoch ms).
    #[serde(rename = "created_at")]
    pub created_at_ms: i64,
    /// Last change (epoch ms).
    #[serde(rename = "updated_at")]
    pub updated_at_ms: i64,
    /// The validated request.
    pub request: GenerationRequest,
    /// Stored outputs.
    #[serde(default)]
    pub outputs: Vec<Output>,
    /// Time breakdown, once finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timing: Option<Timing>,
    /// Failure reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<SessionError>,
    /// Remark for the user (some images filtered, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Delivery attempts so far.
    #[serde(default)]
    pub attempt: u32,
    /// Times an admin retried it after a dead letter. Every generation message carries the
    /// value it was sent under, so a dead letter of an earlier round is known to be stale.
    #[serde(default)]
    pub retries: u32,
    /// Seedance task id of a video.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_task_id: Option<String>,
    /// When a delivery first set out to create the video's task (epoch ms): from then on a
    /// task may exist that no answer told us of, and a delivery looks for it before creating.
    #[serde(
        default,
        rename = "task_intent_at",
        skip_serializing_if = "Option::is_none"
    )]
    pub task_intent_at_ms: Option<i64>,
    /// When the current claim lapses (epoch ms), while `running`.
    #[serde(
        default,
        rename = "lease_until",
        skip_serializing_if = "Option::is_none"
    )]
    pub lease_until_ms: Option<i64>,
    /// When the generator last claimed it (epoch ms).
    #[serde(
        default,
        rename = "claimed_at",
        skip_serializing_if = "Option::is_none"
    )]
    pub claimed_at_ms: Option<i64>,
    /// Why the last delivery failed and handed the session back, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When a delivery first failed (epoch ms).
    #[serde(
        default,
        rename = "first_failed_at",
        skip_serializing_if = "Option::is_none"
    )]
    pub first_failed_at_ms: Option<i64>,
    /// Status checks of a rendering video so far.
    #[serde(default)]
    pub checks: u32,
    /// When the sweeper last re-dispatched it (epoch ms).
    #[serde(
        default,
        rename = "dispatched_at",
        skip_serializing_if = "Option::is_none"
    )]
    pub dispatched_at_ms: Option<i64>,
    /// `open` index partition, while unfinished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_pk: Option<String>,
    /// `open` index sort key: when it was accepted (epoch ms).
    #[serde(default, rename = "open_at", skip_serializing_if = "Option::is_none")]
    pub open_at_ms: Option<i64>,
    /// `due` index partition, while a video renders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_pk: Option<String>,
    /// `due` index sort key: next status check (epoch ms).
    #[serde(default, rename = "due_at", skip_serializing_if = "Option::is_none")]
    pub due_at_ms: Option<i64>,
}

impl Session {
    /// A new queued session for a validated request.
    pub fn queued(
        session_id: String,
        user_id: &str,
        client_key: String,
        request: GenerationRequest,
        now_ms: i64,
    ) -> Self {
        Self {
            session_id,
            user_id: user_id.to_owned(),
            client_key,
            kind: request.kind().to_owned(),
            model: request.model_name().to_owned(),
            status: Status::Queued,
            credits_reserved: request.cost(),
            credits_captured: 0,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            request,
            outputs: Vec::new(),
            timing: None,
            error: None,
            note: None,
            attempt: 0,
            retries: 0,
            provider_task_id: None,
            task_intent_at_ms: None,
            lease_until_ms: None,
            claimed_at_ms: None,
            last_error: None,
            first_failed_at_ms: None,
            checks: 0,
            dispatched_at_ms: None,
            open_pk: Some(OPEN_PK.to_owned()),
            open_at_ms: Some(now_ms),
            due_pk: None,
            due_at_ms: None,
        }
    }

    /// The item to store, keys included.
    pub fn to_item(&self) -> Result<Item> {
        let mut item: Item = serde_dynamo::to_item(self)?;
        item.extend(session_key(&self.user_id, &self.session_id));
        Ok(item)
    }

    /// The key of its item.
    pub fn key(&self) -> Item {
        session_key(&self.user_id, &self.session_id)
    }
}

/// Key of a session item.
pub fn session_key(user_id: &str, session_id: &str) -> Item {
    table::key(keys::user_pk(user_id), keys::session_sk(session_id))
}

/// Whether a string can be a session id (a ULID); anything else is simply not found.
pub fn valid_session_id(id: &str) -> bool {
    id.len() == 26 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Reads one of the user's sessions; another user's id is simply not found.
pub async fn get(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    user_id: &str,
    session_id: &str,
) -> Result<Option<Session>> {
    if !valid_session_id(session_id) {
        return Ok(None);
    }
    table::get_item(ddb, table, session_key(user_id, session_id)).await
}

/// One page of the user's sessions, newest first.
pub async fn list(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    user_id: &str,
    page: &PageRequest,
) -> Result<(Vec<Session>, Option<String>)> {
    page::query_prefix(
        ddb,
        table,
        &keys::user_pk(user_id),
        keys::SESSION_PREFIX,
        page,
        None,
    )
    .await
}
