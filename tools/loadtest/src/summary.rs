//! The summary of a run: what `--summary-json` writes, what `--baseline` reads back, what the
//! HTML report draws, and the end-of-run text.
//!
//! `metrics` follows the shape of k6's JSON summary (`metrics.<name>.values["p(95)"]`), so a
//! summary exported by k6's `handleSummary` also works as a baseline.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

pub use crate::aggregate::{Metric, MetricKind, KNOWN_METRICS};
use crate::baseline::Change;
use crate::threshold::ThresholdResult;

/// Requests and latency of one route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EndpointSummary {
    /// `METHOD /route/{template}`.
    pub name: String,
    /// Requests sent.
    pub requests: u64,
    /// Requests per second over the run.
    pub rate: f64,
    /// Answers other than the route's success status (and no answer at all).
    pub failed: u64,
    /// Latency percentiles and max, milliseconds.
    pub p50: f64,
    /// 90th percentile, ms.
    pub p90: f64,
    /// 95th percentile, ms.
    pub p95: f64,
    /// 99th percentile, ms.
    pub p99: f64,
    /// Largest, ms.
    pub max: f64,
    /// Answers by status (`202`, `429`, `timeout`, `transport`).
    pub statuses: BTreeMap<String, u64>,
}

/// One named check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckSummary {
    /// What was checked.
    pub name: String,
    /// Times it held.
    pub passes: u64,
    /// Times it did not.
    pub fails: u64,
}

/// The generate answers by error class.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ErrorBreakdown {
    /// 402.
    pub credit_errors: u64,
    /// 429.
    pub rate_limited: u64,
    /// 5xx.
    pub provider_errors: u64,
    /// Everything else.
    pub other_errors: u64,
    /// Failed iterations / iterations.
    pub error_rate: f64,
    /// Successful iterations / iterations.
    pub success_rate: f64,
}

/// One second of the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the start, at the end of this window.
    pub t: f64,
    /// Active VUs (closed model) or iterations in flight (open model).
    pub vus: u64,
    /// The profile's level: target VUs or target iterations per second.
    pub target: f64,
    /// Requests of every route answered in this second.
    pub requests: u64,
    /// Generate requests answered in this second.
    pub generate: u64,
    /// Of which failed.
    pub generate_errors: u64,
    /// Generate latency percentiles of this second, ms.
    pub p50: Option<f64>,
    /// 95th percentile, ms.
    pub p95: Option<f64>,
    /// 99th percentile, ms.
    pub p99: Option<f64>,
    /// Sessions that reached completed in this second.
    pub sessions_completed: u64,
    /// Their end-to-end p95, ms.
    pub e2e_p95: Option<f64>,
    /// Sessions being polled at the end of the second.
    pub polling: u64,
}

/// How the run was set up, for the record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// `closed` (VUs) or `open` (arrival rate).
    pub mode: String,
    /// Preset name, if one was used.
    pub preset: Option<String>,
    /// Stages in k6 spelling (VUs, or iterations/s in open mode).
    pub stages: String,
    /// Think time (closed model).
    pub think: Option<String>,
    /// Max iterations in flight (open model).
    pub max_inflight: Option<usize>,
    /// Test users the load was spread over.
    pub users: usize,
    /// Whether all load came from one user.
    pub hot_user: bool,
    /// Share of video requests.
    pub video_ratio: f64,
    /// Images per image request.
    pub images: u8,
    /// Whether sessions were polled to the end.
    pub e2e: bool,
    /// How long a session may take before it counts as timed out, s.
    pub e2e_timeout_s: f64,
    /// Users granted credits before the run.
    pub seeded_users: usize,
    /// Credits granted to each.
    pub seed_credits: u64,
}

/// Everything a run measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// `loadtest`.
    #[serde(default)]
    pub tool: String,
    /// The tool's version.
    #[serde(default)]
    pub version: String,
    /// Epoch milliseconds at the start of the load.
    #[serde(default)]
    pub started_at_ms: u64,
    /// Seconds of load (rates are per second of this).
    #[serde(default)]
    pub duration_s: f64,
    /// Seconds spent after the load waiting for polled sessions to finish.
    #[serde(default)]
    pub drain_s: f64,
    /// The API the load went to.
    #[serde(default)]
    pub base_url: String,
    /// The set-up.
    #[serde(default)]
    pub config: RunInfo,
    /// k6-shaped metrics, by name (`http_req_duration{name:GET /api/sessions/{id}}`).
    #[serde(default)]
    pub metrics: BTreeMap<String, Metric>,
    /// Per route.
    #[serde(default)]
    pub endpoints: Vec<EndpointSummary>,
    /// Generate answers by error class.
    #[serde(default)]
    pub errors: ErrorBreakdown,
    /// Named checks.
    #[serde(default)]
    pub checks: Vec<CheckSummary>,
    /// Threshold outcomes.
    #[serde(default)]
    pub thresholds: Vec<ThresholdResult>,
    /// Latency by percentile (`[percentile, ms]`) of `http_req_duration` and `session_e2e`.
    #[serde(default)]
    pub distributions: BTreeMap<String, Vec<[f64; 2]>>,
    /// One sample per second.
    #[serde(default)]
    pub timeline: Vec<Sample>,
    /// The change against `--baseline`, when one was given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub comparison: Vec<Change>,
    /// Things the reader should know (the client was the bottleneck, sessions timed out...).
    #[serde(default)]
    pub notes: Vec<String>,
    /// All thresholds held.
    #[serde(default)]
    pub passed: bool,
}

