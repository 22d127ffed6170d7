//! The SQS batch runner shared by the queue consumers (generator, deadletter): every record at
//! once, each in its own task and span, so a slow record does not hold up the others and a
//! panicking one fails only itself. Records that ask for a retry or panic are reported as
//! batch item failures (`ReportBatchItemFailures`); SQS redelivers just those.

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use tracing::Instrument;

/// What became of one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done (or nothing to do): delete the message.
    Done,
    /// Leave it for redelivery.
    Retry(String),
}

/// Runs `process` on every record at once, each in its own task and span. A record that
/// panics or asks for a retry is reported as a batch item failure; the others are not.
pub async fn run_batch<F, Fut>(event: SqsEvent, process: F) -> SqsBatchResponse
where
    F: Fn(SqsMessage) -> Fut,
    Fut: std::future::Future<Output = Outcome> + Send + 'static,
{
    let tasks: Vec<_> = event
        .records
        .into_iter()
        .map(|record| {
            let id = record.message_id.clone().unwrap_or_default();
            let span = tracing::info_span!(
                "record",
                message_id = %id,
                session = tracing::field::Empty,
                user = tracing::field::Empty
            );
            (id, tokio::spawn(process(record).instrument(span)))
        })
        .collect();
    let mut response = SqsBatchResponse::default();
    for (id, task) in tasks {
        let failed = match task.await {
            Ok(Outcome::Done) => false,
            Ok(Outcome::Retry(reason)) => {
                tracing::warn!(message_id = %id, %reason, "record left for redelivery");
                true
            }
            Err(e) => {
                tracing::error!(message_id = %id, error = %e, "record panicked");
                true
            }
        };
        if failed {
            let mut failure = BatchItemFailure::default();
            failure.item_identifier = id;
            response.batch_item_failures.push(failure);
        }
    }
    response
}
