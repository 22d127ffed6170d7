//! Thresholds in k6's spelling, `metric[{tag:value}]:aggregate op number`, e.g.
//! `http_req_duration:p(95)<100`, `errors:rate<0.01`,
//! `http_req_duration{name:GET /api/sessions/{id}}:p(99)<=250`, and their evaluation against a
//! run's summary.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::aggregate::{Metric, MetricKind, KNOWN_METRICS};

/// How a metric's samples are reduced to one number.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Aggregate {
    /// Mean (trends).
    Avg,
    /// Smallest sample (trends).
    Min,
    /// Median (trends).
    Med,
    /// Largest sample (trends).
    Max,
    /// A percentile, 0-100 (trends).
    Percentile(f64),
    /// Number of events (counters, and trends' sample count).
    Count,
    /// Share of true samples (rates) or events per second (counters).
    Rate,
    /// Last value (gauges).
    Value,
}

impl Aggregate {
    /// The key of this aggregate in a metric's `values` (`p(95)`, `rate`).
    pub fn key(&self) -> String {
        match self {
            Self::Avg => "avg".into(),
            Self::Min => "min".into(),
            Self::Med => "med".into(),
            Self::Max => "max".into(),
            Self::Percentile(p) => percentile_key(*p),
            Self::Count => "count".into(),
            Self::Rate => "rate".into(),
            Self::Value => "value".into(),
        }
    }

    fn parse(text: &str) -> Result<Self, String> {
        Ok(match text {
            "avg" => Self::Avg,
            "min" => Self::Min,
            "med" => Self::Med,
            "max" => Self::Max,
            "count" => Self::Count,
            "rate" => Self::Rate,
            "value" => Self::Value,
            _ => {
                let inner = text
                    .strip_prefix("p(")
                    .and_then(|t| t.strip_suffix(')'))
                    .ok_or_else(|| {
                        format!(
                            "unknown aggregate `{text}` (avg, min, med, max, p(N), count, rate, value)"
                        )
                    })?;
                let p: f64 = inner
                    .trim()
                    .parse()
                    .map_err(|_| format!("percentile `{text}` is not a number"))?;
                if !(0.0..=100.0).contains(&p) {
                    return Err(format!("percentile `{text}` must be within 0..100"));
                }
                Self::Percentile(p)
            }
        })
    }
}

