//! A client of the Lambda Invoke API (`POST /2015-03-31/functions/<name>/invocations`) that
//! `cargo lambda watch` serves: the gateway, the pollers and the schedules all deliver their
//! events through it.

use std::time::Duration;

use serde_json::Value;

/// Why an invocation did not return a result.
#[derive(Clone, Debug)]
pub enum InvokeError {
    /// The function is not a binary of the workspace.
    Missing {
        /// The function asked for.
        function: String,
        /// cargo lambda's explanation (lists the available functions).
        detail: String,
    },
    /// The function returned an error (or panicked, or failed to start).
    Function(String),
    /// No answer in time.
    Timeout(Duration),
    /// `cargo lambda watch` could not be reached.
    Unreachable(String),
    /// Another answer of the Invoke API.
    Status(u16, String),
}

impl std::fmt::Display for InvokeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing { function, detail } => write!(
                f,
                "function `{function}` is not a binary of the workspace ({detail}); \
                 is functions/{function} written and listed in Cargo.toml's members?"
            ),
            Self::Function(body) => write!(f, "function error: {body}"),
            Self::Timeout(t) => write!(
                f,
                "no answer within {}s (still compiling, hung, or crashed at start: see [lambda] lines)",
                t.as_secs()
            ),
            Self::Unreachable(e) => write!(f, "cargo lambda watch unreachable: {e}"),
            Self::Status(s, body) => write!(f, "invoke API answered {s}: {body}"),
        }
    }
}

impl std::error::Error for InvokeError {}

/// The Invoke API client.
#[derive(Clone, Debug)]
pub struct Invoker {
    base: String,
    http: reqwest::Client,
}

impl Invoker {
    /// A client of the Invoke API at `base` (`http://127.0.0.1:PORT`).
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("a plain HTTP client"),
        }
    }

    /// The Invoke API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Invokes `function` with `payload` and returns its result.
    pub async fn invoke(
        &self,
        function: &str,
        payload: &Value,
        timeout: Duration,
    ) -> Result<Value, InvokeError> {
        let url = format!("{}/2015-03-31/functions/{function}/invocations", self.base);
        let send = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(payload.to_string())
            .send();
        let response = match tokio::time::timeout(timeout, async {
            let response = send.await?;
            let status = response.status().as_u16();
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, body))
        })
        .await
        {
            Err(_) => return Err(InvokeError::Timeout(timeout)),
            Ok(Err(e)) => return Err(InvokeError::Unreachable(e.to_string())),
            Ok(Ok(r)) => r,
        };
        let (status, body) = response;
        let text = String::from_utf8_lossy(&body).into_owned();
        match status {
            200 => Ok(if body.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&body).unwrap_or(Value::String(text))
            }),
            404 if text.contains("Missing function") || text.contains("doesn't exist") => {
                let detail = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["detail"].as_str().map(str::to_owned))
                    .unwrap_or(text);
                Err(InvokeError::Missing {
                    function: function.to_owned(),
                    detail,
                })
            }
            500 => Err(InvokeError::Function(text)),
            other => Err(InvokeError::Status(other, text)),
        }
    }
}