impl Summary {
    /// One value of one metric.
    pub fn value(&self, metric: &str, key: &str) -> Option<f64> {
        self.metrics.get(metric)?.values.get(key).copied()
    }

    /// The end-of-run text, in the manner of k6's.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let c = &self.config;
        let _ = writeln!(
            out,
            "\n  loadtest {} → {}\n  {} model, stages {}{}, {} user(s){}, {:.1}s\n",
            self.version,
            self.base_url,
            c.mode,
            c.stages,
            c.preset
                .as_ref()
                .map(|p| format!(" (preset {p})"))
                .unwrap_or_default(),
            c.users,
            if c.hot_user { ", hot user" } else { "" },
            self.duration_s
        );
        for (name, metric) in &self.metrics {
            if name.contains('{') {
                continue;
            }
            let _ = writeln!(out, "  {}: {}", dotted(name, 28), describe(metric));
        }
        let _ = writeln!(out, "\n  per endpoint (ms)");
        let _ = writeln!(
            out,
            "  {:<40} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}  statuses",
            "endpoint", "reqs", "rate/s", "p50", "p90", "p95", "p99", "max"
        );
        for e in &self.endpoints {
            let statuses = e
                .statuses
                .iter()
                .map(|(s, n)| format!("{s}:{n}"))
                .collect::<Vec<_>>()
                .join(" ");
            let _ = writeln!(
                out,
                "  {:<40} {:>8} {:>8.2} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1}  {}",
                e.name, e.requests, e.rate, e.p50, e.p90, e.p95, e.p99, e.max, statuses
            );
        }
        let e = &self.errors;
        let _ = writeln!(
            out,
            "\n  errors: credit_errors={} rate_limited={} provider_errors={} other_errors={}  error rate {:.2}%  success rate {:.2}%",
            e.credit_errors,
            e.rate_limited,
            e.provider_errors,
            e.other_errors,
            e.error_rate * 100.0,
            e.success_rate * 100.0
        );
        if !self.checks.is_empty() {
            let _ = writeln!(out, "\n  checks");
            for check in &self.checks {
                let mark = if check.fails == 0 { "✓" } else { "✗" };
                let _ = writeln!(
                    out,
                    "    {mark} {:<32} ✓ {:<8} ✗ {}",
                    check.name, check.passes, check.fails
                );
            }
        }
        if !self.thresholds.is_empty() {
            let _ = writeln!(out, "\n  thresholds");
            for t in &self.thresholds {
                let mark = if t.ok { "✓" } else { "✗" };
                let actual = t
                    .actual
                    .map(|a| format!("{a:.4}"))
                    .or_else(|| t.note.clone())
                    .unwrap_or_default();
                let _ = writeln!(out, "    {mark} {:<48} actual {actual}", t.threshold);
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "\n  note: {note}");
        }
        out
    }

    /// The thresholds that did not hold.
    pub fn breached(&self) -> Vec<&ThresholdResult> {
        self.thresholds.iter().filter(|t| !t.ok).collect()
    }
}

fn dotted(name: &str, width: usize) -> String {
    let mut s = name.to_string();
    while s.chars().count() < width {
        s.push('.');
    }
    s
}

/// One metric on one line, k6 style.
pub fn describe(metric: &Metric) -> String {
    let v = |k: &str| metric.values.get(k).copied().unwrap_or(0.0);
    match metric.kind {
        MetricKind::Counter => format!("{:<10} {:.2}/s", v("count"), v("rate")),
        MetricKind::Rate => format!(
            "{:.2}%  ✓ {}  ✗ {}",
            v("rate") * 100.0,
            v("passes"),
            v("fails")
        ),
        MetricKind::Gauge => format!("{} min={} max={}", v("value"), v("min"), v("max")),
        MetricKind::Trend => {
            let unit = if metric.contains.as_deref() == Some("time") {
                "ms"
            } else {
                ""
            };
            let mut parts = vec![format!("count={}", v("count"))];
            for key in ["avg", "min", "med", "p(90)", "p(95)", "p(99)", "max"] {
                if let Some(x) = metric.values.get(key) {
                    parts.push(format!("{key}={x:.2}{unit}"));
                }
            }
            parts.join(" ")
        }
    }
}
