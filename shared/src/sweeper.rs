//! The sweeper: runs on a schedule and repairs whatever got stuck, within its deadline.
//!
//! 1. Rendering videos due for a check (`due` index, partition `DUE`): one list call with
//!    `filter.task_ids` answers for up to 500 tasks; bounded parallel GETs are the fallback.
//!    Succeeded → the video (and last frame) is copied into S3, the hold captured, the session
//!    completed. Failed / cancelled / expired → released, failed. Still running → next check
//!    with backoff; running past the maximum render time → cancelled, released, failed.
//! 2. Sessions stuck in `queued` (the enqueue's send failed, or a message was lost) are
//!    re-dispatched with `SendMessageBatch`, ten per call.
//! 3. Holds whose session has not finished within the hold timeout are released.
//! 4. Lots past their expiry are expired (`due` index, partition `EXPIRY`).
//!
//! Every step is conditional and idempotent, so two overlapping runs do no harm: a session ends
//! once (its update is conditioned on the status and attempt it was read with, in the same
//! transaction as the capture or release), and a hold ends once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use futures::StreamExt;

use crate::fault::{Context, Fault, Result};
use crate::ledger;
use crate::provider::{self, Task, TaskState};
use crate::queue::GenerationMessage;
use crate::sessions::transitions::{self, Completion};
use crate::sessions::{self, Output, Session, SessionError, Status, Timing};
use crate::table::{number, string, Item};
use crate::telemetry::metrics;
use crate::{clock, storage, AppState};

/// Tunables of the sweeper, from the environment.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Most task GETs in flight when the list endpoint cannot be used.
    pub get_concurrency: usize,
    /// Most sessions settled at once.
    pub settle_concurrency: usize,
    /// A render running longer than this is cancelled and refunded (ms).
    pub max_render_ms: i64,
    /// A session `queued` with no activity for this long is re-dispatched (ms).
    pub stuck_queued_ms: i64,
    /// A hold whose session has not finished within this is released (ms).
    pub hold_timeout_ms: i64,
    /// First and longest delay between two checks of a rendering task (ms).
    pub check_backoff_ms: (i64, i64),
    /// Time kept in reserve before the deadline: no new step starts past it.
    pub safety_margin: Duration,
    /// Most items taken from an index per step and run.
    pub batch_limit: i32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            get_concurrency: 16,
            settle_concurrency: 16,
            max_render_ms: 30 * 60_000,
            // Above the generation queue's visibility (360 s): a session handed back waits
            // for its redelivery, which is activity, and is not re-sent on top of it.
            stuck_queued_ms: 10 * 60_000,
            hold_timeout_ms: 2 * 60 * 60_000,
            check_backoff_ms: (10_000, 120_000),
            // Longer than one provider call (10 s timeout) plus a copy, so no step that starts
            // before the margin can run past the deadline.
            safety_margin: Duration::from_secs(15),
            batch_limit: 2_000,
        }
    }
}

impl Settings {
    /// Reads the settings from the environment (defaults where unset).
    pub fn from_env() -> std::result::Result<Self, crate::config::ConfigError> {
        use crate::config::env_number;
        let d = Self::default();
        Ok(Self {
            get_concurrency: env_number("SWEEP_GET_CONCURRENCY", d.get_concurrency)?,
            settle_concurrency: env_number("SWEEP_SETTLE_CONCURRENCY", d.settle_concurrency)?,
            max_render_ms: env_number("MAX_RENDER_MS", d.max_render_ms)?,
            stuck_queued_ms: env_number("STUCK_QUEUED_MS", d.stuck_queued_ms)?,
            hold_timeout_ms: env_number("HOLD_TIMEOUT_MS", d.hold_timeout_ms)?,
            check_backoff_ms: d.check_backoff_ms,
            safety_margin: Duration::from_millis(env_number("SWEEP_SAFETY_MARGIN_MS", 15_000)?),
            batch_limit: env_number("SWEEP_BATCH_LIMIT", d.batch_limit)?,
        })
    }
}

/// Everything the sweeper needs, built once per cold start.
#[derive(Clone, Debug)]
pub struct Sweeper {
    /// Configuration and AWS clients.
    pub app: AppState,
    /// The provider client.
    pub provider: provider::Client,
    /// Tunables.
    pub settings: Settings,
}

impl Sweeper {
    /// Reads the configuration and the provider key, and builds every client.
    pub async fn from_env() -> std::result::Result<Self, crate::config::ConfigError> {
        let (app, provider) = AppState::from_env_with_provider().await?;
        Ok(Self {
            app,
            provider,
            settings: Settings::from_env()?,
        })
    }

