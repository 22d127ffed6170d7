//! Client of the generation provider (BytePlus ModelArk): Seedream images, Seedance video tasks.
//!
//! Every failure is classified once, here: [`FailureKind::Retryable`] (429, 5xx, timeouts, and
//! our own configuration or account faults, which must never be charged to the user) or
//! [`FailureKind::Permanent`] (the request itself is refused: invalid parameters, content
//! policy). The provider's error code is kept so the session can say what happened.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::ConfigError;

/// How a provider failure is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// Try again later (SQS redelivery with backoff); never the user's fault.
    Retryable,
    /// The request cannot succeed: fail the session, release the credits.
    Permanent,
}

/// A provider call that did not succeed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("provider {status}: {code}: {message}")]
pub struct ProviderError {
    /// Retry or give up.
    pub kind: FailureKind,
    /// HTTP status (0 when no answer came).
    pub status: u16,
    /// The provider's error code, or ours (`Timeout`, `Connect`, `Decode`).
    pub code: String,
    /// The provider's message.
    pub message: String,
}

impl ProviderError {
    /// Whether the content filter refused the request.
    pub fn is_content_policy(&self) -> bool {
        is_content_policy(&self.code)
    }

    /// A user-facing reason code for a session that failed with this error.
    pub fn reason(&self) -> &'static str {
        if self.is_content_policy() {
            "content_policy"
        } else if self.kind == FailureKind::Permanent {
            "invalid_request"
        } else {
            "provider_unavailable"
        }
    }

    /// A user-facing sentence for a session that failed with this error.
    pub fn user_message(&self) -> String {
        match self.reason() {
            "content_policy" => "The request was refused by the provider's content policy. \
                                 No credits were charged."
                .to_owned(),
            "invalid_request" => format!(
                "The provider refused the request ({}). No credits were charged.",
                self.code
            ),
            _ => "The provider is unavailable. No credits were charged.".to_owned(),
        }
    }
}

/// Whether a provider error code is a content-policy refusal.
pub fn is_content_policy(code: &str) -> bool {
    code.contains("SensitiveContentDetected")
}

/// Classifies an HTTP error answer of the provider.
pub fn classify(status: u16, code: &str) -> FailureKind {
    match status {
        400 if code.starts_with("MissingParameter")
            || code.starts_with("InvalidParameter")
            || is_content_policy(code) =>
        {
            FailureKind::Permanent
        }
        // Auth, account, endpoint and model faults are ours: retry (and alarm), never charge.
        401 | 403 | 404 | 408 | 409 | 429 => FailureKind::Retryable,
        500..=599 => FailureKind::Retryable,
        400..=499 => FailureKind::Permanent,
        _ => FailureKind::Retryable,
    }
}

/// Provider settings, read once per cold start.
#[derive(Clone, Debug)]
pub struct ProviderConfig {
    /// Base URL, e.g. `https://ark.ap-southeast.bytepluses.com/api/v3`.
    pub base_url: String,
    /// Timeout of a whole request (shorter than the function's).
    pub request_timeout: Duration,
    /// Timeout of connecting.
    pub connect_timeout: Duration,
    /// Timeout of an output's whole download (its copy into S3 runs at the download's pace).
    pub download_timeout: Duration,
}

impl ProviderConfig {
    /// Reads `PROVIDER_BASE_URL` and the timeouts (`PROVIDER_TIMEOUT_MS` 45 000,
    /// `PROVIDER_CONNECT_TIMEOUT_MS` 3 000, `PROVIDER_DOWNLOAD_TIMEOUT_MS` 30 000) from the
    /// environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let base_url = std::env::var("PROVIDER_BASE_URL")
            .ok()
            .filter(|v| v.starts_with("http://") || v.starts_with("https://"))
            .ok_or(ConfigError::Missing("PROVIDER_BASE_URL"))?;
        let millis = |name: &'static str, default: u64| -> Result<Duration, ConfigError> {
            match std::env::var(name) {
                Err(_) => Ok(Duration::from_millis(default)),
                Ok(raw) => raw.parse::<u64>().map(Duration::from_millis).map_err(|e| {
                    ConfigError::Invalid {
                        name,
                        value: raw,
                        reason: e.to_string(),
                    }
                }),
            }
        };
        Ok(Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            request_timeout: millis("PROVIDER_TIMEOUT_MS", 45_000)?,
            connect_timeout: millis("PROVIDER_CONNECT_TIMEOUT_MS", 3_000)?,
            download_timeout: millis("PROVIDER_DOWNLOAD_TIMEOUT_MS", 30_000)?,
        })
    }
}