/// The `values` key of a percentile: `p(95)`, `p(99.9)`.
pub fn percentile_key(p: f64) -> String {
    format!("p({p})")
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

impl Op {
    fn holds(self, actual: f64, limit: f64) -> bool {
        match self {
            Self::Lt => actual < limit,
            Self::Le => actual <= limit,
            Self::Gt => actual > limit,
            Self::Ge => actual >= limit,
            Self::Eq => actual == limit,
            Self::Ne => actual != limit,
        }
    }
}

/// One parsed threshold.
#[derive(Clone, Debug, PartialEq)]
pub struct Threshold {
    /// As written on the command line.
    pub source: String,
    /// Metric name with its tag selector, e.g. `http_req_duration{name:GET /api/sessions/{id}}`.
    pub metric: String,
    /// The aggregate compared.
    pub aggregate: Aggregate,
    /// The comparison.
    pub op: Op,
    /// The limit (milliseconds for time metrics).
    pub limit: f64,
}

impl Threshold {
    /// Parses `metric:aggregate op number`. A limit on a time metric may carry `ms` or `s`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let source = text.trim().to_string();
        // The metric ends at the first ':' outside a `{...}` tag selector.
        let mut depth = 0_i32;
        let mut split = None;
        for (i, c) in source.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ':' if depth == 0 => {
                    split = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let split = split.ok_or_else(|| {
            format!("threshold `{source}` must look like `http_req_duration:p(95)<100`")
        })?;
        let metric = source[..split].trim().to_string();
        let expr = source[split + 1..].trim();
        if metric.is_empty() {
            return Err(format!("threshold `{source}` names no metric"));
        }
        let base = metric.split('{').next().unwrap_or_default();
        if !KNOWN_METRICS.contains(&base) {
            return Err(format!(
                "threshold `{source}`: unknown metric `{base}` (known: {})",
                KNOWN_METRICS.join(", ")
            ));
        }
        let op_at = expr.find(['<', '>', '=', '!']).ok_or_else(|| {
            format!("threshold `{source}` has no comparison (<, <=, >, >=, ==, !=)")
        })?;
        let aggregate = Aggregate::parse(expr[..op_at].trim())?;
        let rest = &expr[op_at..];
        let (op, rest) = [
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("==", Op::Eq),
            ("!=", Op::Ne),
            ("<", Op::Lt),
            (">", Op::Gt),
        ]
        .iter()
        .find_map(|(s, op)| rest.strip_prefix(s).map(|r| (*op, r.trim())))
        .ok_or_else(|| format!("threshold `{source}`: bad comparison"))?;
        let (number, scale) = if let Some(n) = rest.strip_suffix("ms") {
            (n, 1.0)
        } else if let Some(n) = rest.strip_suffix('s') {
            (n, 1000.0)
        } else {
            (rest, 1.0)
        };
        let limit: f64 = number
            .trim()
            .parse()
            .map_err(|_| format!("threshold `{source}`: `{rest}` is not a number"))?;
        Ok(Self {
            source,
            metric,
            aggregate,
            op,
            limit: limit * scale,
        })
    }

    /// Checks the threshold against the summary's metrics. A metric without samples breaches
    /// it: a latency objective over nothing would otherwise pass a run where everything failed.
    pub fn evaluate(&self, metrics: &BTreeMap<String, Metric>) -> ThresholdResult {
        let metric = metrics.get(&self.metric);
        let key = self.aggregate.key();
        let actual = metric.and_then(|m| {
            let empty_trend = m.kind == MetricKind::Trend
                && m.values.get("count").copied().unwrap_or(0.0) == 0.0
                && key != "count";
            let empty_rate = m.kind == MetricKind::Rate
                && m.values.get("passes").copied().unwrap_or(0.0)
                    + m.values.get("fails").copied().unwrap_or(0.0)
                    == 0.0;
            if empty_trend || empty_rate {
                None
            } else {
                m.values.get(&key).copied()
            }
        });
        let (ok, note) = match (metric, actual) {
            (None, _) => (false, Some("metric not recorded in this run".to_string())),
            (Some(_), None) => (false, Some(format!("no `{key}` value: no samples"))),
            (Some(_), Some(actual)) => (self.op.holds(actual, self.limit), None),
        };
        ThresholdResult {
            threshold: self.source.clone(),
            metric: self.metric.clone(),
            ok,
            actual,
            limit: self.limit,
            note,
        }
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// The outcome of one threshold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThresholdResult {
    /// The threshold as written.
    pub threshold: String,
    /// The metric it applies to.
    pub metric: String,
    /// Whether it held.
    pub ok: bool,
    /// The measured value, when there was one.
    pub actual: Option<f64>,
    /// The limit.
    pub limit: f64,
    /// Why there was no value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Every percentile named by `thresholds`, so the summary computes it from the histograms.
pub fn wanted_percentiles(thresholds: &[Threshold]) -> Vec<f64> {
    thresholds
        .iter()
        .filter_map(|t| match t.aggregate {
            Aggregate::Percentile(p) => Some(p),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trend(values: &[(&str, f64)]) -> Metric {
        Metric {
            kind: MetricKind::Trend,
            contains: Some("time".into()),
            values: values.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    fn rate(rate: f64, passes: f64, fails: f64) -> Metric {
        Metric {
            kind: MetricKind::Rate,
            contains: None,
            values: [("rate", rate), ("passes", passes), ("fails", fails)]
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
        }
    }

    #[test]
    fn k6_spelling_parses() {
        let t = Threshold::parse("http_req_duration:p(95)<100").unwrap();
        assert_eq!(t.metric, "http_req_duration");
        assert_eq!(t.aggregate, Aggregate::Percentile(95.0));
        assert_eq!(t.op, Op::Lt);
        assert_eq!(t.limit, 100.0);
        let t = Threshold::parse("errors:rate<0.01").unwrap();
        assert_eq!(
            (t.aggregate, t.op, t.limit),
            (Aggregate::Rate, Op::Lt, 0.01)
        );
        let t = Threshold::parse(" success_rate : rate >= 0.8 ").unwrap();
        assert_eq!((t.metric.as_str(), t.op), ("success_rate", Op::Ge));
        let t = Threshold::parse("session_e2e:p(99.9)<=5s").unwrap();
        assert_eq!(t.aggregate.key(), "p(99.9)");
        assert_eq!(t.limit, 5000.0);
        let t = Threshold::parse("credit_errors:count==0").unwrap();
        assert_eq!(t.op, Op::Eq);
    }

    #[test]
    fn a_tag_selector_may_contain_colons_and_braces() {
        let t =
            Threshold::parse("http_req_duration{name:GET /api/sessions/{id}}:p(99)<250").unwrap();
        assert_eq!(t.metric, "http_req_duration{name:GET /api/sessions/{id}}");
        assert_eq!(t.aggregate, Aggregate::Percentile(99.0));
        assert_eq!(t.limit, 250.0);
    }

    #[test]
    fn malformed_thresholds_are_refused() {
        for bad in [
            "http_req_duration",
            "http_req_duration:p(95)",
            "http_req_duration:p95<100",
            "http_req_duration:p(101)<100",
            "http_req_duration:p(95)<fast",
            "no_such_metric:rate<1",
            ":rate<1",
            "errors:rate=<1",
        ] {
            assert!(Threshold::parse(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn evaluation_compares_the_named_aggregate() {
        let mut metrics = BTreeMap::new();
        metrics.insert(
            "http_req_duration".to_string(),
            trend(&[("count", 10.0), ("p(95)", 120.0), ("avg", 50.0)]),
        );
        metrics.insert("errors".to_string(), rate(0.005, 1.0, 199.0));
        let breached = Threshold::parse("http_req_duration:p(95)<100")
            .unwrap()
            .evaluate(&metrics);
        assert!(!breached.ok);
        assert_eq!(breached.actual, Some(120.0));
        assert!(
            Threshold::parse("http_req_duration:avg<100")
                .unwrap()
                .evaluate(&metrics)
                .ok
        );
        assert!(
            Threshold::parse("errors:rate<0.01")
                .unwrap()
                .evaluate(&metrics)
                .ok
        );
        assert!(
            !Threshold::parse("errors:rate>0.01")
                .unwrap()
                .evaluate(&metrics)
                .ok
        );
    }

    #[test]
    fn a_metric_without_samples_breaches_its_threshold() {
        let mut metrics = BTreeMap::new();
        metrics.insert("session_e2e".to_string(), trend(&[("count", 0.0)]));
        let r = Threshold::parse("session_e2e:p(95)<5000")
            .unwrap()
            .evaluate(&metrics);
        assert!(!r.ok);
        assert_eq!(r.actual, None);
        assert!(r.note.unwrap().contains("no samples"));
        let r = Threshold::parse("dropped_iterations:count<1")
            .unwrap()
            .evaluate(&metrics);
        assert!(!r.ok);
        assert!(r.note.unwrap().contains("not recorded"));
    }

    #[test]
    fn wanted_percentiles_lists_those_the_thresholds_name() {
        let ts: Vec<_> = [
            "http_req_duration:p(99.9)<1",
            "errors:rate<1",
            "session_e2e:p(42)<1",
        ]
        .iter()
        .map(|t| Threshold::parse(t).unwrap())
        .collect();
        assert_eq!(wanted_percentiles(&ts), vec![99.9, 42.0]);
    }
}