    fn ddb(&self) -> &aws_sdk_dynamodb::Client {
        &self.app.aws.dynamodb
    }

    fn table(&self) -> &str {
        &self.app.config.table
    }
}

/// What a run did.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    /// Rendering sessions whose task status was checked.
    pub tasks_checked: u64,
    /// Provider list calls.
    pub list_calls: u64,
    /// Provider GET calls (fallback).
    pub get_calls: u64,
    /// Provider cancel calls.
    pub cancel_calls: u64,
    /// Wall time spent asking the provider for task statuses (ms).
    pub status_check_ms: u64,
    /// Videos completed.
    pub completed: u64,
    /// Sessions failed (task failed, render timeout, hold timeout).
    pub failed: u64,
    /// Still rendering, checked again later.
    pub still_rendering: u64,
    /// Stuck sessions re-dispatched.
    pub redispatched: u64,
    /// Holds released by the hold timeout.
    pub holds_released: u64,
    /// Accounts whose lots were expired.
    pub lots_expired: u64,
    /// Credits lost to expiry.
    pub credits_expired: i64,
    /// Accounts whose expiry failed (logged; the next run tries them again).
    pub expiry_failures: u64,
    /// Steps left for the next run because the deadline came near.
    pub stopped_early: bool,
}

impl Report {
    /// Provider calls of every kind.
    pub fn provider_calls(&self) -> u64 {
        self.list_calls + self.get_calls + self.cancel_calls
    }
}

/// What the concurrent settles of one step did, added to the [`Report`] at the end.
#[derive(Default)]
struct Counters {
    checked: AtomicU64,
    completed: AtomicU64,
    failed: AtomicU64,
    rendering: AtomicU64,
    cancels: AtomicU64,
    skipped: AtomicU64,
}

impl Counters {
    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn add_to(self, report: &mut Report) {
        report.tasks_checked += self.checked.into_inner();
        report.completed += self.completed.into_inner();
        report.failed += self.failed.into_inner();
        report.still_rendering += self.rendering.into_inner();
        report.cancel_calls += self.cancels.into_inner();
        if self.skipped.into_inner() > 0 {
            report.stopped_early = true;
        }
    }
}

/// One run of the sweeper; no new step starts past `deadline` less the safety margin.
pub async fn sweep(sweeper: &Sweeper, deadline: Instant) -> Report {
    let stop_at = deadline
        .checked_sub(sweeper.settings.safety_margin)
        .unwrap_or_else(Instant::now);
    let mut report = Report::default();
    let steps: [(&str, Step); 4] = [
        ("render checks", Step::Renders),
        ("stuck sessions", Step::Stuck),
        ("hold timeouts", Step::Holds),
        ("lot expiry", Step::Lots),
    ];
    for (name, step) in steps {
        if Instant::now() >= stop_at {
            report.stopped_early = true;
            break;
        }
        let result = match step {
            Step::Renders => check_renders(sweeper, stop_at, &mut report).await,
            Step::Stuck => redispatch_stuck(sweeper, stop_at, &mut report).await,
            Step::Holds => release_stale_holds(sweeper, stop_at, &mut report).await,
            Step::Lots => expire_lots(sweeper, stop_at, &mut report).await,
        };
        if let Err(e) = result {
            tracing::error!(step = name, error = %e.chain(), "sweeper step failed; the next run retries it");
        }
    }
    metrics::counters(
        "sweeper",
        &[
            ("TasksChecked", report.tasks_checked as f64),
            ("ProviderCalls", report.provider_calls() as f64),
            (
                "SessionsRepaired",
                (report.completed + report.failed + report.redispatched) as f64,
            ),
            ("HoldsReleased", report.holds_released as f64),
            ("LotsExpired", report.lots_expired as f64),
        ],
    );
    let idle = report.tasks_checked == 0
        && report.redispatched == 0
        && report.holds_released == 0
        && report.lots_expired == 0
        && !report.stopped_early;
    if idle {
        tracing::debug!("sweep finished: nothing was due");
    } else {
        tracing::info!(report = ?report, "sweep finished");
    }
    report
}

#[derive(Clone, Copy)]
enum Step {
    Renders,
    Stuck,
    Holds,
    Lots,
}

