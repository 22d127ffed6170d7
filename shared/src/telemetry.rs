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
