//! Structured JSON logs. Each invocation runs in a span carrying the request id, and the
//! handlers add the user and session, so every line can be traced back to its request.

use tracing_subscriber::EnvFilter;

/// Installs the log subscriber, as Lambda's log settings ask: the level from `RUST_LOG`, else
/// `AWS_LAMBDA_LOG_LEVEL` (the function's `ApplicationLogLevel`), else `info`; JSON lines
/// unless `AWS_LAMBDA_LOG_FORMAT` is `Text`. JSON lines list every open span, so each carries
/// the `requestId` of lambda_runtime's invocation span as well as the record's own fields.
/// Metric lines (EMF) are printed, not logged: no level filter drops them (Lambda files
/// unleveled JSON under INFO, which the template never filters out). Safe to call more than
/// once: later calls do nothing.
pub fn init() {
    let level = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .map(|l| lambda_level(&l).to_owned())
        .unwrap_or_else(|_| "info".into());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = if std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("text"))
    {
        builder.with_ansi(false).try_init()
    } else {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .flatten_event(true)
            .try_init()
    };
}

/// Lambda's level names (`TRACE` ... `FATAL`) as tracing's.
fn lambda_level(level: &str) -> &'static str {
    match level.to_ascii_uppercase().as_str() {
        "TRACE" => "trace",
        "DEBUG" => "debug",
        "WARN" => "warn",
        "ERROR" | "FATAL" => "error",
        _ => "info",
    }
}

/// CloudWatch metrics in the embedded metric format (EMF): one JSON line on stdout per data
/// point set, which Lambda ships to CloudWatch Logs and CloudWatch turns into metrics, with no
/// API call and no added latency.
pub mod metrics {
    use std::time::Duration;

    use serde_json::{json, Map, Value};

    /// Namespace of every metric.
    pub const NAMESPACE: &str = "GenAI";

    /// The deployment the metrics belong to (`STAGE`, the stack's name in the template), the
    /// first dimension of every metric, so two stacks in one account never mix their figures.
    fn stage() -> &'static str {
        static STAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        STAGE.get_or_init(|| std::env::var("STAGE").unwrap_or_else(|_| "local".into()))
    }

    /// One EMF document: `dimensions` (after `Stage`) name the values that split the metrics.
    pub fn emf(dimensions: &[(&str, &str)], metrics: &[(&str, &str, f64)]) -> Value {
        let dimensions: Vec<(&str, &str)> = std::iter::once(("Stage", stage()))
            .chain(dimensions.iter().copied())
            .collect();
        let mut doc = Map::new();
        for (name, value) in &dimensions {
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

    /// A generator's provider call and its latency; a failure (other than a content-policy
    /// refusal, which is the provider working) also counts as a `ProviderErrors` of the
    /// generator, the metric its alarm watches.
    pub fn provider_call(operation: &str, latency: Duration, error: Option<&str>) {
        if error.is_some_and(|code| !crate::provider::is_content_policy(code)) {
            emit(
                &[("Component", "generator")],
                &[("ProviderErrors", "Count", 1.0)],
            );
        }
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
            assert_eq!(
                (&doc["Outcome"], &doc["Stage"]),
                (&json!("ok"), &json!(stage()))
            );
            assert_eq!(doc["ProviderCalls"], 1.0);
            let directive = &doc["_aws"]["CloudWatchMetrics"][0];
            assert_eq!(directive["Namespace"], NAMESPACE);
            assert_eq!(directive["Dimensions"], json!([["Stage", "Outcome"]]));
            assert_eq!(
                directive["Metrics"][0],
                json!({"Name": "ProviderCalls", "Unit": "Count"})
            );
        }

        #[test]
        fn lambda_levels_map_to_tracing_levels() {
            let mapped: Vec<&str> = ["TRACE", "debug", "INFO", "WARN", "ERROR", "FATAL", "?"]
                .into_iter()
                .map(super::super::lambda_level)
                .collect();
            assert_eq!(
                mapped,
                ["trace", "debug", "info", "warn", "error", "error", "info"]
            );
        }
    }
}
