//! A load-test tool for the generation API that replaces the old k6 scripts.
//!
//! Layout, in the order a run goes through it:
//! - [`cli`]: the command line, turned into a [`Plan`] (presets, the local stack's state file).
//! - [`stages`]: durations, k6 stages, presets, think time, the open model's arrival schedule.
//! - [`users`]: test users' tokens (minted, from a file, or one) and seeding their credits.
//! - [`api`]: the HTTP client. [`classify`]: what an answer counts as.
//! - `scenario`: one iteration of the old script, and the session poller (end-to-end latency).
//! - `executor`: the closed model (VUs + think time) and the open model (arrival rate,
//!   latency from the intended send time, bounded in-flight).
//! - [`metrics`]: the recorder (HDR histograms, counters, the per-second timeline).
//! - [`summary`], [`threshold`], [`baseline`], [`report`]: what comes out: the JSON summary,
//!   k6-spelled thresholds, the comparison with a previous run, the HTML report. The
//!   aggregates they all read ([`aggregate`]: k6's metric shape and names) sit below them, so
//!   the summary depends on the thresholds and the baseline and neither depends back on it.
//!
//! Why tokio + HDR histograms rather than Goose: the open model needs each iteration to carry
//! its intended start time and be measured from it (Goose's coordinated-omission mitigation
//! back-fills synthetic samples in closed loops instead); end-to-end sessions are polled by
//! tasks that outlive the iteration that started them; and the k6 semantics (stages, thresholds,
//! check names, metric names) are a few hundred lines on tokio, with arbitrary percentiles from
//! the histograms.

pub mod aggregate;
pub mod api;
pub mod baseline;
pub mod classify;
pub mod cli;
mod executor;
pub mod metrics;
mod progress;
pub mod report;
mod scenario;
pub mod stages;
pub mod summary;
pub mod threshold;
pub mod users;

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::time::Instant;

pub use scenario::{PollPolicy, Scenario, PROMPTS};
pub use summary::Summary;

use crate::api::Api;
use crate::classify::Answer;
use crate::metrics::Recorder;
use crate::stages::{format_duration, Profile, Think};
use crate::summary::RunInfo;
use crate::threshold::Threshold;
use crate::users::{Minter, TestUser};

/// The longest load a run may plan without `--i-know`.
pub const MAX_PLANNED: Duration = Duration::from_secs(2 * 3600);

/// k6's exit code for breached thresholds.
pub const EXIT_THRESHOLDS: u8 = 99;

/// How the load is driven.
#[derive(Clone, Debug, PartialEq)]
pub enum Load {
    /// VUs following stages, with think time between iterations.
    Closed {
        /// VUs over time.
        profile: Profile,
        /// Pause between a VU's iterations.
        think: Think,
    },
    /// Iterations started on a schedule (iterations per second over time).
    Open {
        /// Iterations per second over time.
        profile: Profile,
        /// Most iterations in flight at once.
        max_inflight: usize,
    },
}

impl Load {
    /// The load profile.
    pub fn profile(&self) -> &Profile {
        match self {
            Self::Closed { profile, .. } | Self::Open { profile, .. } => profile,
        }
    }
}

/// Where the test users' tokens come from.
#[derive(Clone, Debug)]
pub enum Identity {
    /// Minted with an HS256 key for `users` users named `{prefix}{i}`.
    Mint {
        /// The key and claims.
        minter: Minter,
        /// How many users.
        users: usize,
        /// User id prefix.
        prefix: String,
    },
    /// Given tokens (a token file, or `--token`).
    Tokens(Vec<TestUser>),
}

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The API (no trailing slash needed).
    pub base_url: String,
    /// The load.
    pub load: Load,
    /// The preset the load came from, for the record.
    pub preset: Option<String>,
    /// The users.
    pub identity: Identity,
    /// All load from the first user only.
    pub hot_user: bool,
    /// A token in the admin group, for seeding (minted when the key is known).
    pub admin_token: Option<String>,
    /// Credits granted to each user before the run (`None`: no seeding).
    pub seed_credits: Option<u64>,
    /// What each iteration does.
    pub scenario: Scenario,
    /// Thresholds checked at the end.
    pub thresholds: Vec<Threshold>,
    /// Per-request timeout.
    pub http_timeout: Duration,
    /// How long in-flight iterations may finish after the load ends.
    pub graceful_stop: Duration,
    /// Print the live progress line on stderr.
    pub progress: bool,
    /// Seed of the random choices (prompts, think time, video share).
    pub seed: u64,
    /// Names this run's users, client keys and idempotency keys.
    pub run_id: String,
    /// Allow a planned load longer than [`MAX_PLANNED`].
    pub allow_long: bool,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The plan is invalid.
    #[error("{0}")]
    Config(String),
    /// The API did not answer.
    #[error("the API at {url} is unreachable ({why}); is the stack up?")]
    Unreachable {
        /// The base URL.
        url: String,
        /// What went wrong.
        why: String,
    },
    /// The API refused the test users' tokens.
    #[error("{0}")]
    Auth(String),
    /// Seeding credits failed.
    #[error("seeding credits failed: {0}")]
    Seed(String),
}

