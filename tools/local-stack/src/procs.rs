//! Child processes: each in its own process group, killed with its parent (PR_SET_PDEATHSIG),
//! its output logged line by line with a prefix, and every descendant marked by an environment
//! variable ([`RUN_MARKER`]) so that a last sweep can find anything that escaped its group.

use std::io;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::log::Logger;

/// Environment variable that marks every process of one `local up` run (value: the run id).
pub const RUN_MARKER: &str = "LOCAL_STACK_RUN";

/// How a process is stopped.
#[derive(Clone, Copy, Debug)]
pub enum Stop {
    /// SIGKILL at once (moto takes many seconds to exit on SIGTERM and keeps nothing).
    Kill,
    /// SIGTERM to the group, SIGKILL after the grace period.
    Term(Duration),
}

/// A running child process.
pub struct Proc {
    /// Component name (the log prefix).
    pub name: &'static str,
    child: Child,
    pid: i32,
    stop: Stop,
}

/// What of a line of output goes to stdout: `None` keeps it in the log file only, `Some(text)`
/// shows `text` (the log file always gets the line as it was).
pub type LineFilter = fn(&str) -> Option<String>;

/// Spawns `command` in its own process group with the run marker, logging its stdout and
/// stderr under `name`. Lines of stdout are also sent to the returned receiver (for readiness
/// lines such as `listening on ...`).
pub fn spawn(
    mut command: Command,
    name: &'static str,
    run_id: &str,
    stop: Stop,
    log: &Logger,
    show: LineFilter,
) -> io::Result<(Proc, mpsc::UnboundedReceiver<String>)> {
    command
        .env(RUN_MARKER, run_id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let death_signal = match stop {
        Stop::Kill => libc::SIGKILL,
        Stop::Term(_) => libc::SIGTERM,
    };
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    let (tx, rx) = mpsc::unbounded_channel();
    if let Some(out) = child.stdout.take() {
        pump(out, name, log.clone(), show, Some(tx));
    }
    if let Some(err) = child.stderr.take() {
        pump(err, name, log.clone(), show, None);
    }
    Ok((
        Proc {
            name,
            child,
            pid,
            stop,
        },
        rx,
    ))
}

fn pump(
    stream: impl AsyncRead + Unpin + Send + 'static,
    name: &'static str,
    log: Logger,
    show: LineFilter,
    lines: Option<mpsc::UnboundedSender<String>>,
) {
    tokio::spawn(async move {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf);
                    // A progress bar redraws with '\r': keep its last state only.
                    let text = text.trim_end().rsplit('\r').next().unwrap_or_default();
                    match show(text) {
                        Some(shown) if shown == text => log.line(name, text),
                        Some(shown) => {
                            log.file_only(name, text);
                            log.stdout_only(name, &shown);
                        }
                        None => log.file_only(name, text),
                    }
                    if let Some(tx) = &lines {
                        let _ = tx.send(text.to_owned());
                    }
                }
            }
        }
    });
}

impl Proc {
    /// The process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether it has exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Stops the process and its group, and reaps it.
    pub async fn stop(&mut self) {
        if self.exited().is_some() {
            signal_group(self.pid, libc::SIGKILL);
            return;
        }
        match self.stop {
            Stop::Kill => signal_group(self.pid, libc::SIGKILL),
            Stop::Term(grace) => {
                signal_group(self.pid, libc::SIGTERM);
                if tokio::time::timeout(grace, self.child.wait())
                    .await
                    .is_err()
                {
                    signal_group(self.pid, libc::SIGKILL);
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        // Whatever is left of the group (a grandchild that ignored SIGTERM).
        signal_group(self.pid, libc::SIGKILL);
    }
}

/// Sends `signal` to the process group led by `pid`.
pub fn signal_group(pid: i32, signal: i32) {
    if pid > 0 {
        // SAFETY: plain syscall; a vanished group is reported as ESRCH and ignored.
        unsafe {
            libc::kill(-pid, signal);
        }
    }
}

/// Sends `signal` to one process.
pub fn signal_pid(pid: i32, signal: i32) -> bool {
    // SAFETY: plain syscall.
    pid > 0 && unsafe { libc::kill(pid, signal) } == 0
}

/// Processes (other than this one) whose environment carries `RUN_MARKER=run_id`.
pub fn marked(run_id: &str) -> Vec<(i32, String)> {
    let needle = format!("{RUN_MARKER}={run_id}");
    let me = std::process::id() as i32;
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ
            .split(|b| *b == 0)
            .any(|var| var == needle.as_bytes())
        {
            let cmdline = std::fs::read(entry.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default();
            // A zombie has an empty cmdline and is gone once its parent reaps it.
            if !cmdline.trim().is_empty() {
                found.push((pid, cmdline.trim().to_owned()));
            }
        }
    }
    found
}

/// Kills every process left with the run marker; returns what it killed.
pub fn sweep(run_id: &str) -> Vec<(i32, String)> {
    let left = marked(run_id);
    for (pid, _) in &left {
        signal_pid(*pid, libc::SIGKILL);
    }
    left
}
