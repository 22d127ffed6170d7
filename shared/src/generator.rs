//! The generator: consumes the generation queue (SQS, `ReportBatchItemFailures`).
//!
//! Each record runs concurrently in its own task and span ([`crate::batch`]); a panic fails
//! that record only. A record claims its session once (`queued → running`, or a running session
//! whose lease lapsed), asks the provider for every image at once (bounded concurrency), copies
//! the images into S3, then finishes in one transaction: the session becomes `completed` and
//! the hold is captured for what was delivered and released for the rest. A video creates its
//! Seedance task and leaves the session `rendering` for the sweeper. Retryable failures hand
//! the session back (`queued`) and report the record as failed so SQS redelivers it; permanent
//! ones fail the session and release the credits. The status changes themselves are
//! [`crate::sessions::transitions`].

use std::sync::Arc;
use std::time::Instant;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use futures::{FutureExt, StreamExt};
use sha2::{Digest, Sha256};

use crate::batch::{run_batch, Outcome};
use crate::config::Config;
use crate::fault::Result;
use crate::generation::{GenerationRequest, ImageModel, ImageRequest, VideoModel, VideoRequest};
use crate::provider::{self, FailureKind, ImageGeneration, ImageResult, ProviderError, VideoTask};
use crate::queue::GenerationMessage;
use crate::sessions::transitions::{self, Claim, Completion};
use crate::sessions::{self, Output, Session, SessionError, Timing};
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
    /// A prompt whose session panics after its provider calls (`INJECT_PANIC_PROMPT`): fault
    /// injection for the test that the shipped binary unwinds and fails only that record. Never
    /// set in the template.
    pub panic_prompt: Option<String>,
}

impl Generator {
    /// Reads the configuration and the provider key, and builds every client.
    pub async fn from_env() -> std::result::Result<Self, crate::config::ConfigError> {
        let (app, provider) = AppState::from_env_with_provider().await?;
        Ok(Self {
            app,
            provider,
            image_concurrency: crate::config::env_number("IMAGE_CONCURRENCY", 8)?,
            lease_ms: crate::config::env_number("LEASE_MS", 90_000)?,
            first_check_ms: crate::config::env_number("FIRST_CHECK_MS", 15_000)?,
            panic_prompt: std::env::var("INJECT_PANIC_PROMPT").ok(),
        })
    }

    fn panic_if_asked(&self, prompt: &str) {
        if self.panic_prompt.as_deref() == Some(prompt) {
            panic!("injected panic (INJECT_PANIC_PROMPT)");
        }
    }

    fn ddb(&self) -> &aws_sdk_dynamodb::Client {
        &self.app.aws.dynamodb
    }

    fn table(&self) -> &str {
        &self.app.config.table
    }
}

/// Processes a batch; the records that must be redelivered are listed as item failures.
/// `deadline` is the invocation's: work that could not finish before it is not started.
pub async fn handle_batch(
    generator: Arc<Generator>,
    event: SqsEvent,
    deadline: Instant,
) -> SqsBatchResponse {
    run_batch(event, move |record| {
        let generator = generator.clone();
        async move { process_record(&generator, &record, deadline).await }
    })
    .await
}

/// Processes one record before `deadline`.
pub async fn process_record(
    generator: &Generator,
    record: &SqsMessage,
    deadline: Instant,
) -> Outcome {
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
    match std::panic::AssertUnwindSafe(process(generator, &message, deadline))
        .catch_unwind()
        .await
    {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => Outcome::Retry(format!("internal error: {}", e.chain())),
        Err(_) => Outcome::Retry("panicked".into()),
    }
}

