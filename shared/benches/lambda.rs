//! Cold start, bootstrap size and peak memory of every function's release binary.
//!
//! Each binary is started as Lambda starts it, against a minimal Lambda Runtime API served
//! here (`/2018-06-01/runtime/invocation/next` and the response route), with moto and the mock
//! provider behind it. Cold start = process start to the first response; peak memory = the
//! process's VmHWM after answering. The generator's event is a full batch: 10 sessions of 4
//! images each.
//!
//! `cargo build --release --bins && scripts/with-moto.sh cargo bench -p shared --bench lambda`

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::Router;
use mock_provider::Knobs;
use serde_json::{json, Value};
use testkit::{parts, user, Event, World};
use tokio::sync::Notify;

#[derive(Clone)]
struct Runtime {
    event: Arc<Mutex<Option<Value>>>,
    answer: Arc<Mutex<Option<(Instant, String)>>>,
    done: Arc<Notify>,
}

async fn next(State(rt): State<Runtime>) -> (HeaderMap, String) {
    let event = rt.event.lock().unwrap().take();
    let Some(event) = event else {
        // One invocation per process: later polls wait until the process is stopped.
        std::future::pending::<()>().await;
        unreachable!()
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        "lambda-runtime-aws-request-id",
        "bench-request".parse().unwrap(),
    );
    let deadline = shared::clock::now_ms() + 60_000;
    headers.insert(
        "lambda-runtime-deadline-ms",
        deadline.to_string().parse().unwrap(),
    );
    headers.insert(
        "lambda-runtime-invoked-function-arn",
        "arn:aws:lambda:us-east-1:123456789012:function:bench"
            .parse()
            .unwrap(),
    );
    headers.insert(
        "lambda-runtime-trace-id",
        "Root=1-00000000-000000000000000000000000".parse().unwrap(),
    );
    (headers, event.to_string())
}

async fn respond(
    State(rt): State<Runtime>,
    UrlPath((_, kind)): UrlPath<(String, String)>,
    body: String,
) -> &'static str {
    *rt.answer.lock().unwrap() = Some((Instant::now(), format!("{kind}: {body}")));
    rt.done.notify_one();
    "{}"
}

async fn init_error(State(rt): State<Runtime>, body: String) -> &'static str {
    *rt.answer.lock().unwrap() = Some((Instant::now(), format!("init error: {body}")));
    rt.done.notify_one();
    "{}"
}

struct Measure {
    cold_start_ms: f64,
    peak_rss_kib: u64,
    answer: String,
}

/// Starts `binary` against a Runtime API that hands it `event`; waits for the answer.
async fn run_once(binary: &Path, env: &[(String, String)], event: Value) -> Measure {
    let rt = Runtime {
        event: Arc::new(Mutex::new(Some(event))),
        answer: Arc::default(),
        done: Arc::new(Notify::new()),
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
        .env("AWS_LAMBDA_FUNCTION_NAME", "bench")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
        .env("AWS_LAMBDA_LOG_GROUP_NAME", "bench")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e} (build with cargo build --release --bins)",
                binary.display()
            )
        });
    tokio::time::timeout(Duration::from_secs(120), rt.done.notified())
        .await
        .expect("the function answered");
    let (at, answer) = rt.answer.lock().unwrap().clone().unwrap();
    let pid = child.id().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let peak_rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    child.kill().await.ok();
    server.abort();
    Measure {
        cold_start_ms: (at - started).as_secs_f64() * 1000.0,
        peak_rss_kib,
        answer,
    }
}

fn release_binary(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/release")
        .join(name)
}

fn event_file(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../events")
        .join(name);
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

const RUNS: usize = 5;

#[tokio::main]
async fn main() {
    if !testkit::bench_requested() {
        return;
    }
    let world = World::with(|c| c.inflight_cap = 1000).await;
    world.grant("demo-user-0001", 1_000_000, None).await;
    let mock = mock_provider::start(Knobs::default()).await.unwrap();
    let config = &world.state.config;
    let env: Vec<(String, String)> = [
        ("TABLE_NAME", config.table.clone()),
        ("QUEUE_URL", config.queue_url.clone()),
        ("BUCKET_NAME", config.bucket.clone()),
        ("AWS_ENDPOINT_URL", testkit::endpoint()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("PROVIDER_BASE_URL", mock.api_base()),
        ("PROVIDER_API_KEY", mock.api_key()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();

    let mut rows = Vec::new();
    for function in ["enqueue", "api", "generator", "sweeper", "deadletter"] {
        let binary = release_binary(function);
        let size = std::fs::metadata(&binary)
            .map(|m| m.len())
            .unwrap_or_else(|_| {
                panic!(
                    "{} missing: run cargo build --release --bins",
                    binary.display()
                )
            });
        let mut cold = Vec::new();
        let mut peak = 0;
        let mut answer = String::new();
        for _ in 0..RUNS {
            let event = match function {
                "enqueue" => event_file("enqueue-image.json"),
                "api" => event_file("api-balance.json"),
                "generator" => full_batch(&world).await,
                "sweeper" => event_file("sweeper-scheduled.json"),
                _ => event_file("deadletter-dlq.json"),
            };
            let measure = run_once(&binary, &env, event).await;
            cold.push(measure.cold_start_ms);
            peak = peak.max(measure.peak_rss_kib);
            answer = measure.answer;
        }
        cold.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let median = cold[cold.len() / 2];
        println!("{function:10} bootstrap {:6.1} MB  cold start p50 {median:6.1} ms (min {:.1}, max {:.1})  peak RSS {:6.1} MB  -> {}",
            size as f64 / 1e6, cold[0], cold[cold.len() - 1], peak as f64 / 1024.0, answer.chars().take(60).collect::<String>());
        rows.push(json!({
            "function": function,
            "bootstrap_bytes": size,
            "cold_start_ms_p50": (median * 10.0).round() / 10.0,
            "cold_start_ms_min": (cold[0] * 10.0).round() / 10.0,
            "cold_start_ms_max": (cold[cold.len() - 1] * 10.0).round() / 10.0,
            "peak_rss_kib": peak,
            "runs": RUNS,
            "event": match function { "generator" => "full batch: 10 sessions x 4 images", "enqueue" => "POST image generation", "api" => "GET balance", "sweeper" => "scheduled run", _ => "one dead letter" },
        }));
    }
    testkit::record_bench_results(serde_json::Map::from_iter([(
        "lambda".to_owned(),
        Value::Array(rows),
    )]));
}

/// An SQS event of ten fresh 4-image sessions.
async fn full_batch(world: &World) -> Value {
    let mut records = Vec::new();
    for i in 0..10 {
        let event = Event::new(shared::routes::enqueue::IMAGE_ROUTE, user("demo-user-0001"))
            .body(json!({"prompt": format!("bench batch {i}"), "n": 4, "size": "2K"}).to_string());
        let (status, accepted) =
            parts(shared::routes::enqueue::handle(&world.state, event.build()).await);
        assert_eq!(status, 202, "{accepted}");
        let body = json!({"session_id": accepted["session_id"], "user_id": "demo-user-0001", "attempt": 0, "enqueued_at": shared::clock::now_ms()});
        records.push(json!({
            "messageId": format!("bench-{i}"), "receiptHandle": "r", "body": body.to_string(),
            "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {},
            "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:q", "awsRegion": "us-east-1",
        }));
    }
    world.drain_queue().await;
    json!({"Records": records})
}
