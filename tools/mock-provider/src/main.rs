//! `mock-provider --addr 127.0.0.1:0 [knob flags]`: runs the mock provider until SIGINT/SIGTERM.

use mock_provider::{EndpointKind, Knobs, Latency, LatencyKnobs};
use std::io::Write;
use std::process::ExitCode;

const USAGE: &str = "\
Usage: mock-provider [OPTIONS]

Mock BytePlus ModelArk provider (Seedream images, Seedance video tasks).
Prints `listening on http://HOST:PORT` once ready.

Options:
  --addr ADDR                 listen address (default 127.0.0.1:0, port 0 = pick a free port)
  --api-key KEY               expected bearer key (default mock-key)
  --seed N                    PRNG seed (default 42)
  --public-url URL            base URL used in returned file URLs (default http://ADDR)
  --queued-ms MS              time a video task stays queued (default 200)
  --running-ms MS             time a video task stays running (default 800)
  --latency SPEC              latency of every API endpoint: MS or MIN..MAX
  --latency-images SPEC       latency of POST /images/generations
  --latency-task-create SPEC  latency of POST /contents/generations/tasks
  --latency-task-get SPEC     latency of GET  /contents/generations/tasks/{id}
  --latency-task-list SPEC    latency of GET  /contents/generations/tasks
  --latency-task-delete SPEC  latency of DELETE /contents/generations/tasks/{id}
  --latency-files SPEC        latency of GET /files/...
  --fail-rate CODE=P          failure probability for an error code (repeatable)
  --burst-429 N               the next N API requests get 429
  --hang-rate P               probability that a request hangs
  --reject-rate P             per-image content-filter rejection probability
  --no-list                   disable the task list endpoint (answers 404)
  --history N                 request bodies kept in stats (default 50)
  --knobs JSON                JSON merge patch applied to the knobs (after the other flags)
  -h, --help                  print this help
";

fn parse_args(args: &[String]) -> Result<(String, Knobs), String> {
    let mut addr = "127.0.0.1:0".to_string();
    let mut knobs = Knobs::default();
    let mut patch: Option<String> = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = || -> Result<String, String> {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        fn num<T: std::str::FromStr>(flag: &str, v: String) -> Result<T, String> {
            v.parse()
                .map_err(|_| format!("{flag}: invalid number {v:?}"))
        }
        let latency = |v: String| Latency::parse(&v);
        match flag {
            "-h" | "--help" => return Err(String::new()),
            "--addr" => addr = value()?,
            "--api-key" => knobs.api_key = value()?,
            "--seed" => knobs.seed = num(flag, value()?)?,
            "--public-url" => knobs.public_base_url = Some(value()?),
            "--queued-ms" => knobs.queued_ms = num(flag, value()?)?,
            "--running-ms" => knobs.running_ms = num(flag, value()?)?,
            "--latency" => {
                let files = knobs.latency.files;
                knobs.latency = LatencyKnobs::api(latency(value()?)?);
                knobs.latency.files = files;
            }
            "--latency-images" => knobs.latency.images = latency(value()?)?,
            "--latency-task-create" => knobs.latency.task_create = latency(value()?)?,
            "--latency-task-get" => knobs.latency.task_get = latency(value()?)?,
            "--latency-task-list" => knobs.latency.task_list = latency(value()?)?,
            "--latency-task-delete" => knobs.latency.task_delete = latency(value()?)?,
            "--latency-files" => *knobs.latency.get_mut(EndpointKind::Files) = latency(value()?)?,
            "--fail-rate" => {
                let v = value()?;
                let (code, p) = v
                    .rsplit_once(['=', ':'])
                    .ok_or_else(|| format!("--fail-rate expects CODE=P, got {v:?}"))?;
                knobs
                    .failure_rates
                    .insert(code.to_string(), num(flag, p.to_string())?);
            }
            "--burst-429" => knobs.burst_429 = num(flag, value()?)?,
            "--hang-rate" => knobs.hang_rate = num(flag, value()?)?,
            "--reject-rate" => knobs.reject_rate = num(flag, value()?)?,
            "--no-list" => knobs.list_enabled = false,
            "--history" => knobs.history = num(flag, value()?)?,
            "--knobs" => patch = Some(value()?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if let Some(p) = patch {
        let v: serde_json::Value =
            serde_json::from_str(&p).map_err(|e| format!("--knobs: invalid JSON: {e}"))?;
        knobs = knobs.patched(&v)?;
    }
    Ok((addr, knobs))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (addr, knobs) = match parse_args(&args) {
        Ok(v) => v,
        Err(e) if e.is_empty() => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("mock-provider: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
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
    }
}
