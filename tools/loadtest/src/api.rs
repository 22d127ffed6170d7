//! The HTTP side: one shared `reqwest` client (connection pool, per-request timeout) and the
//! calls the scenario makes, each returning what came back and when.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use crate::classify::Answer;

/// What one request produced.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Status, timeout or transport failure.
    pub answer: Answer,
    /// The body, when it was JSON.
    pub body: Option<Value>,
    /// When the request left.
    pub sent: Instant,
    /// When the whole answer (body included) was in.
    pub done: Instant,
}

/// The API under test.
#[derive(Clone, Debug)]
pub struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    /// A client for `base_url` (`http://127.0.0.1:PORT` or `https://...execute-api...`).
    pub fn new(base_url: &str, timeout: Duration) -> Result<Self, String> {
        let base = base_url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!(
                "base URL `{base_url}` must start with http:// or https://"
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(1024)
            .user_agent(concat!("loadtest/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Self { http, base })
    }

    /// The base URL, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends one request with an optional bearer token, JSON body and extra headers.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let sent = Instant::now();
        let outcome = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                match response.bytes().await {
                    Ok(bytes) => Ok((status, serde_json::from_slice(&bytes).ok())),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        let done = Instant::now();
        let (answer, body) = match outcome {
            Ok((status, body)) => (Answer::Status(status), body),
            Err(e) if e.is_timeout() => (Answer::Timeout, None),
            Err(_) => (Answer::Transport, None),
        };
        Reply {
            answer,
            body,
            sent,
            done,
        }
    }

    /// `POST path` with a JSON body.
    pub async fn post(
        &self,
        path: &str,
        token: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Reply {
        self.send(Method::POST, path, Some(token), Some(body), headers)
            .await
    }

    /// `GET path`.
    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.send(Method::GET, path, token, None, &[]).await
    }
}

/// The `error.code` (our shape) or `message` (API Gateway's) of an error body, for messages.
pub fn error_text(body: Option<&Value>) -> String {
    body.and_then(|b| {
        b.pointer("/error/code")
            .or_else(|| b.pointer("/error/message"))
            .or_else(|| b.get("message"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    })
    .unwrap_or_default()
}
