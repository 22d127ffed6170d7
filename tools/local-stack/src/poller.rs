//! Plays an SQS event source mapping: long-polls the queue, hands batches of up to the template's
//! `BatchSize` to the function as a real SQS event, deletes the records that did not fail, and
//! leaves the failures (the whole batch if the invocation itself failed) for redelivery, so that
//! SQS's own redrive moves a message to the DLQ after `maxReceiveCount` receives.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName};
use base64::Engine as _;
use serde_json::{json, Map, Value};
use tokio::sync::watch;

use crate::invoke::{InvokeError, Invoker};
use crate::log::Logger;
use crate::template::{SqsSource, REGION};

/// One event source mapping.
pub struct Poller {
    /// The mapping as the template declares it.
    pub source: SqsSource,
    /// The queue's URL.
    pub queue_url: String,
    /// The queue's ARN (`eventSourceARN`).
    pub queue_arn: String,
    /// SQS client (moto).
    pub sqs: aws_sdk_sqs::Client,
    /// The Invoke API.
    pub invoker: Invoker,
    /// Invocation timeout.
    pub timeout: Duration,
    /// Long-poll wait, seconds (at most 20).
    pub wait_secs: i32,
    /// Log.
    pub log: Logger,
}

/// What became of one batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Message ids to delete.
    pub delete: Vec<String>,
    /// Message ids left for redelivery.
    pub keep: Vec<String>,
    /// Why records were kept, when not per-record failures.
    pub note: Option<String>,
}

/// Decides, as Lambda's SQS integration does, which records of a batch succeeded.
pub fn settle(
    ids: &[String],
    result: &Result<Value, InvokeError>,
    report_batch_item_failures: bool,
) -> Outcome {
    let everything_kept = |note: String| Outcome {
        delete: Vec::new(),
        keep: ids.to_vec(),
        note: Some(note),
    };
    let value = match result {
        Err(e) => return everything_kept(format!("invocation failed: {e}")),
        Ok(v) => v,
    };
    if !report_batch_item_failures {
        return Outcome {
            delete: ids.to_vec(),
            keep: Vec::new(),
            note: None,
        };
    }
    let failures = match value.get("batchItemFailures") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.clone(),
        Some(other) => {
            return everything_kept(format!("batchItemFailures is not a list: {other}"));
        }
    };
    let mut failed = HashSet::new();
    for item in &failures {
        match item.get("itemIdentifier").and_then(Value::as_str) {
            Some(id) if ids.iter().any(|i| i == id) => {
                failed.insert(id.to_owned());
            }
            // An empty, null or unknown identifier fails the whole batch (as in AWS).
            other => {
                return everything_kept(format!(
                    "batchItemFailures has an invalid itemIdentifier {other:?}"
                ))
            }
        }
    }
    let (keep, delete): (Vec<String>, Vec<String>) =
        ids.iter().cloned().partition(|id| failed.contains(id));
    Outcome {
        delete,
        keep,
        note: None,
    }
}

/// The SQS event Lambda delivers for `messages`.
pub fn sqs_event(messages: &[Message], queue_arn: &str) -> Value {
    let records: Vec<Value> = messages
        .iter()
        .map(|m| {
            let mut attributes = Map::new();
            for (k, v) in m.attributes().into_iter().flatten() {
                attributes.insert(k.as_str().to_owned(), Value::String(v.clone()));
            }
            let mut message_attributes = Map::new();
            for (k, v) in m.message_attributes().into_iter().flatten() {
                let b64 = |b: &aws_sdk_sqs::primitives::Blob| {
                    base64::engine::general_purpose::STANDARD.encode(b.as_ref())
                };
                let mut a = json!({
                    "stringListValues": v.string_list_values(),
                    "binaryListValues": v.binary_list_values().iter().map(b64).collect::<Vec<_>>(),
                    "dataType": v.data_type(),
                });
                if let Some(s) = v.string_value() {
                    a["stringValue"] = json!(s);
                }
                if let Some(b) = v.binary_value() {
                    a["binaryValue"] = json!(b64(b));
                }
                message_attributes.insert(k.clone(), a);
            }
            json!({
                "messageId": m.message_id(),
                "receiptHandle": m.receipt_handle(),
                "body": m.body().unwrap_or_default(),
                "attributes": attributes,
                "messageAttributes": message_attributes,
                "md5OfBody": m.md5_of_body(),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": REGION,
            })
        })
        .collect();
    json!({ "Records": records })
}

impl Poller {
    fn name(&self) -> String {
        format!("{} -> {}", self.source.queue, self.source.binary)
    }

