//! Pipeline benchmarks against moto and the mock provider, through the real code paths.
//!
//! - `four_images`: wall time of a 4-image session with the mock at a fixed per-image latency,
//!   as a ratio to one image's latency, beside the old system's sequential behaviour (the same
//!   generator with one provider call at a time).
//! - `sweeper`: one sweep over 1,000 due video tasks at a fixed per-call latency, with the list
//!   endpoint (`filter.task_ids`, 500 a call) and with one GET per task.
//!
//! `scripts/with-moto.sh cargo bench -p shared --bench pipeline [four_images] [sweeper]`
//! prints a table and writes `target/bench/pipeline.json`.

use std::time::Instant;

use mock_provider::{Knobs, Latency};
use serde_json::{json, Value};
use shared::routes::enqueue::{handle, IMAGE_ROUTE};
use testkit::{
    deliver_once, generator_for, long_deadline, parts, rendering_sessions, sweeper_for, user,
    Event, World,
};

const IMAGE_LATENCY_MS: u64 = 500;
const TASK_CALL_LATENCY_MS: u64 = 200;
const TASKS: usize = 1000;
const RUNS: usize = 3;

#[tokio::main]
async fn main() {
    if !testkit::bench_requested() {
        return;
    }
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let enabled = |name: &str| wanted.is_empty() || wanted.iter().any(|w| w == name);
    let mut results = serde_json::Map::new();
    if enabled("four_images") {
        results.insert("four_images".into(), four_images().await);
    }
    if enabled("enqueue") {
        results.insert("enqueue".into(), enqueue().await);
    }
    if enabled("sweeper") {
        results.insert("sweeper".into(), sweeper().await);
    }
    testkit::record_bench_results(results.clone());
    println!(
        "{}",
        serde_json::to_string_pretty(&Value::Object(results)).unwrap()
    );
}

const ENQUEUES: usize = 300;

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = ((p / 100.0) * (samples.len() - 1) as f64).round() as usize;
    (samples[rank] * 100.0).round() / 100.0
}

/// The enqueue's AWS work measured two ways, side by side: the bare requests the design makes
/// (the reserve transaction and the SendMessage, sent straight to moto), and the whole handler
/// in process (validation, pricing, the same requests, the response).
async fn enqueue() -> Value {
    let world = World::with(|c| c.inflight_cap = 100_000).await;
    world.grant("bench", 10_000_000, None).await;
    let mut bare = Vec::with_capacity(ENQUEUES);
    let mut handler = Vec::with_capacity(ENQUEUES);
    for i in 0..ENQUEUES {
        // Bare: the same two requests, built without the handler.
        let parsed = shared::generation::parse_image(
            json!({"prompt": format!("bare {i}")})
                .to_string()
                .as_bytes(),
            shared::generation::Limits {
                max_prompt_chars: 2000,
            },
        )
        .unwrap();
        let id = shared::table::keys::new_id();
        let session = shared::sessions::Session::queued(
            id.clone(),
            "bench",
            id.clone(),
            parsed.request,
            shared::clock::now_ms(),
        );
        let put = shared::table::put_new(world.table(), session.to_item().unwrap()).unwrap();
        let reservation = shared::ledger::Reservation {
            user_id: "bench",
            session_id: &id,
            amount: session.credits_reserved,
            model: &session.model,
            inflight_cap: 100_000,
        };
        let message = shared::queue::GenerationMessage {
            session_id: id.clone(),
            user_id: "bench".into(),
            attempt: 0,
            retries: 0,
            enqueued_at_ms: 0,
        };
        let started = Instant::now();
        shared::ledger::reserve(world.ddb(), world.table(), &reservation, vec![put])
            .await
            .unwrap();
        shared::queue::send(
            &world.state.aws.sqs,
            &world.state.config.queue_url,
            &message,
        )
        .await
        .unwrap();
        bare.push(started.elapsed().as_secs_f64() * 1000.0);

        let request = Event::new(IMAGE_ROUTE, user("bench"))
            .body(json!({"prompt": format!("handler {i}")}).to_string())
            .build();
        let started = Instant::now();
        let response = handle(&world.state, request).await;
        handler.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(response.status(), 202);
    }
    world.calls.reset();
    let request = Event::new(IMAGE_ROUTE, user("bench"))
        .body(image_body_for_count())
        .build();
    handle(&world.state, request).await;
    let calls = world.calls.count();
    let bare50 = percentile(&mut bare, 50.0);
    let handler50 = percentile(&mut handler, 50.0);
    println!("enqueue, {ENQUEUES} requests in turn against moto:");
    println!("  bare AWS requests (reserve transaction + SendMessage)  p50 {bare50:6.2} ms  p95 {:6.2} ms", percentile(&mut bare, 95.0));
    println!("  enqueue handler in process                            p50 {handler50:6.2} ms  p95 {:6.2} ms", percentile(&mut handler, 95.0));
    println!("  AWS calls on the happy path: {calls}");
    json!({
        "requests": ENQUEUES,
        "aws_calls": calls,
        "bare_p50_ms": bare50, "bare_p95_ms": percentile(&mut bare, 95.0), "bare_p99_ms": percentile(&mut bare, 99.0),
        "handler_p50_ms": handler50, "handler_p95_ms": percentile(&mut handler, 95.0), "handler_p99_ms": percentile(&mut handler, 99.0),
        "handler_over_bare": ((handler50 / bare50) * 100.0).round() / 100.0,
    })
}