impl Plan {
    /// Checks bounds: the planned load (at most 2 h without `allow_long`), ratios and counts.
    pub fn validate(&self) -> Result<(), RunError> {
        let bad = |m: String| Err(RunError::Config(m));
        let planned = self.load.profile().total();
        if planned > MAX_PLANNED && !self.allow_long {
            return bad(format!(
                "the planned load lasts {}, over the {} cap: pass --i-know to run it anyway",
                format_duration(planned),
                format_duration(MAX_PLANNED)
            ));
        }
        if self.load.profile().peak() <= 0.0 {
            return bad("the load profile never rises above zero".into());
        }
        if !(0.0..=1.0).contains(&self.scenario.video_ratio) {
            return bad("--video-ratio must be within 0..1".into());
        }
        if !(1..=15).contains(&self.scenario.images) {
            return bad("--images must be within 1..15".into());
        }
        if let Load::Open { max_inflight, .. } = self.load {
            if max_inflight == 0 {
                return bad("--max-inflight must be at least 1".into());
            }
        }
        match &self.identity {
            Identity::Mint { users: 0, .. } => bad("--users must be at least 1".into()),
            Identity::Tokens(t) if t.is_empty() => bad("no tokens given".into()),
            _ => Ok(()),
        }
    }

    /// The longest a run can take: load, graceful stop, and the session drain.
    pub fn hard_cap(&self) -> Duration {
        self.load.profile().total()
            + self.graceful_stop
            + self.scenario.e2e.map(|p| p.timeout).unwrap_or_default()
            + Duration::from_secs(30)
    }
}

/// A run id: base-36 milliseconds since the epoch (short, sortable, valid in client keys).
pub fn new_run_id() -> String {
    let mut n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    let mut out = Vec::new();
    while n > 0 {
        out.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize]);
        n /= 36;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// Runs the plan: preflight, users and seeding, the load, the session drain; returns the