/// Sessions of an index partition whose sort key is at most `until`, oldest first; with
/// `idle_in`, only those in that status whose last activity is at most `until` too.
async fn due_sessions(
    app: &AppState,
    index: &str,
    pk: (&str, &str),
    until: i64,
    limit: i32,
    idle_in: Option<Status>,
) -> Result<Vec<Session>> {
    let (pk_name, pk_value) = pk;
    let sk_name = if index == "due" { "due_at" } else { "open_at" };
    let mut sessions = Vec::new();
    let mut start: Option<Item> = None;
    loop {
        let mut query = app
            .aws
            .dynamodb
            .query()
            .table_name(&app.config.table)
            .index_name(index)
            .key_condition_expression(format!("{pk_name} = :pk AND {sk_name} <= :until"))
            .expression_attribute_values(":pk", string(pk_value))
            .expression_attribute_values(":until", number(until))
            .set_exclusive_start_key(start)
            .limit(limit.min(1000));
        if let Some(status) = idle_in {
            query = query
                .filter_expression("#status = :status AND updated_at <= :until")
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":status", serde_dynamo::to_attribute_value(status)?);
        }
        let output = query.send().await?;
        for item in output.items.unwrap_or_default() {
            sessions.push(serde_dynamo::from_item(item)?);
        }
        match output.last_evaluated_key {
            Some(key) if (sessions.len() as i32) < limit => start = Some(key),
            _ => {
                sessions.truncate(limit as usize);
                return Ok(sessions);
            }
        }
    }
}

