//! `--baseline previous.json`: the change of every metric the two runs share, absolute and in
//! percent, marked better or worse by what the metric means (latency and errors down is
//! better, throughput and success up is better). Reads this tool's summaries and k6's JSON
//! summaries alike (both keep `metrics.<name>.values`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::aggregate::{Metric, MetricKind};

/// Whether a change is good news.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Moved the right way by 1% or more.
    Better,
    /// Moved the wrong way by 1% or more.
    Worse,
    /// Within 1%.
    Same,
    /// Neither direction is better (counts, gauges).
    Neutral,
}

/// One aggregate of one metric, before and after.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// Metric name (with tags).
    pub metric: String,
    /// Aggregate (`p(95)`, `rate`, `count`).
    pub stat: String,
    /// The baseline's value.
    pub before: f64,
    /// This run's value.
    pub after: f64,
    /// `after - before`.
    pub delta: f64,
    /// `delta / before` in percent; `None` when the baseline was 0.
    pub percent: Option<f64>,
    /// Better, worse, same or neutral.
    pub verdict: Verdict,
}

#[derive(Deserialize)]
struct MetricsOnly {
    metrics: BTreeMap<String, Metric>,
}

/// Reads the metrics of a summary file.
pub fn load(text: &str) -> Result<BTreeMap<String, Metric>, String> {
    serde_json::from_str::<MetricsOnly>(text)
        .map(|m| m.metrics)
        .map_err(|e| format!("not a loadtest or k6 JSON summary: {e}"))
}

fn stats(kind: MetricKind) -> &'static [&'static str] {
    match kind {
        MetricKind::Trend => &["med", "p(90)", "p(95)", "p(99)", "max", "avg", "count"],
        MetricKind::Counter => &["count", "rate"],
        MetricKind::Rate => &["rate"],
        MetricKind::Gauge => &["max"],
    }
}

/// `Some(true)` when lower is better, `Some(false)` when higher is, `None` when neither.
fn lower_is_better(metric: &str, kind: MetricKind, stat: &str) -> Option<bool> {
    let base = metric.split('{').next().unwrap_or(metric);
    match kind {
        MetricKind::Trend if stat == "count" => None,
        MetricKind::Trend => Some(true),
        MetricKind::Gauge => None,
        MetricKind::Rate => match base {
            "errors" | "http_req_failed" => Some(true),
            _ => Some(false),
        },
        MetricKind::Counter => match base {
            "credit_errors" | "rate_limited" | "provider_errors" | "other_errors"
            | "dropped_iterations" | "sessions_failed" | "sessions_timed_out" => Some(true),
            "http_reqs" | "iterations" | "sessions_completed" => Some(false),
            _ => None,
        },
    }
}

/// The changes of every aggregate both runs have.
pub fn compare(before: &BTreeMap<String, Metric>, after: &BTreeMap<String, Metric>) -> Vec<Change> {
    let mut changes = Vec::new();
    for (name, now) in after {
        let Some(then) = before.get(name) else {
            continue;
        };
        if then.kind != now.kind {
            continue;
        }
        for stat in stats(now.kind) {
            let (Some(b), Some(a)) = (then.values.get(*stat), now.values.get(*stat)) else {
                continue;
            };
            if *a == 0.0 && *b == 0.0 {
                continue;
            }
            let delta = a - b;
            let percent = (*b != 0.0).then(|| delta / b.abs() * 100.0);
            let moved = match percent {
                Some(p) => p.abs() >= 1.0,
                None => delta != 0.0,
            };
            let verdict = match lower_is_better(name, now.kind, stat) {
                None => Verdict::Neutral,
                Some(_) if !moved => Verdict::Same,
                Some(lower) if (delta < 0.0) == lower => Verdict::Better,
                Some(_) => Verdict::Worse,
            };
            changes.push(Change {
                metric: name.clone(),
                stat: stat.to_string(),
                before: *b,
                after: *a,
                delta,
                percent,
                verdict,
            });
        }
    }
    changes
}

