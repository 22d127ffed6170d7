//! One metric's aggregates in the shape of k6's JSON summary, and the metric names: the
//! vocabulary the summary, the thresholds and the baseline comparison share. It sits below
//! all three so that they depend on it and never on each other in a circle.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Metric names a threshold may refer to (tags in `{...}` may follow the name).
pub const KNOWN_METRICS: &[&str] = &[
    "http_reqs",
    "http_req_duration",
    "http_req_failed",
    "iterations",
    "iteration_duration",
    "checks",
    "errors",
    "success_rate",
    "credit_errors",
    "rate_limited",
    "provider_errors",
    "other_errors",
    "dropped_iterations",
    "schedule_lag",
    "session_e2e",
    "session_processing",
    "sessions_completed",
    "sessions_failed",
    "sessions_timed_out",
    "session_success",
    "vus",
    "vus_max",
];

/// k6's metric types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricKind {
    /// Events: `count`, `rate` per second.
    Counter,
    /// Share of true samples: `rate`, `passes`, `fails`.
    Rate,
    /// Distribution: `count`, `avg`, `min`, `med`, `max`, `p(N)`.
    Trend,
    /// A level: `value`, `min`, `max`.
    Gauge,
}

/// One metric's aggregates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// The metric's type.
    #[serde(rename = "type")]
    pub kind: MetricKind,
    /// `time` for durations (values in milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
    /// Aggregate name → value.
    #[serde(default)]
    pub values: BTreeMap<String, f64>,
}
