//! The local stack: the whole pipeline on one machine, without an AWS account.
//!
//! `local up` reads template.yaml and plays AWS around the real function binaries:
//!
//! - [`template`]: functions, events, routes and resources read from template.yaml;
//! - [`resources`]: the tables, queues and buckets created on moto (and the SDK configuration
//!   that reaches moto, shared by the start-up and the CLI);
//! - [`gateway`]: API Gateway (HTTP API, payload 2.0) with a local JWT authorizer ([`jwt`]);
//! - [`poller`]: the SQS event source mappings (batches, partial batch failures, redrive);
//! - [`schedule`]: the EventBridge schedules;
//! - [`invoke`]: the Lambda Invoke API of `cargo lambda watch`, through which all of them
//!   deliver their events;
//! - [`wiring`]: how the template's settings reach the processes: each function's
//!   environment, the gateway's authorizer and CORS, the events that warm functions up;
//! - [`stack`]: the orchestration of `local up`, one step per component (moto, the mock,
//!   `cargo lambda watch`, the gateway, pollers, schedules, the state file);
//! - [`demo`]: the demo user and the demo run, which `stack` calls and which needs nothing
//!   of it;
//! - [`procs`], [`build`], [`log`], [`state`], [`client`]: processes, builds, logs, the state
//!   file and a JSON client.

pub mod build;
pub mod client;
pub mod demo;
pub mod gateway;
pub mod invoke;
pub mod jwt;
pub mod log;
pub mod poller;
pub mod procs;
pub mod resources;
pub mod schedule;
pub mod stack;
pub mod state;
pub mod template;
pub mod wiring;

use std::path::{Path, PathBuf};

/// The repository root: the nearest directory, from `start` up, holding template.yaml and a
/// Cargo.toml.
pub fn find_root(start: &Path) -> Option<PathBuf> {
    let mut dir = Some(start);
    while let Some(d) = dir {
        if d.join("template.yaml").is_file() && d.join("Cargo.toml").is_file() {
            return Some(d.to_path_buf());
        }
        dir = d.parent();
    }
    None
}

/// The default state directory: `$LOCAL_STACK_DIR`, else `<root>/target/local-stack`.
pub fn default_state_dir(root: &Path) -> PathBuf {
    match std::env::var("LOCAL_STACK_DIR") {
        Ok(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => root.join("target").join("local-stack"),
    }
}
