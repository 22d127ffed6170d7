//! The ticker: every second it closes the recorder's window (one timeline sample) and, when
//! asked, prints the live progress line on stderr: redrawn in place on a terminal, one line
//! per second in a CI log.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::classify::ErrorClass;
use crate::metrics::{Recorder, Snapshot};
use crate::stages::format_duration;

/// The running ticker.
pub(crate) struct Ticker {
    task: JoinHandle<()>,
    recorder: Arc<Recorder>,
    print: bool,
    tty: bool,
}

/// Starts ticking one second after the recorder's start.
pub(crate) fn spawn(
    recorder: Arc<Recorder>,
    print: bool,
    planned: Duration,
    open_model: bool,
) -> Ticker {
    let tty = std::io::stderr().is_terminal();
    let task = {
        let recorder = recorder.clone();
        tokio::spawn(async move {
            let start = Instant::from_std(recorder.start());
            let mut tick =
                tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let snapshot = recorder.tick(Instant::now().into_std());
                if print {
                    emit(&line(&snapshot, planned, open_model), tty);
                }
            }
        })
    };
    Ticker {
        task,
        recorder,
        print,
        tty,
    }
}

impl Ticker {
    /// Stops ticking and records the last, partial second.
    pub(crate) async fn finish(self) {
        self.task.abort();
        let _ = self.task.await;
        let _ = self.recorder.tick(std::time::Instant::now());
        if self.print && self.tty {
            eprintln!();
        }
    }
}

fn emit(line: &str, tty: bool) {
    let mut err = std::io::stderr().lock();
    if tty {
        let _ = write!(err, "\r\x1b[2K{line}");
    } else {
        let _ = writeln!(err, "{line}");
    }
    let _ = err.flush();
}

/// The progress line for one snapshot.
pub(crate) fn line(s: &Snapshot, planned: Duration, open_model: bool) -> String {
    let elapsed = Duration::from_secs(s.elapsed.round() as u64);
    let phase = if s.elapsed > planned.as_secs_f64() + 0.5 {
        "drain".to_string()
    } else {
        format!("{}/{}", format_duration(elapsed), format_duration(planned))
    };
    let load = if open_model {
        format!(
            "rate {:.1}/s target, in flight {}, dropped {}",
            s.target, s.vus, s.dropped
        )
    } else {
        format!("vus {}/{:.0}", s.vus, s.target.ceil())
    };
    let error_rate = if s.iterations > 0 {
        s.failed as f64 * 100.0 / s.iterations as f64
    } else {
        0.0
    };
    let classes = ErrorClass::ALL
        .iter()
        .map(|c| format!("{}:{}", c.short(), s.errors[c.index()]))
        .collect::<Vec<_>>()
        .join(" ");
    let ms = |v: Option<f64>| match v {
        None => "-".to_string(),
        Some(v) if v >= 1000.0 => format!("{:.2}s", v / 1000.0),
        Some(v) => format!("{v:.1}ms"),
    };
    format!(
        "[{phase:>11}] {load}  reqs {} ({}/s)  errors {error_rate:.1}% [{classes}]  p95 {}  e2e p95 {} ({} done, {} polling)",
        s.generate,
        s.generate_last_second,
        ms(s.p95),
        ms(s.e2e_p95),
        s.sessions_completed,
        s.polling,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_shows_users_rate_errors_and_p95() {
        let s = Snapshot {
            elapsed: 12.0,
            vus: 5,
            target: 5.0,
            generate: 120,
            generate_last_second: 10,
            failed: 3,
            iterations: 120,
            errors: [1, 2, 0, 0],
            p95: Some(45.21),
            e2e_p95: Some(3210.0),
            sessions_completed: 40,
            polling: 7,
            dropped: 0,
        };
        let l = line(&s, Duration::from_secs(70), false);
        assert!(l.contains("12s/1m10s"), "{l}");
        assert!(l.contains("vus 5/5"), "{l}");
        assert!(l.contains("reqs 120 (10/s)"), "{l}");
        assert!(l.contains("errors 2.5% [402:1 429:2 5xx:0 other:0]"), "{l}");
        assert!(l.contains("p95 45.2ms"), "{l}");
        assert!(l.contains("e2e p95 3.21s (40 done, 7 polling)"), "{l}");
        let open = line(&s, Duration::from_secs(5), true);
        assert!(
            open.contains("drain") && open.contains("in flight 5"),
            "{open}"
        );
    }
}