async fn process(
    generator: &Generator,
    message: &GenerationMessage,
    deadline: Instant,
) -> Result<Outcome> {
    let db_started = Instant::now();
    let claim = transitions::claim(
        generator.ddb(),
        generator.table(),
        &message.user_id,
        &message.session_id,
        generator.lease_ms,
    )
    .await?;
    let session = match claim {
        Claim::Claimed(session) => session,
        Claim::Finished => return Ok(Outcome::Done),
        Claim::Busy => return Ok(Outcome::Retry("another delivery holds the session".into())),
    };
    let mut timing = Timing {
        database_ms: db_started.elapsed().as_millis() as i64,
        queue_wait_ms: session.claimed_at_ms.unwrap_or_default() - session.created_at_ms,
        ..Timing::default()
    };
    match &session.request {
        GenerationRequest::Image(request) => {
            run_images(generator, &session, request, deadline, &mut timing).await
        }
        GenerationRequest::Video(request) => run_video(generator, &session, request).await,
    }
}

/// One image's fate.
enum Image {
    Delivered(ImageResult),
    /// Withheld by the content filter, with the provider's code.
    Withheld(String),
    Refused(ProviderError),
}

/// What became of the provider calls of a session.
enum Answers {
    /// Every call answered for good: each image's fate, in order.
    Final(Vec<Image>),
    /// A call failed in a way worth retrying: the whole session is retried.
    Retry(ProviderError),
}

async fn run_images(
    generator: &Generator,
    session: &Session,
    request: &ImageRequest,
    deadline: Instant,
    timing: &mut Timing,
) -> Result<Outcome> {
    let provider_started = Instant::now();
    let answers = generate(generator, request).await;
    generator.panic_if_asked(&request.prompt);
    timing.provider_ms = provider_started.elapsed().as_millis() as i64;
    let images = match answers {
        Answers::Final(images) => images,
        Answers::Retry(e) => return hand_back(generator, session, format!("provider: {e}")).await,
    };
    let delivered: Vec<&ImageResult> = images
        .iter()
        .filter_map(|i| match i {
            Image::Delivered(r) => Some(r),
            _ => None,
        })
        .collect();
    if delivered.is_empty() {
        return fail(generator, session, nothing_delivered(&images)).await;
    }
    // The copies must end in time for the final transaction; with no time left the session
    // goes back to the queue rather than being cut off half copied by the function's timeout.
    let within = deadline
        .saturating_duration_since(Instant::now())
        .saturating_sub(storage::SETTLE_MARGIN);
    if within.is_zero() {
        return hand_back(
            generator,
            session,
            "no time left to copy the outputs".into(),
        )
        .await;
    }
    let transfer_started = Instant::now();
    let copies = delivered.iter().enumerate().map(|(index, result)| {
        storage::copy_output(
            &generator.app,
            &generator.provider,
            session,
            index as u32,
            result,
            within,
        )
    });
    let outputs: std::result::Result<Vec<Output>, ProviderError> =
        futures::future::join_all(copies)
            .await
            .into_iter()
            .collect();
    timing.transfer_ms = transfer_started.elapsed().as_millis() as i64;
    match outputs {
        Ok(outputs) => complete(generator, session, request, &images, outputs, timing).await,
        Err(e) if e.kind == FailureKind::Retryable => {
            hand_back(generator, session, format!("copy: {e}")).await
        }
        Err(_) => fail(generator, session, outputs_unavailable()).await,
    }
}