fn image_body_for_count() -> String {
    json!({"prompt": "counted"}).to_string()
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[samples.len() / 2]
}

/// Wall time of one delivery of an `n`-image session, the generator allowed `concurrency`
/// provider calls at once.
async fn image_session(
    world: &World,
    mock: &mock_provider::MockHandle,
    n: u32,
    concurrency: usize,
) -> f64 {
    let mut generator = (*generator_for(world, mock).await).clone();
    generator.image_concurrency = concurrency;
    let generator = std::sync::Arc::new(generator);
    let event = Event::new(IMAGE_ROUTE, user("bench"))
        .body(json!({"prompt": "a lake at dawn", "n": n, "size": "2K"}).to_string());
    let (status, _) = parts(handle(&world.state, event.build()).await);
    assert_eq!(status, 202);
    let started = Instant::now();
    let (count, failed) = deliver_once(world, &generator).await;
    assert_eq!((count, failed.len()), (1, 0));
    started.elapsed().as_secs_f64() * 1000.0
}

async fn four_images() -> Value {
    let world = World::with(|c| c.inflight_cap = 50).await;
    world.grant("bench", 100_000, None).await;
    let mock = mock_provider::start(Knobs {
        latency: mock_provider::LatencyKnobs {
            images: Latency::fixed(IMAGE_LATENCY_MS),
            ..Default::default()
        },
        ..Knobs::default()
    })
    .await
    .unwrap();
    let mut one = Vec::new();
    let mut four = Vec::new();
    let mut sequential = Vec::new();
    for _ in 0..RUNS {
        one.push(image_session(&world, &mock, 1, 8).await);
        four.push(image_session(&world, &mock, 4, 8).await);
        sequential.push(image_session(&world, &mock, 4, 1).await);
    }
    let (one, four, sequential) = (median(one), median(four), median(sequential));
    let latency = IMAGE_LATENCY_MS as f64;
    println!("4-image session, mock at {IMAGE_LATENCY_MS} ms per image (median of {RUNS}):");
    println!(
        "  one image            {one:8.0} ms  ({:.2}x the per-image latency)",
        one / latency
    );
    println!(
        "  four images, at once {four:8.0} ms  ({:.2}x)",
        four / latency
    );
    println!(
        "  four images, in turn {sequential:8.0} ms  ({:.2}x, the old system's way)",
        sequential / latency
    );
    json!({
        "image_latency_ms": IMAGE_LATENCY_MS,
        "runs": RUNS,
        "one_image_ms": one.round(),
        "four_images_concurrent_ms": four.round(),
        "four_images_sequential_ms": sequential.round(),
        "concurrent_ratio": (four / latency * 100.0).round() / 100.0,
        "sequential_ratio": (sequential / latency * 100.0).round() / 100.0,
        "speedup": (sequential / four * 100.0).round() / 100.0,
    })
}

async fn sweep_mode(list_enabled: bool) -> Value {
    let world = World::new().await;
    let mock = mock_provider::start(Knobs {
        queued_ms: 0,
        running_ms: 0,
        list_enabled,
        latency: mock_provider::LatencyKnobs {
            task_list: Latency::fixed(TASK_CALL_LATENCY_MS),
            task_get: Latency::fixed(TASK_CALL_LATENCY_MS),
            ..Default::default()
        },
        // The point is the status calls: the smallest videos, or moto would store 5 GB.
        output_sizes: mock_provider::OutputSizes::minimal(),
        ..Knobs::default()
    })
    .await
    .unwrap();
    rendering_sessions(&world, &mock, TASKS, "bench").await;
    let before = mock.stats().requests;
    let sweeper = sweeper_for(&world, &mock, shared::sweeper::Settings::default());
    let started = Instant::now();
    let report = shared::sweeper::sweep(&sweeper, long_deadline()).await;
    let wall = started.elapsed();
    let after = mock.stats().requests;
    let (lists, gets) = (
        after.task_list - before.task_list,
        after.task_get - before.task_get,
    );
    assert_eq!(report.completed as usize, TASKS, "{report:?}");
    json!({
        "mode": if list_enabled { "list (filter.task_ids, 500 per call)" } else { "one GET per task (16 in flight)" },
        "wall_ms": wall.as_millis() as u64,
        "status_check_ms": report.status_check_ms,
        "status_calls": lists + gets,
        "list_calls": lists,
        "get_calls": gets,
        "completed": report.completed,
    })
}

async fn sweeper() -> Value {
    let list = sweep_mode(true).await;
    let gets = sweep_mode(false).await;
    println!("sweeper, {TASKS} due tasks, mock at {TASK_CALL_LATENCY_MS} ms per status call:");
    for mode in [&list, &gets] {
        println!(
            "  {:40} wall {:6} ms (status checks {:6} ms), {:4} provider status calls",
            mode["mode"].as_str().unwrap(),
            mode["wall_ms"],
            mode["status_check_ms"],
            mode["status_calls"]
        );
    }
    json!({"tasks": TASKS, "call_latency_ms": TASK_CALL_LATENCY_MS, "list": list, "gets": gets})
}
