//! One place for every log line: stdout and a log file, each line prefixed by its component
//! (`[moto]`, `[mock]`, `[lambda]`, `[gateway]`, `[poller]`, ...). A progress line (the first
//! build) is redrawn in place on a terminal and printed now and then otherwise.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest line kept whole in the log file.
const MAX_FILE_LINE: usize = 4000;

/// The shared logger.
#[derive(Clone)]
pub struct Logger {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    file: Option<std::fs::File>,
    tty: bool,
    progress_shown: bool,
    last_progress: Option<Instant>,
}

impl Logger {
    /// Logs to stdout and, when given, to `file` (truncated).
    pub fn new(file: Option<&Path>) -> std::io::Result<Self> {
        let file = match file {
            Some(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                Some(std::fs::File::create(path)?)
            }
            None => None,
        };
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner {
                file,
                tty: std::io::stdout().is_terminal(),
                progress_shown: false,
                last_progress: None,
            })),
        })
    }

    /// One line from `component`.
    pub fn line(&self, component: &str, text: &str) {
        self.write(component, text, true);
    }

    /// One line from `component`, to the log file only.
    pub fn file_only(&self, component: &str, text: &str) {
        self.write(component, text, false);
    }

    /// One line from `component`, to stdout only (a rendering of a line already in the file).
    pub fn stdout_only(&self, component: &str, text: &str) {
        self.emit(component, text, false, true);
    }

    fn write(&self, component: &str, text: &str, to_stdout: bool) {
        self.emit(component, text, true, to_stdout);
    }

    fn emit(&self, component: &str, text: &str, to_file: bool, to_stdout: bool) {
        let text = text.trim_end_matches(['\r', '\n']);
        let line = if component.is_empty() {
            text.to_owned()
        } else {
            format!("[{component}] {text}")
        };
        let mut inner = self.inner.lock().unwrap();
        if to_file {
            if let Some(file) = inner.file.as_mut() {
                // cargo lambda prints the whole workspace metadata on exit: keep files readable.
                if line.len() > MAX_FILE_LINE {
                    let mut end = MAX_FILE_LINE;
                    while !line.is_char_boundary(end) {
                        end -= 1;
                    }
                    let _ = writeln!(
                        file,
                        "{} [... {} more bytes]",
                        &line[..end],
                        line.len() - end
                    );
                } else {
                    let _ = writeln!(file, "{line}");
                }
            }
        }
        if to_stdout {
            let mut out = std::io::stdout().lock();
            if inner.progress_shown {
                let _ = write!(out, "\r\x1b[2K");
                inner.progress_shown = false;
            }
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }

    /// Plain text (the demo's report), without a prefix.
    pub fn plain(&self, text: &str) {
        for line in text.lines() {
            self.write("", line, true);
        }
    }

    /// Redraws the progress line of `component` (a terminal), or prints it every 15 s (a pipe
    /// or a file).
    pub fn progress(&self, component: &str, text: &str) {
        let mut inner = self.inner.lock().unwrap();
        if inner.tty {
            let width = 118;
            let shown: String = format!("[{component}] {text}")
                .chars()
                .take(width)
                .collect();
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "\r\x1b[2K{shown}");
            let _ = out.flush();
            inner.progress_shown = true;
        } else {
            let due = inner
                .last_progress
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(15));
            if due {
                inner.last_progress = Some(Instant::now());
                drop(inner);
                self.line(component, text);
            }
        }
    }

    /// Clears the progress line.
    pub fn end_progress(&self) {
        let mut inner = self.inner.lock().unwrap();
        if inner.progress_shown {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "\r\x1b[2K");
            let _ = out.flush();
            inner.progress_shown = false;
        }
        inner.last_progress = None;
    }
}