/// Asks the provider for every image at once (bounded): four images take about as long as one.
async fn generate(generator: &Generator, request: &ImageRequest) -> Answers {
    let config = &generator.app.config;
    let model = match request.model {
        ImageModel::Seedream40 => config.seedream_40_model.as_str(),
        ImageModel::Seedream45 => config.seedream_45_model.as_str(),
    };
    let calls = (0..request.n).map(|i| async move {
        let call = ImageGeneration {
            model,
            prompt: &request.prompt,
            size: &request.size.label,
            seed: image_seed(request.seed, i),
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
    });
    let mut answers: Vec<(u32, std::result::Result<Vec<ImageResult>, ProviderError>)> =
        futures::stream::iter(calls)
            .buffer_unordered(generator.image_concurrency.max(1))
            .collect()
            .await;
    answers.sort_by_key(|(i, _)| *i);
    let mut images = Vec::with_capacity(answers.len());
    for (_, answer) in answers {
        images.push(match answer {
            Ok(results) => match results.into_iter().next() {
                Some(ImageResult::Rejected(code)) => Image::Withheld(code),
                Some(delivered) => Image::Delivered(delivered),
                None => Image::Withheld("NoImageReturned".into()),
            },
            Err(e) if e.kind == FailureKind::Retryable => return Answers::Retry(e),
            Err(e) if e.is_content_policy() => Image::Withheld(e.code.clone()),
            Err(e) => Image::Refused(e),
        });
    }
    Answers::Final(images)
}

/// The seed of image `i`: consecutive seeds from the one asked, so the images differ; a
/// negative seed (random) stays as it is.
fn image_seed(seed: Option<i64>, i: u32) -> Option<i64> {
    seed.map(|s| {
        if s < 0 {
            s
        } else {
            (s + i64::from(i)) % 2_147_483_648
        }
    })
}

/// Why a session with no image delivered failed: the provider's refusal, else the filter.
fn nothing_delivered(images: &[Image]) -> SessionError {
    let refusal = images.iter().find_map(|i| match i {
        Image::Refused(e) => Some(e),
        _ => None,
    });
    match refusal {
        Some(e) => SessionError {
            code: e.reason().into(),
            message: e.user_message(),
        },
        None => SessionError {
            code: "content_policy".into(),
            message: "Every image was withheld by the provider's content filter. \
                      No credits were charged."
                .into(),
        },
    }
}

fn outputs_unavailable() -> SessionError {
    SessionError {
        code: "output_unavailable".into(),
        message: "The generated images could not be retrieved. No credits were charged.".into(),
    }
}

/// Completes the session with the images stored, charging only those.
async fn complete(
    generator: &Generator,
    session: &Session,
    request: &ImageRequest,
    images: &[Image],
    outputs: Vec<Output>,
    timing: &mut Timing,
) -> Result<Outcome> {
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
            "{withheld} of {} images were withheld by the provider's content filter; \
             only the {} delivered were charged.",
            request.n,
            outputs.len()
        )
    });
    let captured = pricing::credits_per_image(request.size.class) * outputs.len() as i64;
    timing.total_ms = clock::now_ms() - session.created_at_ms;
    let completion = Completion {
        captured,
        outputs,
        note,
        timing: timing.clone(),
    };
    let finished =
        transitions::complete_with_capture(generator.ddb(), generator.table(), session, completion)
            .await;
    finish_or_hand_back(generator, session, finished).await
}

/// Creates the video's Seedance task and records it. A create whose answer was lost (a
/// timeout, a 5xx, a crash before the record) may have made a task all the same: the intent
/// recorded before the first create tells a later delivery to look for it, by the seed that
/// marks the session's tasks, and adopt it rather than pay for a second one.
async fn run_video(
    generator: &Generator,
    session: &Session,
    request: &VideoRequest,
) -> Result<Outcome> {
    let task = video_task(&generator.app.config, session, request);
    if let Some(intent_ms) = session.task_intent_at_ms {
        match generator
            .provider
            .find_task(task.model, task.seed, intent_ms / 1000)
            .await
        {
            Ok(Some(found)) => {
                tracing::warn!(task = %found.id, "adopting the task an earlier create made");
                return record_task(generator, session, &found.id).await;
            }
            Ok(None) => {}
            Err(e) => return hand_back(generator, session, format!("provider: {e}")).await,
        }
    }
    if !transitions::intend_task(generator.ddb(), generator.table(), session).await? {
        return Ok(Outcome::Done);
    }
    let started = Instant::now();
    let created = generator.provider.create_task(&task).await;
    metrics::provider_call(
        "task_create",
        started.elapsed(),
        created.as_ref().err().map(|e| e.code.as_str()),
    );
    match created {
        Ok(task_id) => record_task(generator, session, &task_id).await,
        Err(e) if e.kind == FailureKind::Retryable => {
            hand_back(generator, session, format!("provider: {e}")).await
        }
        Err(e) => {
            let error = SessionError {
                code: e.reason().into(),
                message: e.user_message(),
            };
            fail(generator, session, error).await
        }
    }
}

