//! Structured JSON logs. Each invocation runs in a span carrying the request id, and the
//! handlers add the user and session, so every line can be traced back to its request.

use tracing_subscriber::EnvFilter;

/// Installs the JSON log subscriber (level from `RUST_LOG`, `info` by default). Safe to call
/// more than once: later calls do nothing.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(false)
        .flatten_event(true)
        .try_init();
}

/// CloudWatch metrics in the embedded metric format (EMF): one JSON line on stdout per data
/// point set, which Lambda ships to CloudWatch Logs and CloudWatch turns into metrics, with no
/// API call and no added latency.
pub mod metrics {
    use std::time::Duration;

    use serde_json::{json, Map, Value};

    /// Namespace of every metric.
    pub const NAMESPACE: &str = "GenAI";

    /// One EMF document: `dimensions` name the values that split the metrics.
    pub fn emf(dimensions: &[(&str, &str)], metrics: &[(&str, &str, f64)]) -> Value {
        let mut doc = Map::new();
        for (name, value) in dimensions {
            doc.insert((*name).into(), json!(value));
        }
        for (name, _, value) in metrics {
            doc.insert((*name).into(), json!(value));
        }
        let names: Vec<&str> = dimensions.iter().map(|(n, _)| *n).collect();
        let definitions: Vec<Value> = metrics
            .iter()
            .map(|(name, unit, _)| json!({"Name": name, "Unit": unit}))
            .collect();
        doc.insert(
            "_aws".into(),
            json!({
                "Timestamp": crate::clock::now_ms(),
                "CloudWatchMetrics": [{"Namespace": NAMESPACE, "Dimensions": [names], "Metrics": definitions}],
            }),
        );
        Value::Object(doc)
    }

    fn emit(dimensions: &[(&str, &str)], metrics: &[(&str, &str, f64)]) {
        println!("{}", emf(dimensions, metrics));
    }

    /// A provider call and its latency.
    pub fn provider_call(operation: &str, latency: Duration, error: Option<&str>) {
        emit(
            &[
                ("Operation", operation),
                ("Outcome", if error.is_some() { "error" } else { "ok" }),
            ],
            &[
                ("ProviderCalls", "Count", 1.0),
                (
                    "ProviderLatency",
                    "Milliseconds",
                    latency.as_secs_f64() * 1000.0,
                ),
            ],
        );
    }

    /// A finished session: its outcome, reason, images delivered, credits captured and how
    /// long it took from acceptance to the end.
    pub fn session_finished(
        outcome: &str,
        reason: &str,
        delivered: usize,
        captured: i64,
        total_ms: i64,
    ) {
        emit(
            &[("Outcome", outcome), ("Reason", reason)],
            &[
                ("Sessions", "Count", 1.0),
                ("ImagesDelivered", "Count", delivered as f64),
                ("CreditsCaptured", "Count", captured as f64),
                ("SessionTotal", "Milliseconds", total_ms as f64),
            ],
        );
    }

    /// Counters of a sweeper run.
    pub fn counters(component: &str, counters: &[(&str, f64)]) {
        let metrics: Vec<(&str, &str, f64)> =
            counters.iter().map(|(n, v)| (*n, "Count", *v)).collect();
        emit(&[("Component", component)], &metrics);
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn emf_documents_declare_their_metrics_and_dimensions() {
            let doc = emf(&[("Outcome", "ok")], &[("ProviderCalls", "Count", 1.0)]);
            assert_eq!(doc["Outcome"], "ok");
            assert_eq!(doc["ProviderCalls"], 1.0);
            let directive = &doc["_aws"]["CloudWatchMetrics"][0];
            assert_eq!(directive["Namespace"], NAMESPACE);
            assert_eq!(directive["Dimensions"], json!([["Outcome"]]));
            assert_eq!(
                directive["Metrics"][0],
                json!({"Name": "ProviderCalls", "Unit": "Count"})
            );
        }
    }
}
