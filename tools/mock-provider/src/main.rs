//! `mock-provider --addr 127.0.0.1:0 [knob flags]`: runs the mock provider until SIGINT/SIGTERM.

use clap::{ArgAction, CommandFactory, FromArgMatches, Parser};
use mock_provider::{EndpointKind, Knobs, Latency};
use std::io::Write;
use std::process::ExitCode;

/// Mock BytePlus ModelArk provider (Seedream images, Seedance video tasks).
/// Prints `listening on http://HOST:PORT` once ready.
#[derive(Parser, Debug)]
#[command(name = "mock-provider", args_override_self = true)]
struct Cli {
    /// Listen address (port 0 = pick a free port).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    addr: String,
    /// Expected bearer key (default mock-key).
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// PRNG seed (default 42).
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Base URL used in returned file URLs (default http://ADDR).
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
    /// Time a video task stays queued (default 200).
    #[arg(long, value_name = "MS")]
    queued_ms: Option<u64>,
    /// Time a video task stays running (default 800).
    #[arg(long, value_name = "MS")]
    running_ms: Option<u64>,
    /// Latency of every API endpoint: MS or MIN..MAX.
    #[arg(long, value_name = "SPEC", value_parser = Latency::parse)]
    latency: Option<Latency>,
    /// Latency of POST /images/generations.
    #[arg(long, value_name = "SPEC", value_parser = Latency::parse)]
    latency_images: Option<Latency>,
    /// Latency of POST /contents/generations/tasks.
    #[arg(long, value_name = "SPEC", value_parser = Latency::parse)]
    latency_task_create: Option<Latency>,
    /// Latency of GET /contents/generations/tasks/{id}.
    #[arg(long, value_name = "SPEC", value_parser = Latency::parse)]
    latency_task_get: Option<Latency>,
    /// Latency of GET /contents/generations/tasks.
    #[arg(long, value_name = "SPEC", value_parser = Latency::parse)]
    latency_task_list: Option<Latency>,
    /// Latency of DELETE /contents/generations/tasks/{id}.
    #[arg(long, value_name = "SPEC", value_parser = Latency::parse)]
    latency_task_delete: Option<Latency>,
    /// Latency of GET /files/...
    #[arg(long, value_name = "SPEC", value_parser = Latency::parse)]
    latency_files: Option<Latency>,
    /// Failure probability for an error code (repeatable).
    #[arg(long, value_name = "CODE=P", value_parser = failure_rate, action = ArgAction::Append)]
    fail_rate: Vec<(String, f64)>,
    /// The next N API requests get 429.
    #[arg(long = "burst-429", value_name = "N")]
    burst_429: Option<u32>,
    /// Probability that a request hangs.
    #[arg(long, value_name = "P")]
    hang_rate: Option<f64>,
    /// Per-image content-filter rejection probability.
    #[arg(long, value_name = "P")]
    reject_rate: Option<f64>,
    /// Disable the task list endpoint (answers 404).
    #[arg(long)]
    no_list: bool,
    /// Request bodies kept in stats (default 50).
    #[arg(long, value_name = "N")]
    history: Option<usize>,
    /// JSON merge patch applied to the knobs (after the other flags).
    #[arg(long, value_name = "JSON")]
    knobs: Option<String>,
}

fn failure_rate(v: &str) -> Result<(String, f64), String> {
    let (code, p) = v
        .rsplit_once(['=', ':'])
        .ok_or_else(|| format!("--fail-rate expects CODE=P, got {v:?}"))?;
    let p = p
        .parse()
        .map_err(|_| format!("--fail-rate: invalid number {p:?}"))?;
    Ok((code.to_string(), p))
}

/// The endpoints each `--latency-*` flag sets; `--latency` sets them all.
const LATENCY_FLAGS: [(&str, EndpointKind); 5] = [
    ("latency_images", EndpointKind::Images),
    ("latency_task_create", EndpointKind::TaskCreate),
    ("latency_task_get", EndpointKind::TaskGet),
    ("latency_task_list", EndpointKind::TaskList),
    ("latency_task_delete", EndpointKind::TaskDelete),
];

/// The listen address and the knobs of a command line (without the program name).
fn parse_args(args: &[String]) -> Result<(String, Knobs), clap::Error> {
    let matches = Cli::command().try_get_matches_from(
        std::iter::once("mock-provider".to_string()).chain(args.iter().cloned()),
    )?;
    let cli = Cli::from_arg_matches(&matches)?;
    let mut knobs = Knobs::default();
    set(&mut knobs.api_key, cli.api_key);
    set(&mut knobs.seed, cli.seed);
    knobs.public_base_url = cli.public_url.or(knobs.public_base_url);
    set(&mut knobs.queued_ms, cli.queued_ms);
    set(&mut knobs.running_ms, cli.running_ms);
    set(&mut knobs.burst_429, cli.burst_429);
    set(&mut knobs.hang_rate, cli.hang_rate);
    set(&mut knobs.reject_rate, cli.reject_rate);
    set(&mut knobs.history, cli.history);
    knobs.list_enabled = !cli.no_list;
    knobs.failure_rates.extend(cli.fail_rate);
    set(
        knobs.latency.get_mut(EndpointKind::Files),
        cli.latency_files,
    );
    // `--latency` and a `--latency-<endpoint>` given after it both apply; one given before it
    // is overwritten by it, as the flags read left to right.
    let at = |id: &str| matches.indices_of(id).and_then(Iterator::last);
    let all_at = at("latency");
    let mut specific = [
        cli.latency_images,
        cli.latency_task_create,
        cli.latency_task_get,
        cli.latency_task_list,
        cli.latency_task_delete,
    ];
    for ((id, kind), latency) in LATENCY_FLAGS.iter().zip(specific.iter_mut()) {
        if at(id) < all_at {
            *latency = None;
        }
        let latency = latency.or(cli.latency);
        set(knobs.latency.get_mut(*kind), latency);
    }
    if let Some(p) = cli.knobs {
        let invalid = |e: String| clap::Error::raw(clap::error::ErrorKind::ValueValidation, e);
        let v: serde_json::Value = serde_json::from_str(&p)
            .map_err(|e| invalid(format!("--knobs: invalid JSON: {e}\n")))?;
        knobs = knobs.patched(&v).map_err(|e| invalid(format!("{e}\n")))?;
    }
    Ok((cli.addr, knobs))
}

/// Sets a knob to the flag's value when the flag was given.
fn set<T>(knob: &mut T, flag: Option<T>) {
    if let Some(v) = flag {
        *knob = v;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // clap prints the help (exit 0) or the error (exit 2) itself.
    let (addr, knobs) = parse_args(&args).unwrap_or_else(|e| e.exit());
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mock-provider: cannot bind {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let handle = mock_provider::serve(listener, knobs).await;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {}", handle.base_url());
        let _ = out.flush();
    }
    wait_for_signal().await;
    handle.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn cli() {
        let (addr, k) = parse_args(&args(
            "--addr 127.0.0.1:9999 --seed 7 --latency 100..200 --latency-images=50 \
             --fail-rate InternalServiceError=0.5 --fail-rate RateLimitExceeded.EndpointRPMExceeded=0.1 \
             --burst-429 2 --no-list --knobs {\"reject_rate\":0.25}",
        ))
        .unwrap();
        assert_eq!(addr, "127.0.0.1:9999");
        assert_eq!(k.seed, 7);
        assert_eq!(k.latency.images, Latency::fixed(50));
        assert_eq!(k.latency.task_get, Latency::uniform(100, 200));
        assert_eq!(k.latency.files, Latency::ZERO);
        assert_eq!(k.failure_rates["InternalServiceError"], 0.5);
        assert_eq!(
            k.failure_rates["RateLimitExceeded.EndpointRPMExceeded"],
            0.1
        );
        assert_eq!(k.burst_429, 2);
        assert!(!k.list_enabled);
        assert_eq!(k.reject_rate, 0.25);
        assert!(parse_args(&args("--bogus")).is_err());
        let (_, k) =
            parse_args(&args("--latency-images 5 --latency 7 --latency-task-get 9")).unwrap();
        assert_eq!(k.latency.images, Latency::fixed(7));
        assert_eq!(k.latency.task_get, Latency::fixed(9));
        let (_, k) = parse_args(&args("--seed 1 --seed 2")).unwrap();
        assert_eq!(k.seed, 2);
    }
}