/// The Seedance task of a video session.
fn video_task<'a>(
    config: &'a Config,
    session: &Session,
    request: &'a VideoRequest,
) -> VideoTask<'a> {
    let model = match request.model {
        VideoModel::SeedancePro => config.seedance_pro_model.as_str(),
        VideoModel::SeedanceLite => config.seedance_lite_model.as_str(),
    };
    VideoTask {
        model,
        prompt: &request.prompt,
        resolution: request.resolution.as_str(),
        ratio: &request.ratio,
        duration: request.duration,
        first_frame: request.first_frame.as_deref(),
        seed: task_seed(&session.session_id),
    }
}

/// The seed of a session's video tasks, the same at every delivery: the mark by which a task
/// whose create answer was lost is found again.
pub fn task_seed(session_id: &str) -> u32 {
    let digest = Sha256::digest(session_id.as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// Records the task on the session, which the sweeper then checks. When the write fails, the
/// session goes back to the queue (the next delivery finds the task by its intent); when this
/// delivery lost the session to another, the task is cancelled unless that one adopted it.
async fn record_task(generator: &Generator, session: &Session, task_id: &str) -> Result<Outcome> {
    let first_check_at_ms = clock::now_ms() + generator.first_check_ms;
    let recorded = transitions::start_rendering(
        generator.ddb(),
        generator.table(),
        session,
        task_id,
        first_check_at_ms,
    )
    .await;
    match recorded {
        Ok(true) => tracing::info!(task = %task_id, "video task created; rendering"),
        Ok(false) => cancel_unless_adopted(generator, session, task_id).await,
        Err(e) => {
            return hand_back(
                generator,
                session,
                format!("record the task: {}", e.chain()),
            )
            .await
        }
    }
    Ok(Outcome::Done)
}

/// Cancels a task this delivery made for a session it lost, unless the delivery that took the
/// session over adopted it.
async fn cancel_unless_adopted(generator: &Generator, session: &Session, task_id: &str) {
    let now = sessions::get(
        generator.ddb(),
        generator.table(),
        &session.user_id,
        &session.session_id,
    )
    .await;
    if let Ok(Some(now)) = &now {
        if now.provider_task_id.as_deref() == Some(task_id) {
            return;
        }
    }
    tracing::warn!(task = %task_id, "lost the session before recording the task; cancelling it");
    let _ = generator.provider.delete_task(task_id).await;
}

/// Hands the session back and leaves the record for redelivery.
async fn hand_back(generator: &Generator, session: &Session, reason: String) -> Result<Outcome> {
    transitions::hand_back(generator.ddb(), generator.table(), session, &reason).await;
    Ok(Outcome::Retry(reason))
}

/// Fails the session, releases its credits and acknowledges the record.
async fn fail(generator: &Generator, session: &Session, error: SessionError) -> Result<Outcome> {
    let finished =
        transitions::fail_with_release(generator.ddb(), generator.table(), session, error).await;
    finish_or_hand_back(generator, session, finished).await
}

/// Acknowledges a record whose session ended (here or elsewhere); when the final transaction
/// failed, the session goes back to the queue at once, holding its credits, and the record is
/// redelivered: acknowledging it would leave the session open until the hold timeout.
async fn finish_or_hand_back(
    generator: &Generator,
    session: &Session,
    finished: Result<bool>,
) -> Result<Outcome> {
    match finished {
        Ok(_) => Ok(Outcome::Done),
        Err(e) => hand_back(generator, session, format!("finish: {}", e.chain())).await,
    }
}
