//! The test world of the `shared` crate's integration tests and benchmarks, compiled once for
//! all of them (it used to be a module included into every test target).
//!
//! - [`world`]: an isolated table, queues and bucket per test, created on moto from
//!   template.yaml; SDK call counting; ledger assertions.
//! - [`events`]: API Gateway payload-v2 events and their answers.
//! - [`runtime`]: the shipped bootstraps run under a minimal Lambda Runtime API.
//! - [`workers`]: the generator and sweeper wired to a mock provider, and deliveries as the
//!   SQS event source mapping makes them.

pub mod events;
pub mod runtime;
pub mod workers;
pub mod world;

pub use events::*;
pub use workers::*;
pub use world::*;

/// Whether a benchmark binary was started by `cargo bench` (which passes `--bench`):
/// `cargo test --all-targets` builds and starts benchmarks too, and they must not run there.
pub fn bench_requested() -> bool {
    let requested = std::env::args().any(|a| a == "--bench");
    if !requested {
        println!("benchmark skipped: run it with cargo bench");
    }
    requested
}

/// Merges a benchmark's results into `target/bench/pipeline.json`, which `make bench` renders
/// into docs/PERFORMANCE.md (each benchmark owns its top-level keys).
pub fn record_bench_results(results: serde_json::Map<String, serde_json::Value>) {
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::create_dir_all(&out).unwrap();
    let path = out.join("pipeline.json");
    let mut all: serde_json::Map<String, serde_json::Value> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    all.extend(results);
    std::fs::write(&path, serde_json::to_vec_pretty(&all).unwrap()).unwrap();
}
