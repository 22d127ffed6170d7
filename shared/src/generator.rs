//! The generator: consumes the generation queue (SQS, `ReportBatchItemFailures`).
//!
//! Each record runs concurrently in its own task and span; a panic fails that record only. A
//! record claims its session once (`queued → running`, or a running session whose lease
//! lapsed), asks the provider for every image at once (bounded concurrency), copies the images
//! into S3, then finishes in one transaction: the session becomes `completed` and the hold is
//! captured for what was delivered and released for the rest. A video creates its Seedance task
//! and leaves the session `rendering` for the sweeper. Retryable failures hand the session back
//! (`queued`) and report the record as failed so SQS redelivers it; permanent ones fail the
//! session and release the credits.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};
use futures::{FutureExt, StreamExt};
use tracing::Instrument;

use crate::error::ApiError;
use crate::generation::{GenerationRequest, ImageModel, ImageRequest, VideoModel, VideoRequest};
use crate::ledger::{self, n, s, Settlement};
use crate::provider::{self, FailureKind, ImageGeneration, ImageResult, ProviderError, VideoTask};
use crate::queue::GenerationMessage;
use crate::sessions::{self, Output, Session, SessionError, Status, Timing};
use crate::storage;
use crate::telemetry::metrics;
use crate::{clock, pricing, AppState};

/// Everything the generator needs, built once per cold start.
///
/// Settings come from the environment: `IMAGE_CONCURRENCY` (8), `LEASE_MS` (90 000, above the
/// provider timeout), `FIRST_CHECK_MS` (15 000).
#[derive(Clone, Debug)]
pub struct Generator {
    /// Configuration and AWS clients.
    pub app: AppState,
    /// The provider client.
    pub provider: provider::Client,
    /// Most provider calls in flight for one session.
    pub image_concurrency: usize,
    /// How long a claim lasts before another delivery may take the session over (ms).
    pub lease_ms: i64,
    /// Delay before the first status check of a new video task (ms).
    pub first_check_ms: i64,
}

impl Generator {
    /// Reads the configuration and the provider key, and builds every client.
    pub async fn from_env() -> Result<Self, crate::config::ConfigError> {
        let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        let app = AppState::from_sdk_config(&sdk)?;
        Ok(Self {
            app,
            provider: provider::Client::from_env(&sdk).await?,
            image_concurrency: crate::config::env_number("IMAGE_CONCURRENCY", 8)?,
            lease_ms: crate::config::env_number("LEASE_MS", 90_000)?,
            first_check_ms: crate::config::env_number("FIRST_CHECK_MS", 15_000)?,
        })
    }
}

/// What became of one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done (or nothing to do): delete the message.
    Done,
    /// Leave it for redelivery.
    Retry(String),
}