async fn check_renders(sweeper: &Sweeper, stop_at: Instant, report: &mut Report) -> Result<()> {
    let due = due_sessions(
        &sweeper.app,
        "due",
        ("due_pk", sessions::DUE_PK),
        clock::now_ms(),
        sweeper.settings.batch_limit,
        None,
    )
    .await?;
    let due: Vec<Session> = due
        .into_iter()
        .filter(|s| s.status == Status::Rendering && s.provider_task_id.is_some())
        .collect();
    let counters = Counters::default();
    // Copies may run past `stop_at`, into the safety margin, but must leave time to settle.
    let copy_until = (stop_at + sweeper.settings.safety_margin)
        .checked_sub(storage::SETTLE_MARGIN)
        .unwrap_or(stop_at);
    for chunk in due.chunks(provider::LIST_PAGE) {
        if Instant::now() >= stop_at {
            report.stopped_early = true;
            break;
        }
        let tasks = task_statuses(sweeper, chunk, stop_at, report).await;
        futures::stream::iter(chunk)
            .for_each_concurrent(sweeper.settings.settle_concurrency.max(1), |session| {
                let task = session.provider_task_id.as_ref().and_then(|id| tasks.get(id));
                let counters = &counters;
                async move {
                    let Some(task) = task else { return };
                    if Instant::now() >= stop_at {
                        counters.skipped.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    counters.checked.fetch_add(1, Ordering::Relaxed);
                    match settle_render(sweeper, session, task, copy_until, counters).await {
                        Ok(Render::Completed) => Counters::count(&counters.completed),
                        Ok(Render::Failed) => Counters::count(&counters.failed),
                        Ok(Render::Rendering) => Counters::count(&counters.rendering),
                        // Another run moved the session first.
                        Ok(Render::Unchanged) => {}
                        Err(e) => {
                            tracing::warn!(session = %session.session_id, error = %e.chain(), "render step failed; next run")
                        }
                    }
                }
            })
            .await;
    }
    counters.add_to(report);
    Ok(())
}

/// The provider's view of the tasks of `sessions`: one list call, then bounded parallel GETs
/// for the tasks it did not answer for (all of them, when it failed). Past `stop_at` no new
/// call starts: those tasks wait for the next run.
async fn task_statuses(
    sweeper: &Sweeper,
    sessions: &[Session],
    stop_at: Instant,
    report: &mut Report,
) -> HashMap<String, Task> {
    let status_started = Instant::now();
    let ids: Vec<String> = sessions
        .iter()
        .filter_map(|s| s.provider_task_id.clone())
        .collect();
    let mut tasks: HashMap<String, Task> = HashMap::new();
    report.list_calls += 1;
    match sweeper.provider.list_tasks(&ids).await {
        Ok(listed) => tasks.extend(listed.into_iter().map(|t| (t.id.clone(), t))),
        Err(e) => tracing::warn!(error = %e, "task list failed; falling back to GETs"),
    }
    let missing: Vec<String> = ids
        .iter()
        .filter(|id| !tasks.contains_key(*id))
        .cloned()
        .collect();
    report.get_calls += missing.len() as u64;
    let fetched: Vec<(
        String,
        Option<std::result::Result<Task, provider::ProviderError>>,
    )> = futures::stream::iter(missing)
        .map(|id| async move {
            if Instant::now() >= stop_at {
                return (id, None);
            }
            let task = sweeper.provider.get_task(&id).await;
            (id, Some(task))
        })
        .buffer_unordered(sweeper.settings.get_concurrency.max(1))
        .collect()
        .await;
    report.status_check_ms += status_started.elapsed().as_millis() as u64;
    for (id, task) in fetched {
        match task {
            Some(Ok(task)) => {
                tasks.insert(id, task);
            }
            Some(Err(e)) => {
                tracing::warn!(task = %id, error = %e, "task status unavailable; next run")
            }
            None => {
                report.get_calls -= 1;
                report.stopped_early = true;
            }
        }
    }
    tasks
}

/// What one render check did to its session.
enum Render {
    Completed,
    Failed,
    Rendering,
    Unchanged,
}

impl Render {
    fn failed_if(ended: bool) -> Self {
        if ended {
            Self::Failed
        } else {
            Self::Unchanged
        }
    }
}

/// Acts on one task's status: completes, fails, cancels or checks again later.
async fn settle_render(
    sweeper: &Sweeper,
    session: &Session,
    task: &Task,
    copy_until: Instant,
    counters: &Counters,
) -> Result<Render> {
    match task.state() {
        TaskState::Succeeded => complete_render(sweeper, session, task, copy_until).await,
        TaskState::Ended => {
            let error = match &task.error {
                Some(e) if provider::is_content_policy(&e.code) => SessionError {
                    code: "content_policy".into(),
                    message: "The video was refused by the provider's content policy. \
                              No credits were charged."
                        .into(),
                },
                _ => SessionError {
                    code: format!("render_{}", task.status),
                    message: format!("The video render {}. No credits were charged.", task.status),
                },
            };
            Ok(Render::failed_if(
                end_and_release(&sweeper.app, session, error).await?,
            ))
        }
        TaskState::Pending => still_rendering(sweeper, session, task, counters).await,
    }
}

/// Copies a finished video (and its last frame, when there is one) into S3 before
/// `copy_until`, then completes the session and captures its credits.
async fn complete_render(
    sweeper: &Sweeper,
    session: &Session,
    task: &Task,
    copy_until: Instant,
) -> Result<Render> {
    let app = &sweeper.app;
    let content = task
        .content
        .clone()
        .ok_or_else(|| Fault::new("succeeded task without content"))?;
    let video = content
        .video_url
        .ok_or_else(|| Fault::new("succeeded task without video"))?;
    let copy_within = copy_until.saturating_duration_since(Instant::now());
    let started = Instant::now();
    let mut outputs: Vec<Output> =
        vec![
            storage::copy_url(app, &sweeper.provider, session, 0, &video, copy_within)
                .await
                .context("copy the video")?,
        ];
    if let Some(frame) = content.last_frame_url {
        match storage::copy_url(app, &sweeper.provider, session, 1, &frame, copy_within).await {
            Ok(output) => outputs.push(output),
            Err(e) => {
                tracing::warn!(error = %e, "last frame unavailable; the video alone is delivered")
            }
        }
    }
    let claimed_at_ms = session.claimed_at_ms.unwrap_or(session.created_at_ms);
    let timing = Timing {
        queue_wait_ms: claimed_at_ms - session.created_at_ms,
        provider_ms: clock::now_ms() - claimed_at_ms,
        transfer_ms: started.elapsed().as_millis() as i64,
        database_ms: 0,
        total_ms: clock::now_ms() - session.created_at_ms,
    };
    let completion = Completion {
        captured: session.credits_reserved,
        outputs,
        note: None,
        timing,
    };
    let completed =
        transitions::complete_with_capture(sweeper.ddb(), sweeper.table(), session, completion)
            .await?;
    Ok(if completed {
        Render::Completed
    } else {
        Render::Unchanged
    })
}

/// A task still queued or running: cancelled past the longest render time, else checked again
/// later, backing off.
async fn still_rendering(
    sweeper: &Sweeper,
    session: &Session,
    task: &Task,
    counters: &Counters,
) -> Result<Render> {
    let running_for = clock::now_ms() - session.claimed_at_ms.unwrap_or(session.created_at_ms);
    if running_for > sweeper.settings.max_render_ms {
        counters.cancels.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = sweeper.provider.delete_task(&task.id).await {
            tracing::warn!(error = %e, "could not cancel the task (running tasks cannot be); refunding anyway");
        }
        let error = SessionError {
            code: "render_timeout".into(),
            message: "The video took too long to render and was cancelled. \
                      No credits were charged."
                .into(),
        };
        return Ok(Render::failed_if(
            end_and_release(&sweeper.app, session, error).await?,
        ));
    }
    let (first, longest) = sweeper.settings.check_backoff_ms;
    let delay = (first << session.checks.min(6)).min(longest);
    let next_at_ms = clock::now_ms() + delay;
    let scheduled =
        transitions::schedule_next_check(sweeper.ddb(), sweeper.table(), session, next_at_ms)
            .await?;
    Ok(if scheduled {
        Render::Rendering
    } else {
        Render::Unchanged
    })
}

/// Fails a session and releases its hold; whether this call ended it.
async fn end_and_release(app: &AppState, session: &Session, error: SessionError) -> Result<bool> {
    transitions::fail_with_release(&app.aws.dynamodb, &app.config.table, session, error).await
}

async fn redispatch_stuck(sweeper: &Sweeper, stop_at: Instant, report: &mut Report) -> Result<()> {
    let app = &sweeper.app;
    let now = clock::now_ms();
    let cutoff = now - sweeper.settings.stuck_queued_ms;
    let stuck = due_sessions(
        app,
        "open",
        ("open_pk", sessions::OPEN_PK),
        cutoff,
        sweeper.settings.batch_limit,
        Some(Status::Queued),
    )
    .await?;
    let mut claimed = Vec::new();
    for session in stuck {
        if Instant::now() >= stop_at {
            report.stopped_early = true;
            break;
        }
        let ddb = &app.aws.dynamodb;
        match transitions::claim_redispatch(ddb, &app.config.table, &session, now, cutoff).await {
            Ok(true) => claimed.push(session),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(session = %session.session_id, error = %e.chain(), "re-dispatch claim failed; next run")
            }
        }
    }
    for batch in claimed.chunks(10) {
        report.redispatched += send_batch(app, batch, now).await?;
    }
    Ok(())
}

