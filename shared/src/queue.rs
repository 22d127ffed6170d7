//! The SQS generation queue: one message per delivery attempt of a session. The session in
//! DynamoDB is the source of truth; the message only says which session to work on, so a
//! duplicate message does no harm.

use serde::{Deserialize, Serialize};

use crate::fault::{Context, Result};

/// The body of a generation message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationMessage {
    /// Session to generate.
    pub session_id: String,
    /// Its owner (the partition to read).
    pub user_id: String,
    /// Dispatch attempt (0 for the first, more for re-dispatches and admin retries).
    pub attempt: u32,
    /// The session's admin retries when it was sent (see [`crate::sessions::Session::retries`]);
    /// absent in messages sent before the field existed.
    #[serde(default)]
    pub retries: u32,
    /// When it was sent (epoch ms).
    #[serde(rename = "enqueued_at")]
    pub enqueued_at_ms: i64,
}

/// Sends one generation message.
pub async fn send(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    message: &GenerationMessage,
) -> Result<()> {
    sqs.send_message()
        .queue_url(queue_url)
        .message_body(serde_json::to_string(message)?)
        .send()
        .await
        .context("send the generation message")?;
    Ok(())
}
