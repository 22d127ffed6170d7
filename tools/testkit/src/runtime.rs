//! The shipped bootstraps, run as Lambda runs them: a minimal Lambda Runtime API
//! (`/2018-06-01/runtime/invocation/next`, the response and error routes, init errors) hands
//! a process one event and takes its answer; moto and the mock provider stand behind it.
//!
//! The binaries are the ones `sam build` ships: `cargo lambda build --release` (`make
//! build-lambda`) writes them to `target/lambda/<function>/bootstrap`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;
use tokio::sync::Notify;

/// The bootstrap `cargo lambda build --release` built for `function`: under target/lambda, or
/// under `$LAMBDA_ARTIFACTS` (how scripts/size_levers.sh measures a build of another profile).
pub fn bootstrap(function: &str) -> PathBuf {
    let artifacts = std::env::var_os("LAMBDA_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/lambda"));
    let path = artifacts.join(function).join("bootstrap");
    assert!(
        path.exists(),
        "{} missing: run make build-lambda (cargo lambda build --release, as sam build does)",
        path.display()
    );
    path
}

/// What one invocation showed.
#[derive(Clone, Debug)]
pub struct Invocation {
    /// Process start to the answer (the cold start, with the first event's work).
    pub cold_start: Duration,
    /// The process's peak resident memory (VmHWM) after answering, in KiB.
    pub peak_rss_kib: u64,
    /// `response: <body>`, `error: <body>` or `init error: <body>`.
    pub answer: String,
    /// Whether the process asked for a next event after answering (it is alive and ready).
    pub polled_again: bool,
}

#[derive(Clone)]
struct Runtime {
    event: Arc<Mutex<Option<Value>>>,
    answer: Arc<Mutex<Option<(Instant, String)>>>,
    polls: Arc<Mutex<u32>>,
    answered: Arc<Notify>,
    polled: Arc<Notify>,
}

async fn next(State(rt): State<Runtime>) -> (HeaderMap, String) {
    *rt.polls.lock().unwrap() += 1;
    rt.polled.notify_one();
    let event = rt.event.lock().unwrap().take();
    let Some(event) = event else {
        // One invocation per process: later polls wait until the process is stopped.
        std::future::pending::<()>().await;
        unreachable!()
    };
    let deadline = shared::clock::now_ms() + 60_000;
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("lambda-runtime-aws-request-id", "local-request".to_owned()),
        ("lambda-runtime-deadline-ms", deadline.to_string()),
        (
            "lambda-runtime-invoked-function-arn",
            "arn:aws:lambda:us-east-1:123456789012:function:local".to_owned(),
        ),
        (
            "lambda-runtime-trace-id",
            "Root=1-00000000-000000000000000000000000".to_owned(),
        ),
    ] {
        headers.insert(name, value.parse().unwrap());
    }
    (headers, event.to_string())
}

async fn respond(
    State(rt): State<Runtime>,
    UrlPath((_, kind)): UrlPath<(String, String)>,
    body: String,
) -> &'static str {
    *rt.answer.lock().unwrap() = Some((Instant::now(), format!("{kind}: {body}")));
    rt.answered.notify_one();
    "{}"
}

async fn init_error(State(rt): State<Runtime>, body: String) -> &'static str {
    *rt.answer.lock().unwrap() = Some((Instant::now(), format!("init error: {body}")));
    rt.answered.notify_one();
    "{}"
}

/// Starts `binary` with `env` against a Runtime API that hands it `event`, and waits (at most
/// two minutes) for its answer and its next poll.
pub async fn invoke_once(binary: &Path, env: &[(String, String)], event: Value) -> Invocation {
    let rt = Runtime {
        event: Arc::new(Mutex::new(Some(event))),
        answer: Arc::default(),
        polls: Arc::default(),
        answered: Arc::new(Notify::new()),
        polled: Arc::new(Notify::new()),
    };
    let app = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route("/2018-06-01/runtime/invocation/{id}/{kind}", post(respond))
        .route("/2018-06-01/runtime/init/error", post(init_error))
        .with_state(rt.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let started = Instant::now();
    let mut child = tokio::process::Command::new(binary)
        .envs(env.iter().cloned())
        .env("AWS_LAMBDA_RUNTIME_API", address.to_string())
        .env("AWS_LAMBDA_FUNCTION_NAME", "local")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "local")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "local")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    tokio::time::timeout(Duration::from_secs(120), rt.answered.notified())
        .await
        .unwrap_or_else(|_| panic!("{} gave no answer (did it die?)", binary.display()));
    let (at, answer) = rt.answer.lock().unwrap().clone().unwrap();
    let polled_again = *rt.polls.lock().unwrap() > 1
        || tokio::time::timeout(Duration::from_secs(5), rt.polled.notified())
            .await
            .is_ok();
    let pid = child.id().unwrap_or_default();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let peak_rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    child.kill().await.ok();
    server.abort();
    Invocation {
        cold_start: at - started,
        peak_rss_kib,
        answer,
        polled_again,
    }
}

/// The environment of a function wired to this world and a mock provider.
pub fn function_env(
    world: &crate::World,
    mock: &mock_provider::MockHandle,
) -> Vec<(String, String)> {
    let config = &world.state.config;
    [
        ("TABLE_NAME", config.table.clone()),
        ("QUEUE_URL", config.queue_url.clone()),
        ("BUCKET_NAME", config.bucket.clone()),
        ("AWS_ENDPOINT_URL", crate::endpoint()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("PROVIDER_BASE_URL", mock.api_base()),
        ("PROVIDER_API_KEY", mock.api_key()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// An SQS event of generation messages, one per session of `user`, as the event source mapping
/// delivers them (message ids `record-<n>`).
pub fn sqs_event(user: &str, session_ids: &[String]) -> Value {
    let records: Vec<Value> = session_ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let body = serde_json::json!({"session_id": id, "user_id": user, "attempt": 0,
                "enqueued_at": shared::clock::now_ms()});
            serde_json::json!({
                "messageId": format!("record-{i}"), "receiptHandle": "r", "body": body.to_string(),
                "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {},
                "eventSource": "aws:sqs", "awsRegion": "us-east-1",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:generation",
            })
        })
        .collect();
    serde_json::json!({ "Records": records })
}