/// The comparison as a table.
pub fn render(changes: &[Change]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n  change against the baseline");
    let _ = writeln!(
        out,
        "  {:<58} {:>7} {:>12} {:>12} {:>12} {:>9}",
        "metric", "stat", "baseline", "current", "change", "%"
    );
    for c in changes {
        let mark = match c.verdict {
            Verdict::Better => "better",
            Verdict::Worse => "WORSE",
            Verdict::Same | Verdict::Neutral => "",
        };
        let percent = c
            .percent
            .map(|p| format!("{p:+.1}%"))
            .unwrap_or_else(|| "n/a".into());
        let _ = writeln!(
            out,
            "  {:<58} {:>7} {:>12.3} {:>12.3} {:>+12.3} {:>9}  {mark}",
            c.metric, c.stat, c.before, c.after, c.delta, percent
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(kind: MetricKind, values: &[(&str, f64)]) -> Metric {
        Metric {
            kind,
            contains: None,
            values: values.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    #[test]
    fn latency_up_is_worse_and_throughput_up_is_better() {
        let before = BTreeMap::from([
            (
                "http_req_duration".to_string(),
                metric(MetricKind::Trend, &[("p(95)", 100.0), ("count", 10.0)]),
            ),
            (
                "http_reqs".to_string(),
                metric(MetricKind::Counter, &[("count", 100.0), ("rate", 10.0)]),
            ),
            (
                "errors".to_string(),
                metric(MetricKind::Rate, &[("rate", 0.0)]),
            ),
            (
                "only_before".to_string(),
                metric(MetricKind::Rate, &[("rate", 1.0)]),
            ),
        ]);
        let after = BTreeMap::from([
            (
                "http_req_duration".to_string(),
                metric(MetricKind::Trend, &[("p(95)", 150.0), ("count", 20.0)]),
            ),
            (
                "http_reqs".to_string(),
                metric(MetricKind::Counter, &[("count", 100.0), ("rate", 12.0)]),
            ),
            (
                "errors".to_string(),
                metric(MetricKind::Rate, &[("rate", 0.02)]),
            ),
        ]);
        let changes = compare(&before, &after);
        let find = |m: &str, s: &str| {
            changes
                .iter()
                .find(|c| c.metric == m && c.stat == s)
                .unwrap()
                .clone()
        };
        let p95 = find("http_req_duration", "p(95)");
        assert_eq!((p95.delta, p95.percent), (50.0, Some(50.0)));
        assert_eq!(p95.verdict, Verdict::Worse);
        assert_eq!(find("http_req_duration", "count").verdict, Verdict::Neutral);
        let rate = find("http_reqs", "rate");
        assert_eq!(rate.verdict, Verdict::Better);
        assert!((rate.percent.unwrap() - 20.0).abs() < 1e-9);
        assert_eq!(find("http_reqs", "count").verdict, Verdict::Same);
        let errors = find("errors", "rate");
        assert_eq!((errors.percent, errors.verdict), (None, Verdict::Worse));
        assert!(!changes.iter().any(|c| c.metric == "only_before"));
        let table = render(&changes);
        assert!(
            table.contains("+50.0%") && table.contains("WORSE"),
            "{table}"
        );
    }

    #[test]
    fn a_k6_summary_is_a_valid_baseline() {
        let k6 = r#"{"root_group":{},"metrics":{"http_req_duration":{"type":"trend","contains":"time",
            "values":{"avg":20.1,"min":3,"med":15,"max":90,"p(90)":40,"p(95)":55}},
            "checks":{"type":"rate","values":{"rate":0.99,"passes":99,"fails":1}}}}"#;
        let metrics = load(k6).unwrap();
        assert_eq!(metrics["http_req_duration"].values["p(95)"], 55.0);
        assert_eq!(metrics["checks"].kind, MetricKind::Rate);
        assert!(load("{}").is_err());
    }
}
