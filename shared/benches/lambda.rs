//! Cold start, bootstrap size and peak memory of every function as it ships: the bootstraps
//! `cargo lambda build --release` writes (what `sam build` runs), each started as Lambda starts
//! it under a minimal Runtime API ([`testkit::runtime`]) with moto and the mock provider (at
//! its realistic output sizes) behind it. Cold start = process start to the first response;
//! peak memory = the process's VmHWM after answering. The generator's event is a full batch
//! (10 sessions of 4 images at 4K); the sweeper's run copies 16 finished videos.
//!
//! `make build-lambda && scripts/with-moto.sh cargo bench -p shared --bench lambda`

use std::path::Path;

use mock_provider::Knobs;
use serde_json::{json, Value};
use testkit::runtime::{bootstrap, function_env, invoke_once, sqs_event};
use testkit::{parts, user, Event, World};

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
    let env = function_env(&world, &mock);
    let generator = testkit::generator_for(&world, &mock).await;

    let mut rows = Vec::new();
    for function in [
        "enqueue",
        "api",
        "admin",
        "generator",
        "sweeper",
        "deadletter",
    ] {
        let binary = bootstrap(function);
        let size = std::fs::metadata(&binary).unwrap().len();
        let mut cold = Vec::new();
        let mut peak = 0;
        let mut answer = String::new();
        for _ in 0..RUNS {
            let event = match function {
                "enqueue" => event_file("enqueue-image.json"),
                "api" => event_file("api-balance.json"),
                "admin" => event_file("admin-dlq-list.json"),
                "generator" => full_batch(&world).await,
                "sweeper" => {
                    videos_due(&world, &generator, 16).await;
                    event_file("sweeper-scheduled.json")
                }
                _ => event_file("deadletter-dlq.json"),
            };
            let measure = invoke_once(&binary, &env, event).await;
            cold.push(measure.cold_start.as_secs_f64() * 1000.0);
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
            "event": match function { "generator" => "full batch: 10 sessions x 4 images at 4K (10 MB each)", "enqueue" => "POST image generation", "api" => "GET balance", "admin" => "GET dead letters", "sweeper" => "scheduled run copying 16 finished 5 s videos (5 MB each) and their last frames", _ => "one dead letter" },
        }));
    }
    testkit::record_bench_results(serde_json::Map::from_iter([(
        "lambda".to_owned(),
        Value::Array(rows),
    )]));
}

/// An SQS event of ten fresh 4-image sessions at 4K.
async fn full_batch(world: &World) -> Value {
    let mut ids = Vec::new();
    for i in 0..10 {
        let body = json!({"prompt": format!("bench batch {i}"), "n": 4, "size": "4K"});
        ids.push(enqueue(world, shared::routes::enqueue::IMAGE_ROUTE, body).await);
    }
    world.drain_queue().await;
    sqs_event("demo-user-0001", &ids)
}

/// `count` video sessions whose tasks have finished and are due for a check.
async fn videos_due(
    world: &World,
    generator: &std::sync::Arc<shared::generator::Generator>,
    count: usize,
) {
    for i in 0..count {
        let body = json!({"prompt": format!("bench video {i}"), "duration": 5});
        enqueue(world, shared::routes::enqueue::VIDEO_ROUTE, body).await;
    }
    let mut created = 0;
    while created < count {
        let (delivered, failed) = testkit::deliver_once(world, generator).await;
        assert!(delivered > 0 && failed.is_empty(), "{failed:?}");
        created += delivered;
    }
    // The mock's tasks run for a second (queued 200 ms, running 800 ms).
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
}

async fn enqueue(world: &World, route: &'static str, body: Value) -> String {
    let event = Event::new(route, user("demo-user-0001")).body(body.to_string());
    let (status, accepted) =
        parts(shared::routes::enqueue::handle(&world.state, event.build()).await);
    assert_eq!(status, 202, "{accepted}");
    accepted["session_id"].as_str().unwrap().to_owned()
}