/// Processes a batch; the records that must be redelivered are listed as item failures.
pub async fn handle_batch(generator: Arc<Generator>, event: SqsEvent) -> SqsBatchResponse {
    run_batch(event, move |record| {
        let generator = generator.clone();
        async move { process_record(&generator, &record).await }
    })
    .await
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

/// Processes one record.
pub async fn process_record(generator: &Generator, record: &SqsMessage) -> Outcome {
    let Some(message) = record
        .body
        .as_deref()
        .and_then(|b| serde_json::from_str::<GenerationMessage>(b).ok())
    else {
        // Never succeeds: after maxReceiveCount it rests in the DLQ for an admin to see.
        return Outcome::Retry("malformed message".into());
    };
    let span = tracing::Span::current();
    span.record("session", message.session_id.as_str());
    span.record("user", message.user_id.as_str());
    // A panic anywhere below fails this record only.
    match std::panic::AssertUnwindSafe(process(generator, &message))
        .catch_unwind()
        .await
    {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => Outcome::Retry(format!("internal error: {e}")),
        Err(_) => Outcome::Retry("panicked".into()),
    }
}

async fn process(generator: &Generator, message: &GenerationMessage) -> Result<Outcome, ApiError> {
    let db_started = Instant::now();
    let session = match claim(
        &generator.app,
        &message.user_id,
        &message.session_id,
        generator.lease_ms,
    )
    .await?
    {
        Claim::Claimed(session) => session,
        Claim::Finished => return Ok(Outcome::Done),
        Claim::Busy => return Ok(Outcome::Retry("another delivery holds the session".into())),
    };
    let mut timing = Timing {
        database_ms: db_started.elapsed().as_millis() as i64,
        queue_wait_ms: session.claimed_at.unwrap_or_default() - session.created_at,
        ..Timing::default()
    };
    match &session.request {
        GenerationRequest::Image(request) => {
            run_images(generator, &session, request, &mut timing).await
        }
        GenerationRequest::Video(request) => run_video(generator, &session, request).await,
    }
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

/// Claims a session: `queued → running`, or takes over a `running` one whose lease lapsed.
pub async fn claim(
    app: &AppState,
    user_id: &str,
    session_id: &str,
    lease_ms: i64,
) -> Result<Claim, ApiError> {
    let now = clock::now_ms();
    let result = app
        .aws
        .dynamodb
        .update_item()
        .table_name(&app.config.table)
        .set_key(Some(sessions::session_key(user_id, session_id)))
        .update_expression("SET #status = :running, lease_until = :lease, claimed_at = :now, updated_at = :now ADD attempt :one")
        .condition_expression("attribute_exists(pk) AND (#status = :queued OR (#status = :running AND lease_until < :now))")
        .expression_attribute_names("#status", "status")
        .expression_attribute_values(":running", s("running"))
        .expression_attribute_values(":queued", s("queued"))
        .expression_attribute_values(":lease", n(now + lease_ms))
        .expression_attribute_values(":now", n(now))
        .expression_attribute_values(":one", n(1))
        .return_values(ReturnValue::AllNew)
        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
        .send()
        .await;
    match result {
        Ok(output) => {
            let item = output
                .attributes
                .ok_or_else(|| ApiError::internal("claim returned nothing"))?;
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
            other => Err(ApiError::internal(format!("{other:?}"))),
        },
    }
}

/// One image's fate.
enum Image {
    Delivered(ImageResult),
    /// Withheld by the content filter, with the provider's code.
    Withheld(String),
    Refused(ProviderError),
}

async fn run_images(
    generator: &Generator,
    session: &Session,
    request: &ImageRequest,
    timing: &mut Timing,
) -> Result<Outcome, ApiError> {
    let app = &generator.app;
    let model = match request.model {
        ImageModel::Seedream40 => app.config.seedream_40_model.as_str(),
        ImageModel::Seedream45 => app.config.seedream_45_model.as_str(),
    };
    let provider_started = Instant::now();
    // One call per image, all at once (bounded): four images take about as long as one.
    let calls = (0..request.n).map(|i| {
        let seed = request.seed.map(|s| {
            if s < 0 {
                s
            } else {
                (s + i64::from(i)) % 2_147_483_648
            }
        });
        async move {
            let call = ImageGeneration {
                model,
                prompt: &request.prompt,
                size: &request.size.label,
                seed,
                image: &request.reference_images,
            };
            let started = Instant::now();
            let result = generator.provider.generate_images(&call).await;
            metrics::provider_call(
                "images",
                started.elapsed(),
                result.as_ref().err().map(|e| e.code.as_str()),
            );
            (i, result)
        }
    });
    let mut answers: Vec<(u32, Result<Vec<ImageResult>, ProviderError>)> =
        futures::stream::iter(calls)
            .buffer_unordered(generator.image_concurrency.max(1))
            .collect()
            .await;
    answers.sort_by_key(|(i, _)| *i);
    timing.provider_ms = provider_started.elapsed().as_millis() as i64;

    let mut images = Vec::with_capacity(answers.len());
    for (_, answer) in answers {
        match answer {
            Ok(results) => match results.into_iter().next() {
                Some(ImageResult::Rejected(code)) => images.push(Image::Withheld(code)),
                Some(delivered) => images.push(Image::Delivered(delivered)),
                None => images.push(Image::Withheld("NoImageReturned".into())),
            },
            Err(e) if e.kind == FailureKind::Retryable => {
                let reason = format!("provider: {e}");
                hand_back(app, session, &reason).await;
                return Ok(Outcome::Retry(reason));
            }
            Err(e) if e.is_content_policy() => images.push(Image::Withheld(e.code.clone())),
            Err(e) => images.push(Image::Refused(e)),
        }
    }

    let delivered: Vec<(u32, &ImageResult)> = images
        .iter()
        .filter_map(|i| match i {
            Image::Delivered(r) => Some(r),
            _ => None,
        })
        .enumerate()
        .map(|(i, r)| (i as u32, r))
        .collect();
    if delivered.is_empty() {
        let error = images.iter().find_map(|i| match i {
            Image::Refused(e) => Some(e.clone()),
            _ => None,
        });
        let error = match error {
            Some(e) => SessionError { code: e.reason().into(), message: e.user_message() },
            None => SessionError {
                code: "content_policy".into(),
                message: "Every image was withheld by the provider's content filter. No credits were charged.".into(),
            },
        };
        return fail(app, session, error).await;
    }

    let transfer_started = Instant::now();
    let copies = delivered.iter().map(|(index, result)| {
        storage::copy_output(app, &generator.provider, session, *index, result)
    });
    let outputs: Result<Vec<Output>, ProviderError> = futures::future::join_all(copies)
        .await
        .into_iter()
        .collect();
    timing.transfer_ms = transfer_started.elapsed().as_millis() as i64;
    let outputs = match outputs {
        Ok(outputs) => outputs,
        Err(e) if e.kind == FailureKind::Retryable => {
            let reason = format!("copy: {e}");
            hand_back(app, session, &reason).await;
            return Ok(Outcome::Retry(reason));
        }
        Err(_) => {
            return fail(
                app,
                session,
                SessionError {
                    code: "output_unavailable".into(),
                    message:
                        "The generated images could not be retrieved. No credits were charged."
                            .into(),
                },
            )
            .await
        }
    };

    let withheld_codes: Vec<&str> = images
        .iter()
        .filter_map(|i| match i {
            Image::Withheld(code) => Some(code.as_str()),
            _ => None,
        })
        .collect();
    if !withheld_codes.is_empty() {
        tracing::info!(codes = ?withheld_codes, "images withheld by the content filter");
    }
    let withheld = request.n as usize - outputs.len();
    let note = (withheld > 0).then(|| {
        format!(
            "{withheld} of {} images were withheld by the provider's content filter; only the {} delivered were charged.",
            request.n,
            outputs.len()
        )
    });
    let captured = pricing::credits_per_image(request.size.class) * outputs.len() as i64;
    timing.total_ms = clock::now_ms() - session.created_at;
    finish(app, session, captured, outputs, note, timing.clone()).await
}

async fn run_video(
    generator: &Generator,
    session: &Session,
    request: &VideoRequest,
) -> Result<Outcome, ApiError> {
    let app = &generator.app;
    let model = match request.model {
        VideoModel::SeedancePro => app.config.seedance_pro_model.as_str(),
        VideoModel::SeedanceLite => app.config.seedance_lite_model.as_str(),
    };
    let task = VideoTask {
        model,
        prompt: &request.prompt,
        resolution: request.resolution.as_str(),
        ratio: &request.ratio,
        duration: request.duration,
        first_frame: request.first_frame.as_deref(),
    };
    let started = Instant::now();
    let created = generator.provider.create_task(&task).await;
    metrics::provider_call(
        "task_create",
        started.elapsed(),
        created.as_ref().err().map(|e| e.code.as_str()),
    );
    match created {
        Ok(task_id) => {
            let now = clock::now_ms();
            let result = app
                .aws
                .dynamodb
                .update_item()
                .table_name(&app.config.table)
                .set_key(Some(sessions::session_key(&session.user_id, &session.session_id)))
                .update_expression("SET #status = :rendering, provider_task_id = :task, due_pk = :due, due_at = :at, updated_at = :now REMOVE lease_until")
                .condition_expression("#status = :running AND attempt = :attempt")
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":rendering", s("rendering"))
                .expression_attribute_values(":running", s("running"))
                .expression_attribute_values(":task", s(task_id.clone()))
                .expression_attribute_values(":due", s(sessions::DUE_PK))
                .expression_attribute_values(":at", n(now + generator.first_check_ms))
                .expression_attribute_values(":now", n(now))
                .expression_attribute_values(":attempt", n(i64::from(session.attempt)))
                .send()
                .await;
            match result {
                Ok(_) => {
                    tracing::info!(task = %task_id, "video task created; rendering");
                    Ok(Outcome::Done)
                }
                Err(e)
                    if matches!(
                        e.as_service_error(),
                        Some(UpdateItemError::ConditionalCheckFailedException(_))
                    ) =>
                {
                    // Our lease lapsed and another delivery took over: it owns the session now.
                    tracing::warn!(task = %task_id, "lost the session before recording the task; cancelling it");
                    let _ = generator.provider.delete_task(&task_id).await;
                    Ok(Outcome::Done)
                }
                Err(e) => Err(ApiError::internal(format!("{e:?}"))),
            }
        }
        Err(e) if e.kind == FailureKind::Retryable => {
            let reason = format!("provider: {e}");
            hand_back(app, session, &reason).await;
            Ok(Outcome::Retry(reason))
        }
        Err(e) => {
            fail(
                app,
                session,
                SessionError {
                    code: e.reason().into(),
                    message: e.user_message(),
                },
            )
            .await
        }
    }
}

/// Gives a claimed session back to the queue (`running → queued`) for the redelivery, with
/// the reason, which the dead-letter record shows if every delivery fails.
async fn hand_back(app: &AppState, session: &Session, reason: &str) {
    let result = app
        .aws
        .dynamodb
        .update_item()
        .table_name(&app.config.table)
        .set_key(Some(sessions::session_key(
            &session.user_id,
            &session.session_id,
        )))
        .update_expression("SET #status = :queued, updated_at = :now, last_error = :reason, first_failed_at = if_not_exists(first_failed_at, :now) REMOVE lease_until")
        .condition_expression("#status = :running AND attempt = :attempt")
        .expression_attribute_names("#status", "status")
        .expression_attribute_values(":queued", s("queued"))
        .expression_attribute_values(":running", s("running"))
        .expression_attribute_values(":reason", s(reason))
        .expression_attribute_values(":now", n(clock::now_ms()))
        .expression_attribute_values(":attempt", n(i64::from(session.attempt)))
        .send()
        .await;
    if let Err(e) = result {
        // The lease lapses by itself; the redelivery takes the session over then.
        tracing::warn!(error = ?e, "could not hand the session back");
    }
}

/// Completes a session and captures what was delivered, in one transaction, exactly once.
async fn finish(
    app: &AppState,
    session: &Session,
    captured: i64,
    outputs: Vec<Output>,
    note: Option<String>,
    timing: Timing,
) -> Result<Outcome, ApiError> {
    let delivered = outputs.len();
    let mut values = HashMap::from([
        (":completed".to_owned(), s("completed")),
        (
            ":outputs".to_owned(),
            serde_dynamo::to_attribute_value(&outputs)?,
        ),
        (
            ":timing".to_owned(),
            serde_dynamo::to_attribute_value(&timing)?,
        ),
        (":captured".to_owned(), n(captured)),
    ]);
    let mut sets =
        "#status = :completed, outputs = :outputs, #timing = :timing, credits_captured = :captured"
            .to_owned();
    if let Some(note) = note {
        values.insert(":note".into(), s(note));
        sets.push_str(", note = :note");
    }
    let update = end_session(app, session, &sets, values)?;
    match ledger::settle(
        &app.aws.dynamodb,
        &app.config.table,
        &session.user_id,
        &session.session_id,
        captured,
        vec![update],
    )
    .await
    {
        Ok(Settlement::Settled {
            captured, released, ..
        }) => {
            tracing::info!(
                captured,
                released,
                delivered,
                total_ms = timing.total_ms,
                provider_ms = timing.provider_ms,
                "session completed"
            );
            metrics::session_finished("completed", "none", delivered, captured, &timing);
            Ok(Outcome::Done)
        }
        Ok(Settlement::AlreadySettled) => Ok(Outcome::Done),
        Err(e) => {
            // The session's condition failed: another delivery finished it first.
            tracing::warn!(error = %e, "session finished elsewhere");
            Ok(Outcome::Done)
        }
    }
}

/// Fails a session and releases its hold, in one transaction, exactly once; acknowledges.
pub async fn fail(
    app: &AppState,
    session: &Session,
    error: SessionError,
) -> Result<Outcome, ApiError> {
    fail_session(app, session, error).await?;
    Ok(Outcome::Done)
}

/// Fails a session and releases its hold, in one transaction, exactly once. Returns whether
/// this call ended it (false when another delivery or run moved the session first).
pub async fn fail_session(
    app: &AppState,
    session: &Session,
    error: SessionError,
) -> Result<bool, ApiError> {
    let reason = error.code.clone();
    let values = HashMap::from([
        (":failed".to_owned(), s("failed")),
        (
            ":error".to_owned(),
            serde_dynamo::to_attribute_value(&error)?,
        ),
    ]);
    let update = end_session(app, session, "#status = :failed, #error = :error", values)?;
    let settled = ledger::settle(
        &app.aws.dynamodb,
        &app.config.table,
        &session.user_id,
        &session.session_id,
        0,
        vec![update],
    )
    .await;
    match settled {
        Ok(Settlement::Settled { .. }) => {
            tracing::info!(session = %session.session_id, %reason, "session failed; credits released");
            metrics::session_finished("failed", &reason, 0, 0, &Timing::default());
            Ok(true)
        }
        Ok(Settlement::AlreadySettled) => Ok(false),
        Err(e) => {
            // The session's condition failed: another delivery or run ended it first.
            tracing::warn!(error = %e, "session finished elsewhere");
            Ok(false)
        }
    }
}

/// The update that ends a session, conditioned on it being where this caller found it.
pub fn end_session(
    app: &AppState,
    session: &Session,
    sets: &str,
    mut values: HashMap<String, AttributeValue>,
) -> Result<TransactWriteItem, ApiError> {
    values.insert(
        ":expected".into(),
        serde_dynamo::to_attribute_value(session.status)?,
    );
    values.insert(":attempt".into(), n(i64::from(session.attempt)));
    values.insert(":now".into(), n(clock::now_ms()));
    let update = Update::builder()
        .table_name(&app.config.table)
        .set_key(Some(sessions::session_key(
            &session.user_id,
            &session.session_id,
        )))
        .update_expression(format!(
            "SET {sets}, updated_at = :now REMOVE open_pk, open_at, lease_until, due_pk, due_at"
        ))
        .condition_expression("#status = :expected AND attempt = :attempt")
        .set_expression_attribute_names(Some(
            HashMap::from([
                ("#status".to_owned(), "status".to_owned()),
                ("#timing".to_owned(), "timing".to_owned()),
                ("#error".to_owned(), "error".to_owned()),
            ])
            .into_iter()
            .filter(|(k, _)| sets.contains(k.as_str()) || k == "#status")
            .collect(),
        ))
        .set_expression_attribute_values(Some(values))
        .build()
        .map_err(ApiError::internal)?;
    Ok(TransactWriteItem::builder().update(update).build())
}