/// Reads the provider API key once: `PROVIDER_API_KEY` locally, or the Secrets Manager secret
/// named by `PROVIDER_API_KEY_SECRET` in AWS. The key is never logged.
pub async fn load_api_key(shared: &aws_config::SdkConfig) -> Result<String, ConfigError> {
    if let Ok(key) = std::env::var("PROVIDER_API_KEY") {
        if !key.is_empty() {
            return Ok(key);
        }
    }
    let secret = std::env::var("PROVIDER_API_KEY_SECRET")
        .map_err(|_| ConfigError::Missing("PROVIDER_API_KEY or PROVIDER_API_KEY_SECRET"))?;
    let client = aws_sdk_secretsmanager::Client::new(shared);
    let value = client
        .get_secret_value()
        .secret_id(&secret)
        .send()
        .await
        .map_err(|e| ConfigError::Invalid {
            name: "PROVIDER_API_KEY_SECRET",
            value: secret.clone(),
            reason: format!("cannot read the secret: {e}"),
        })?;
    value
        .secret_string
        .filter(|s| !s.is_empty())
        .ok_or(ConfigError::Invalid {
            name: "PROVIDER_API_KEY_SECRET",
            value: secret,
            reason: "the secret has no string value".into(),
        })
}

/// One image of a Seedream answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageResult {
    /// Delivered at a URL.
    Url(String),
    /// Delivered inline (base64).
    Base64(String),
    /// Withheld, with the provider's code (content filter).
    Rejected(String),
}

/// A Seedream request for one or more images.
#[derive(Clone, Debug, Serialize)]
pub struct ImageGeneration<'a> {
    /// Model id.
    pub model: &'a str,
    /// Prompt.
    pub prompt: &'a str,
    /// `1K`, `2K`, `4K` or `WxH`.
    pub size: &'a str,
    /// Seed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// Reference images.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub image: &'a [String],
}

/// A Seedance task as the provider reports it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Task {
    /// Task id.
    pub id: String,
    /// `queued`, `running`, `succeeded`, `failed`, `cancelled` or `expired`.
    pub status: String,
    /// Outputs once succeeded.
    #[serde(default)]
    pub content: Option<TaskContent>,
    /// Failure detail.
    #[serde(default)]
    pub error: Option<TaskError>,
    /// The seed it renders with (ours: it marks the session the task belongs to).
    #[serde(default)]
    pub seed: Option<i64>,
    /// Created at (unix seconds).
    #[serde(default)]
    pub created_at: Option<i64>,
}

/// Where a task is, from its `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskState {
    /// `queued` or `running` (or a status this client does not know yet): look again later.
    Pending,
    /// `succeeded`: the outputs are ready.
    Succeeded,
    /// `failed`, `cancelled` or `expired`: nothing will come.
    Ended,
}

impl Task {
    /// Where the task is.
    pub fn state(&self) -> TaskState {
        match self.status.as_str() {
            "succeeded" => TaskState::Succeeded,
            "failed" | "cancelled" | "expired" => TaskState::Ended,
            _ => TaskState::Pending,
        }
    }
}

/// Outputs of a succeeded task.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct TaskContent {
    /// The video.
    #[serde(default)]
    pub video_url: Option<String>,
    /// Its last frame, when asked for.
    #[serde(default)]
    pub last_frame_url: Option<String>,
}

/// Why a task failed.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct TaskError {
    /// Provider code.
    #[serde(default)]
    pub code: String,
    /// Provider message.
    #[serde(default)]
    pub message: String,
}

/// A Seedance task to create.
#[derive(Clone, Debug)]
pub struct VideoTask<'a> {
    /// Model id.
    pub model: &'a str,
    /// Prompt (flags are added here, never taken from the user).
    pub prompt: &'a str,
    /// `480p`, `720p`, `1080p`.
    pub resolution: &'a str,
    /// Aspect ratio.
    pub ratio: &'a str,
    /// Seconds.
    pub duration: u32,
    /// First frame URL.
    pub first_frame: Option<&'a str>,
    /// Seed (`--seed`): a caller that cannot tell whether a create happened finds its task
    /// again by it ([`Client::find_task`]).
    pub seed: u32,
}

impl VideoTask<'_> {
    /// The request body: parameters travel as text flags in the prompt.
    pub fn body(&self) -> Value {
        let text = format!(
            "{} --resolution {} --ratio {} --duration {} --seed {} --camerafixed false --watermark false",
            self.prompt, self.resolution, self.ratio, self.duration, self.seed
        );
        let mut content = vec![json!({"type": "text", "text": text})];
        if let Some(url) = self.first_frame {
            content.push(
                json!({"type": "image_url", "image_url": {"url": url}, "role": "first_frame"}),
            );
        }
        json!({"model": self.model, "content": content, "return_last_frame": true})
    }
}

/// The provider client, built once per cold start.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base_url: String,
    api_key: String,
    download_timeout: Duration,
}