/// Sends a generation message for each session (at most ten, one `SendMessageBatch`);
/// returns how many were sent.
async fn send_batch(app: &AppState, sessions: &[Session], now_ms: i64) -> Result<u64> {
    let mut entries = Vec::with_capacity(sessions.len());
    for (i, session) in sessions.iter().enumerate() {
        let message = GenerationMessage {
            session_id: session.session_id.clone(),
            user_id: session.user_id.clone(),
            attempt: session.attempt + 1,
            retries: session.retries,
            enqueued_at_ms: now_ms,
        };
        entries.push(
            SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(serde_json::to_string(&message)?)
                .build()?,
        );
    }
    let output = app
        .aws
        .sqs
        .send_message_batch()
        .queue_url(&app.config.queue_url)
        .set_entries(Some(entries))
        .send()
        .await
        .context("re-dispatch stuck sessions")?;
    if !output.failed.is_empty() {
        tracing::warn!(
            failed = output.failed.len(),
            "some re-dispatches failed; the next run retries them after the threshold"
        );
    }
    Ok(output.successful.len() as u64)
}

async fn release_stale_holds(
    sweeper: &Sweeper,
    stop_at: Instant,
    report: &mut Report,
) -> Result<()> {
    let app = &sweeper.app;
    let cutoff = clock::now_ms() - sweeper.settings.hold_timeout_ms;
    let stale = due_sessions(
        app,
        "open",
        ("open_pk", sessions::OPEN_PK),
        cutoff,
        sweeper.settings.batch_limit,
        None,
    )
    .await?;
    for session in stale.iter().filter(|s| !s.status.is_final()) {
        if Instant::now() >= stop_at {
            report.stopped_early = true;
            break;
        }
        let error = SessionError {
            code: "timed_out".into(),
            message: "The generation did not finish in time. No credits were charged.".into(),
        };
        // One session that cannot be settled now must not keep the others open.
        match end_and_release(app, session, error).await {
            Ok(true) => {
                report.holds_released += 1;
                report.failed += 1;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(session = %session.session_id, error = %e.chain(), "hold release failed; next run")
            }
        }
    }
    Ok(())
}

async fn expire_lots(sweeper: &Sweeper, stop_at: Instant, report: &mut Report) -> Result<()> {
    let app = &sweeper.app;
    let now = clock::now_ms();
    let users = ledger::users_with_expired_lots(
        &app.aws.dynamodb,
        &app.config.table,
        now,
        sweeper.settings.batch_limit,
    )
    .await?;
    for user in users {
        if Instant::now() >= stop_at {
            report.stopped_early = true;
            break;
        }
        // One account that cannot be expired must not keep the others from expiring.
        let now_secs = clock::ms_to_secs(now);
        match ledger::expire_due(&app.aws.dynamodb, &app.config.table, &user, now_secs).await {
            Ok(lost) => {
                report.lots_expired += 1;
                report.credits_expired += lost;
            }
            Err(e) => {
                report.expiry_failures += 1;
                tracing::error!(user = %user, error = %e.chain(), "lot expiry failed; next run");
            }
        }
    }
    Ok(())
}