    /// Polls until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let name = self.name();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let batch = tokio::select! {
                _ = shutdown.changed() => return,
                batch = self.receive() => batch,
            };
            let messages = match batch {
                Ok(m) => m,
                Err(e) => {
                    self.log
                        .line("poller", &format!("{name}: receive failed: {e}"));
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        _ = tokio::time::sleep(Duration::from_secs(2)) => continue,
                    }
                }
            };
            if messages.is_empty() {
                continue;
            }
            // Once a batch is received it is finished even during shutdown, as Lambda would.
            if let Err(InvokeError::Missing { .. }) = self.deliver(&messages).await {
                self.log.line(
                    "poller",
                    &format!(
                        "{name}: stopped: the function is missing; messages stay on the queue"
                    ),
                );
                return;
            }
        }
    }

    async fn receive(&self) -> Result<Vec<Message>, String> {
        let want = self.source.batch_size.max(1) as usize;
        let started = Instant::now();
        let mut messages: Vec<Message> = Vec::new();
        let mut wait = self.wait_secs;
        loop {
            let room = (want - messages.len()).min(10) as i32;
            let out = self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(room)
                .wait_time_seconds(wait)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .message_attribute_names("All")
                .send()
                .await
                .map_err(|e| format!("{}", aws_sdk_sqs::error::DisplayErrorContext(e)))?;
            let got = out.messages.unwrap_or_default();
            let empty = got.is_empty();
            messages.extend(got);
            if messages.is_empty() || messages.len() >= want {
                return Ok(messages);
            }
            // Fill the batch: keep receiving during the batching window, then take what is
            // there without waiting.
            let window = Duration::from_secs(u64::from(self.source.batching_window_secs));
            if started.elapsed() >= window {
                if empty {
                    return Ok(messages);
                }
                wait = 0;
            } else {
                wait = 1;
            }
        }
    }

    async fn deliver(&self, messages: &[Message]) -> Result<(), InvokeError> {
        let started = Instant::now();
        let ids: Vec<String> = messages
            .iter()
            .map(|m| m.message_id().unwrap_or_default().to_owned())
            .collect();
        let event = sqs_event(messages, &self.queue_arn);
        let result = self
            .invoker
            .invoke(&self.source.binary, &event, self.timeout)
            .await;
        let outcome = settle(&ids, &result, self.source.report_batch_item_failures);
        let mut entries = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if outcome.delete.contains(&ids[i]) {
                entries.push(
                    DeleteMessageBatchRequestEntry::builder()
                        .id(format!("m{i}"))
                        .receipt_handle(m.receipt_handle().unwrap_or_default())
                        .build()
                        .expect("id and receipt handle are set"),
                );
            }
        }
        let mut delete_error = None;
        for chunk in entries.chunks(10) {
            let out = self
                .sqs
                .delete_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(chunk.to_vec()))
                .send()
                .await;
            match out {
                Ok(out) if !out.failed().is_empty() => {
                    delete_error = Some(format!("{} deletes failed", out.failed().len()))
                }
                Ok(_) => {}
                Err(e) => {
                    delete_error = Some(format!("{}", aws_sdk_sqs::error::DisplayErrorContext(e)))
                }
            }
        }
        let receives: Vec<String> = messages
            .iter()
            .map(|m| {
                m.attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .cloned()
                    .unwrap_or_else(|| "?".into())
            })
            .collect();
        let mut line = format!(
            "{}: {} record(s) (receive count {}), {} deleted, {} left for redelivery ({} ms)",
            self.name(),
            messages.len(),
            receives.join(","),
            outcome.delete.len(),
            outcome.keep.len(),
            started.elapsed().as_millis()
        );
        if let Some(note) = &outcome.note {
            line.push_str(&format!("; {note}"));
        }
        if let Some(e) = delete_error {
            line.push_str(&format!("; delete failed: {e}"));
        }
        self.log.line("poller", &line);
        result.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> Vec<String> {
        vec!["a".into(), "b".into(), "c".into()]
    }

    #[test]
    fn partial_failures_keep_only_the_failed_records() {
        let out = settle(
            &ids(),
            &Ok(json!({"batchItemFailures": [{"itemIdentifier": "b"}]})),
            true,
        );
        assert_eq!(out.delete, ["a", "c"]);
        assert_eq!(out.keep, ["b"]);
        let out = settle(&ids(), &Ok(json!({"batchItemFailures": []})), true);
        assert_eq!(out.delete.len(), 3);
        let out = settle(&ids(), &Ok(Value::Null), true);
        assert_eq!(out.delete.len(), 3);
    }

    #[test]
    fn errors_and_bad_answers_keep_the_whole_batch() {
        let out = settle(&ids(), &Err(InvokeError::Function("boom".into())), true);
        assert_eq!((out.delete.len(), out.keep.len()), (0, 3));
        let out = settle(
            &ids(),
            &Ok(json!({"batchItemFailures": [{"itemIdentifier": "zzz"}]})),
            true,
        );
        assert_eq!(out.keep.len(), 3);
        let out = settle(
            &ids(),
            &Ok(json!({"batchItemFailures": [{"itemIdentifier": ""}]})),
            true,
        );
        assert_eq!(out.keep.len(), 3);
        // Without ReportBatchItemFailures, a successful invocation deletes everything.
        let out = settle(
            &ids(),
            &Ok(json!({"batchItemFailures": [{"itemIdentifier": "a"}]})),
            false,
        );
        assert_eq!(out.delete.len(), 3);
    }

    #[test]
    fn records_carry_what_lambda_sends() {
        let m = Message::builder()
            .message_id("m1")
            .receipt_handle("rh")
            .body("{\"session_id\":\"s\"}")
            .md5_of_body("x")
            .attributes(MessageSystemAttributeName::ApproximateReceiveCount, "2")
            .build();
        let event = sqs_event(&[m], "arn:aws:sqs:us-east-1:123456789012:q");
        let r = &event["Records"][0];
        assert_eq!(r["messageId"], "m1");
        assert_eq!(r["receiptHandle"], "rh");
        assert_eq!(r["attributes"]["ApproximateReceiveCount"], "2");
        assert_eq!(r["eventSource"], "aws:sqs");
        assert_eq!(r["eventSourceARN"], "arn:aws:sqs:us-east-1:123456789012:q");
        assert_eq!(r["awsRegion"], "us-east-1");
    }
}