/// An output whose body is still arriving: read it piece by piece, so no copy holds a whole
/// file in memory.
#[derive(Debug)]
pub struct Download {
    /// The length the server announced (`Content-Length`), if it did.
    pub length: Option<u64>,
    response: reqwest::Response,
}

impl Download {
    /// The next piece of the body, as it arrives; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<bytes::Bytes>, ProviderError> {
        self.response.chunk().await.map_err(transport_error)
    }
}

/// Most task ids one list call may carry.
pub const LIST_PAGE: usize = 500;
/// Most pages of the account's task list [`Client::find_task`] reads (newest first).
pub const FIND_PAGES: usize = 10;
/// How far the provider's clock may be behind ours, in seconds: a task created after our
/// intent may carry an earlier `created_at` by this much.
pub const CLOCK_SKEW_SECS: i64 = 300;

impl Client {
    /// Builds the client from the environment: [`ProviderConfig::from_env`] and the key of
    /// [`load_api_key`], read once per cold start.
    pub async fn from_env(shared: &aws_config::SdkConfig) -> Result<Self, ConfigError> {
        let config = ProviderConfig::from_env()?;
        Ok(Self::new(&config, load_api_key(shared).await?))
    }

    /// Builds the client.
    pub fn new(config: &ProviderConfig, api_key: String) -> Self {
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(50))
            .build()
            .expect("a TLS client with timeouts always builds");
        Self {
            http,
            base_url: config.base_url.clone(),
            api_key,
            download_timeout: config.download_timeout,
        }
    }

    /// Asks Seedream for one image (the generator asks for every image of a session at once,
    /// one call each). The answer lists the image, or why it was withheld.
    pub async fn generate_images(
        &self,
        request: &ImageGeneration<'_>,
    ) -> Result<Vec<ImageResult>, ProviderError> {
        let mut body = serde_json::to_value(request).expect("serializable");
        body["response_format"] = json!("url");
        body["watermark"] = json!(false);
        body["stream"] = json!(false);
        body["sequential_image_generation"] = json!("disabled");
        let answer = self
            .send(
                self.http
                    .post(format!("{}/images/generations", self.base_url))
                    .json(&body),
            )
            .await?;
        let data = answer["data"].as_array().cloned().unwrap_or_default();
        Ok(data
            .iter()
            .map(|item| {
                if let Some(url) = item["url"].as_str() {
                    ImageResult::Url(url.to_owned())
                } else if let Some(b64) = item["b64_json"].as_str() {
                    ImageResult::Base64(b64.to_owned())
                } else {
                    let code = item["error"]["code"]
                        .as_str()
                        .unwrap_or("OutputImageRejected");
                    ImageResult::Rejected(code.to_owned())
                }
            })
            .collect())
    }

    /// Creates a Seedance task; returns its id.
    pub async fn create_task(&self, task: &VideoTask<'_>) -> Result<String, ProviderError> {
        let answer = self
            .send(
                self.http
                    .post(format!("{}/contents/generations/tasks", self.base_url))
                    .json(&task.body()),
            )
            .await?;
        answer["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| decode_error("task id missing"))
    }

    /// Reads one task.
    pub async fn get_task(&self, id: &str) -> Result<Task, ProviderError> {
        let answer = self
            .send(
                self.http
                    .get(format!("{}/contents/generations/tasks/{id}", self.base_url)),
            )
            .await?;
        serde_json::from_value(answer).map_err(|e| decode_error(&e.to_string()))
    }

    /// Reads up to [`LIST_PAGE`] tasks in one call (`filter.task_ids`).
    pub async fn list_tasks(&self, ids: &[String]) -> Result<Vec<Task>, ProviderError> {
        let mut query: Vec<(&str, String)> = vec![
            ("page_num", "1".into()),
            ("page_size", ids.len().clamp(1, LIST_PAGE).to_string()),
        ];
        query.extend(
            ids.iter()
                .take(LIST_PAGE)
                .map(|id| ("filter.task_ids", id.clone())),
        );
        self.list_page(&query).await
    }

    /// One page of the task list for `query`.
    async fn list_page(&self, query: &[(&str, String)]) -> Result<Vec<Task>, ProviderError> {
        let answer = self
            .send(
                self.http
                    .get(format!("{}/contents/generations/tasks", self.base_url))
                    .query(query),
            )
            .await?;
        serde_json::from_value(answer["items"].clone()).map_err(|e| decode_error(&e.to_string()))
    }

    /// Finds a live (queued, running or succeeded) task of `model` made with `seed` at or
    /// after `since` (unix seconds): the one a create whose answer was lost made. The list
    /// cannot filter by seed, so it reads the model's tasks page by page, newest first, until
    /// a page is short, older than `since` throughout, or [`FIND_PAGES`] were read. Another
    /// session's task matches only with the same 32-bit seed in the same window.
    pub async fn find_task(
        &self,
        model: &str,
        seed: u32,
        since: i64,
    ) -> Result<Option<Task>, ProviderError> {
        let since = since - CLOCK_SKEW_SECS;
        for page in 1..=FIND_PAGES {
            let query = [
                ("page_num", page.to_string()),
                ("page_size", LIST_PAGE.to_string()),
                ("filter.model", model.to_owned()),
            ];
            let tasks = self.list_page(&query).await?;
            let recent = |t: &Task| t.created_at.is_none_or(|at| at >= since);
            if let Some(task) = tasks.iter().find(|t| {
                t.seed == Some(i64::from(seed)) && recent(t) && t.state() != TaskState::Ended
            }) {
                return Ok(Some(task.clone()));
            }
            if tasks.len() < LIST_PAGE || !tasks.iter().any(recent) {
                break;
            }
        }
        Ok(None)
    }

    /// Cancels a queued task (or deletes a finished one).
    pub async fn delete_task(&self, id: &str) -> Result<(), ProviderError> {
        self.send(
            self.http
                .delete(format!("{}/contents/generations/tasks/{id}", self.base_url)),
        )
        .await
        .map(|_| ())
    }

    /// Starts downloading an output: the answer's head has arrived, the body is still to be
    /// read (a whole download, body included, gives up after `within` or the configured download
    /// timeout, whichever comes first).
    pub async fn download(&self, url: &str, within: Duration) -> Result<Download, ProviderError> {
        let response = self
            .http
            .get(url)
            .timeout(within.min(self.download_timeout))
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status().as_u16();
        if !response.status().is_success() {
            return Err(ProviderError {
                kind: if status == 404 || status == 403 {
                    FailureKind::Permanent
                } else {
                    FailureKind::Retryable
                },
                status,
                code: "DownloadFailed".into(),
                message: format!("output download answered {status}"),
            });
        }
        Ok(Download {
            length: response.content_length(),
            response,
        })
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, ProviderError> {
        let response = request
            .bearer_auth(&self.api_key)
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(transport_error)?;
        if (200..300).contains(&status) {
            if text.trim().is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_str(&text).map_err(|e| decode_error(&e.to_string()));
        }
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let code = body["error"]["code"]
            .as_str()
            .unwrap_or("Unknown")
            .to_owned();
        Err(ProviderError {
            kind: classify(status, &code),
            status,
            message: body["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            code,
        })
    }
}

fn transport_error(e: reqwest::Error) -> ProviderError {
    let code = if e.is_timeout() {
        "Timeout"
    } else if e.is_connect() {
        "Connect"
    } else {
        "Transport"
    };
    ProviderError {
        kind: FailureKind::Retryable,
        status: 0,
        code: code.into(),
        message: e.to_string(),
    }
}

fn decode_error(detail: &str) -> ProviderError {
    ProviderError {
        kind: FailureKind::Retryable,
        status: 0,
        code: "Decode".into(),
        message: format!("unexpected provider answer: {detail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_as_the_provider_documents() {
        use FailureKind::*;
        assert_eq!(classify(400, "InvalidParameter.size"), Permanent);
        assert_eq!(classify(400, "MissingParameter"), Permanent);
        assert_eq!(
            classify(400, "InputTextSensitiveContentDetected"),
            Permanent
        );
        assert_eq!(
            classify(400, "SensitiveContentDetected.SevereViolation"),
            Permanent
        );
        assert_eq!(classify(401, "AuthenticationError"), Retryable);
        assert_eq!(classify(403, "AccountOverdueError"), Retryable);
        assert_eq!(classify(404, "ModelNotOpen"), Retryable);
        assert_eq!(
            classify(429, "RateLimitExceeded.EndpointRPMExceeded"),
            Retryable
        );
        assert_eq!(classify(500, "InternalServiceError"), Retryable);
        assert_eq!(classify(503, "ServiceUnavailable"), Retryable);
    }

    #[test]
    fn video_parameters_travel_as_flags_after_the_prompt() {
        let task = VideoTask {
            model: "m",
            prompt: "a kitten",
            resolution: "720p",
            ratio: "16:9",
            duration: 5,
            first_frame: Some("https://x/a.png"),
            seed: 42,
        };
        let body = task.body();
        assert_eq!(
            body["content"][0]["text"],
            "a kitten --resolution 720p --ratio 16:9 --duration 5 --seed 42 --camerafixed false --watermark false"
        );
        assert_eq!(body["content"][1]["role"], "first_frame");
    }

    #[test]
    fn user_facing_reasons() {
        let e = ProviderError {
            kind: FailureKind::Permanent,
            status: 400,
            code: "OutputImageSensitiveContentDetected".into(),
            message: String::new(),
        };
        assert_eq!(e.reason(), "content_policy");
    }
}
