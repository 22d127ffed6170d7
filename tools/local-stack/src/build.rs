//! The workspace: its binaries and target directory (`cargo metadata`), and the debug builds
//! that `cargo lambda watch` would otherwise run on the first invocation, shown as a progress
//! line.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::log::Logger;

/// What `cargo metadata` says about the workspace.
#[derive(Clone, Debug)]
pub struct Workspace {
    /// The binaries of the workspace members.
    pub binaries: BTreeSet<String>,
    /// Those of packages under `functions/`.
    pub function_binaries: BTreeSet<String>,
    /// The target directory.
    pub target_dir: PathBuf,
}

/// The cargo to run (the one that runs us, when it does).
pub fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Reads the workspace's binaries and target directory.
pub async fn workspace(root: &Path) -> Result<Workspace, String> {
    let out = Command::new(cargo())
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(root)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("cargo metadata: {e}"))?;
    let mut binaries = BTreeSet::new();
    let mut function_binaries = BTreeSet::new();
    for package in meta["packages"].as_array().into_iter().flatten() {
        let in_functions = package["manifest_path"]
            .as_str()
            .and_then(|m| Path::new(m).parent()?.parent()?.file_name()?.to_str())
            == Some("functions");
        for target in package["targets"].as_array().into_iter().flatten() {
            let is_bin = target["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"));
            if is_bin {
                if let Some(name) = target["name"].as_str() {
                    binaries.insert(name.to_owned());
                    if in_functions {
                        function_binaries.insert(name.to_owned());
                    }
                }
            }
        }
    }
    let target_dir = meta["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .ok_or("cargo metadata has no target_directory")?;
    Ok(Workspace {
        binaries,
        function_binaries,
        target_dir,
    })
}

/// Builds each binary with `cargo build --bin <name>` (separately, so that each gets the very
/// features `cargo run --bin <name>` under `cargo lambda watch` resolves, and the first
/// invocation finds it built), showing a progress line.
pub async fn build(root: &Path, binaries: &[String], log: &Logger) -> Result<(), String> {
    let started = Instant::now();
    for (i, bin) in binaries.iter().enumerate() {
        let label = format!("building {bin} ({}/{})", i + 1, binaries.len());
        build_one(root, bin, &label, started, log).await?;
    }
    log.end_progress();
    log.line(
        "build",
        &format!(
            "{} binaries ready in {:.1} s: {}",
            binaries.len(),
            started.elapsed().as_secs_f64(),
            binaries.join(", ")
        ),
    );
    Ok(())
}

async fn build_one(
    root: &Path,
    bin: &str,
    label: &str,
    started: Instant,
    log: &Logger,
) -> Result<(), String> {
    let mut child = Command::new(cargo())
        .args(["build", "--bin", bin])
        .current_dir(root)
        .env("CARGO_TERM_PROGRESS_WHEN", "always")
        .env("CARGO_TERM_PROGRESS_WIDTH", "100")
        .env("CARGO_TERM_COLOR", "never")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    let mut stderr = child.stderr.take().expect("piped");
    let mut transcript: Vec<String> = Vec::new();
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    let mut status_text = String::from("checking");
    loop {
        let n = stderr.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            if b == b'\r' || b == b'\n' {
                let segment = String::from_utf8_lossy(&pending).trim().to_owned();
                pending.clear();
                if segment.is_empty() {
                    continue;
                }
                if segment.starts_with("Building [") {
                    status_text = segment;
                } else {
                    if let Some(name) = segment.strip_prefix("Compiling ") {
                        status_text = format!("compiling {name}");
                    }
                    log.file_only("build", &segment);
                    transcript.push(segment);
                }
                log.progress(
                    "build",
                    &format!("{label}: {status_text} [{}s]", started.elapsed().as_secs()),
                );
            } else {
                pending.push(b);
            }
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| format!("cargo build --bin {bin}: {e}"))?;
    if status.success() {
        return Ok(());
    }
    log.end_progress();
    let start = transcript.len().saturating_sub(60);
    for line in &transcript[start..] {
        log.line("build", line);
    }
    Err(format!("cargo build --bin {bin} failed ({status})"))
}