/// summary with thresholds evaluated. `interrupt` (Ctrl-C) ends the load early; the summary
/// still covers what ran.
pub async fn run(
    plan: Plan,
    interrupt: impl Future<Output = ()> + Send + 'static,
) -> Result<Summary, RunError> {
    plan.validate()?;
    let api = Api::new(&plan.base_url, plan.http_timeout).map_err(RunError::Config)?;
    let token_ttl = plan.hard_cap() + Duration::from_secs(3600);

    let users = test_users(&plan, token_ttl);
    preflight(&api, &plan.base_url, &users[0]).await?;

    let mut seeded = 0;
    if let (Some(amount), Some(admin)) = (plan.seed_credits, plan.admin_token.as_deref()) {
        seeded = users::seed(&api, admin, &users, amount, &plan.run_id)
            .await
            .map_err(RunError::Seed)?;
    }

    let open_model = matches!(plan.load, Load::Open { .. });
    let start = Instant::now();
    let started_at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    let recorder = Arc::new(Recorder::new(start.into_std(), open_model));
    let (hard_stop_tx, hard_stop) = watch::channel(false);
    let (stop_tx, stop) = watch::channel(false);
    let interrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (stop_tx, interrupted) = (stop_tx.clone(), interrupted.clone());
        tokio::spawn(async move {
            interrupt.await;
            interrupted.store(true, std::sync::atomic::Ordering::Relaxed);
            stop_tx.send_replace(true);
        });
    }
    let world = Arc::new(scenario::World {
        api,
        recorder: recorder.clone(),
        scenario: plan.scenario.clone(),
        users: users.clone(),
        run_id: plan.run_id.clone(),
        hard_stop,
        sequence: AtomicU64::new(0),
    });
    let planned = plan.load.profile().total();
    let ticker = progress::spawn(recorder.clone(), plan.progress, planned, open_model);

    // The load, bounded by the plan's hard cap whatever happens.
    let load = drive(
        world.clone(),
        start,
        plan.load.clone(),
        (plan.graceful_stop, plan.seed),
        stop.clone(),
    );
    let cap = plan.hard_cap();
    let _ = tokio::time::timeout(cap, load).await;
    let load_s = start.elapsed().as_secs_f64();

    // Drain: let pollers see their sessions finish, up to the e2e timeout (not after Ctrl-C).
    let was_interrupted = interrupted.load(std::sync::atomic::Ordering::Relaxed);
    if !was_interrupted {
        let drain_for = plan
            .scenario
            .e2e
            .map(|p| p.timeout)
            .unwrap_or_default()
            .min(cap.saturating_sub(start.elapsed()));
        let _ = tokio::time::timeout(drain_for, drain(&recorder, stop.clone())).await;
    }
    hard_stop_tx.send_replace(true);
    let wait_pollers = async {
        while recorder.polling() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), wait_pollers).await;
    ticker.finish().await;
    let total_s = start.elapsed().as_secs_f64();

    let mut summary = summarize(
        &plan,
        &recorder,
        SummaryInputs {
            started_at_ms,
            load_s,
            drain_s: total_s - load_s,
            users: users.len(),
            seeded,
            interrupted: interrupted.load(std::sync::atomic::Ordering::Relaxed),
        },
    );
    summary.passed = summary.thresholds.iter().all(|t| t.ok);
    Ok(summary)
}

/// The test users: minted, or given; the hot user takes all the load.
fn test_users(plan: &Plan, token_ttl: Duration) -> Vec<TestUser> {
    let mut users = match &plan.identity {
        Identity::Mint {
            minter,
            users,
            prefix,
        } => minter.users(prefix, *users, token_ttl),
        Identity::Tokens(users) => users.clone(),
    };
    if plan.hot_user {
        users.truncate(1);
    }
    users
}

/// Preflight: the API answers, and takes the first user's token.
async fn preflight(api: &Api, base_url: &str, first: &TestUser) -> Result<(), RunError> {
    let health = api.get("/health", None).await;
    if matches!(health.answer, Answer::Timeout | Answer::Transport) {
        return Err(RunError::Unreachable {
            url: base_url.to_owned(),
            why: health.answer.label(),
        });
    }
    let probe = api.get("/api/credits/balance", Some(&first.token)).await;
    if let Answer::Status(code @ (401 | 403)) = probe.answer {
        return Err(RunError::Auth(format!(
            "the API answered {code} to the first test user's token ({}): check --jwt-key / \
             --jwt-iss / --jwt-aud, or the token file",
            api::error_text(probe.body.as_ref())
        )));
    }
    Ok(())
}

/// The load of the plan's model, until its profile ends or `stop`.
async fn drive(
    world: Arc<scenario::World>,
    start: Instant,
    load: Load,
    (graceful_stop, seed): (Duration, u64),
    stop: watch::Receiver<bool>,
) {
    match load {
        Load::Closed { profile, think } => {
            executor::closed(world, start, profile, think, graceful_stop, seed, stop).await
        }
        Load::Open {
            profile,
            max_inflight,
        } => {
            executor::open(
                world,
                start,
                profile,
                max_inflight,
                graceful_stop,
                seed,
                stop,
            )
            .await
        }
    }
}

/// Returns when no session is polled any more, or on `stop`.
async fn drain(recorder: &Recorder, mut stop: watch::Receiver<bool>) {
    while recorder.polling() > 0 && !*stop.borrow_and_update() {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = stop.changed() => {}
        }
    }
}

struct SummaryInputs {
    started_at_ms: u64,
    load_s: f64,
    drain_s: f64,
    users: usize,
    seeded: usize,
    interrupted: bool,
}

fn summarize(plan: &Plan, recorder: &Recorder, inputs: SummaryInputs) -> Summary {
    let percentiles = threshold::wanted_percentiles(&plan.thresholds);
    let metrics = recorder.metrics(inputs.load_s, &percentiles);
    let thresholds = plan
        .thresholds
        .iter()
        .map(|t| t.evaluate(&metrics))
        .collect();
    let (mode, think, max_inflight) = match &plan.load {
        Load::Closed { think, .. } => ("closed", Some(think.to_string()), None),
        Load::Open { max_inflight, .. } => ("open", None, Some(*max_inflight)),
    };
    let stages = match &plan.load {
        Load::Closed { profile, .. } => profile.to_string(),
        Load::Open { profile, .. } => {
            let mut s = format!("start {}/s: ", profile.start);
            s.push_str(
                &profile
                    .stages
                    .iter()
                    .map(|st| format!("{}:{}/s", format_duration(st.duration), st.target))
                    .collect::<Vec<_>>()
                    .join(","),
            );
            s
        }
    };
    let mut notes = Vec::new();
    if inputs.interrupted {
        notes.push("the run was interrupted before its profile ended".to_string());
    }
    let value = |m: &str, k: &str| metrics.get(m).and_then(|m| m.values.get(k)).copied();
    if let Some(dropped) = value("dropped_iterations", "count").filter(|d| *d > 0.0) {
        notes.push(format!(
            "{dropped} scheduled iterations were never sent: all {} in-flight slots stayed busy \
             until the schedule ended (raise --max-inflight, or the system is saturated)",
            max_inflight.unwrap_or_default()
        ));
    }
    if let (Some((lag_p95, lag_max)), Some(p95)) =
        (recorder.schedule_lag(), value("http_req_duration", "p(95)"))
    {
        if lag_p95 > 5.0 && lag_p95 > 0.1 * p95 {
            notes.push(format!(
                "iterations waited for a free in-flight slot (schedule lag p95 {lag_p95:.1} ms, \
                 max {lag_max:.1} ms); that wait is inside http_req_duration, measured from the \
                 intended send time"
            ));
        }
    }
    let timed_out = value("sessions_timed_out", "count").filter(|n| *n > 0.0);
    if let (Some(timed_out), true) = (timed_out, inputs.interrupted) {
        notes.push(format!(
            "{timed_out} sessions were still being polled when the run was interrupted \
             (counted in sessions_timed_out)"
        ));
    } else if let Some(timed_out) = timed_out {
        notes.push(format!(
            "{timed_out} sessions had not finished within the e2e timeout of {}",
            plan.scenario
                .e2e
                .map(|p| format_duration(p.timeout))
                .unwrap_or_default()
        ));
    }
    if plan.seed_credits.is_some() && plan.admin_token.is_none() {
        notes.push("no admin token: the users were not seeded with credits".to_string());
    }
    Summary {
        tool: "loadtest".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        started_at_ms: inputs.started_at_ms,
        duration_s: inputs.load_s,
        drain_s: inputs.drain_s,
        base_url: plan.base_url.clone(),
        config: RunInfo {
            mode: mode.into(),
            preset: plan.preset.clone(),
            stages,
            think,
            max_inflight,
            users: inputs.users,
            hot_user: plan.hot_user,
            video_ratio: plan.scenario.video_ratio,
            images: plan.scenario.images,
            e2e: plan.scenario.e2e.is_some(),
            e2e_timeout_s: plan
                .scenario
                .e2e
                .map(|p| p.timeout.as_secs_f64())
                .unwrap_or_default(),
            seeded_users: inputs.seeded,
            seed_credits: plan.seed_credits.unwrap_or_default(),
        },
        endpoints: recorder.endpoints(inputs.load_s),
        errors: recorder.errors(),
        checks: recorder.checks(),
        thresholds,
        distributions: recorder.distributions(),
        timeline: recorder.timeline(),
        notes,
        comparison: Vec::new(),
        passed: false,
        metrics,
    }
}
