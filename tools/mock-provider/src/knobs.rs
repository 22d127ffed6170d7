//! Runtime-tunable behaviour of the mock ("knobs") and the statistics it records.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

use crate::outputs::OutputSizes;

/// Error code used for `burst_429`.
pub const BURST_429_CODE: &str = "RateLimitExceeded.EndpointRPMExceeded";

/// The kinds of endpoint the mock distinguishes (for latency, faults and stats).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointKind {
    /// `POST /api/v3/images/generations`
    Images,
    /// `POST /api/v3/contents/generations/tasks`
    TaskCreate,
    /// `GET /api/v3/contents/generations/tasks/{id}`
    TaskGet,
    /// `GET /api/v3/contents/generations/tasks?...`
    TaskList,
    /// `DELETE /api/v3/contents/generations/tasks/{id}`
    TaskDelete,
    /// `GET /files/{name}`
    Files,
}

impl EndpointKind {
    /// Every kind that is part of the provider API proper (everything except `Files`).
    pub const API: [EndpointKind; 5] = [
        EndpointKind::Images,
        EndpointKind::TaskCreate,
        EndpointKind::TaskGet,
        EndpointKind::TaskList,
        EndpointKind::TaskDelete,
    ];
}

/// A latency: fixed (`min_ms == max_ms`) or uniform in `min_ms..=max_ms`.
///
/// Deserializes from a number (`200`), a string (`"200"`, `"100..300"`) or
/// an object (`{"min_ms":100,"max_ms":300}`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "LatencyRepr")]
pub struct Latency {
    pub min_ms: u64,
    pub max_ms: u64,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum LatencyRepr {
    Fixed(u64),
    Range { min_ms: u64, max_ms: u64 },
    Text(String),
}

impl TryFrom<LatencyRepr> for Latency {
    type Error = String;
    fn try_from(r: LatencyRepr) -> Result<Self, String> {
        match r {
            LatencyRepr::Fixed(ms) => Ok(Latency::fixed(ms)),
            LatencyRepr::Range { min_ms, max_ms } => Ok(Latency::uniform(min_ms, max_ms)),
            LatencyRepr::Text(s) => Latency::parse(&s),
        }
    }
}

impl Latency {
    pub const ZERO: Latency = Latency {
        min_ms: 0,
        max_ms: 0,
    };

    pub fn fixed(ms: u64) -> Self {
        Latency {
            min_ms: ms,
            max_ms: ms,
        }
    }

    pub fn uniform(min_ms: u64, max_ms: u64) -> Self {
        Latency {
            min_ms: min_ms.min(max_ms),
            max_ms: min_ms.max(max_ms),
        }
    }

    /// Parses `"200"`, `"100..300"` or `"100-300"` (milliseconds).
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let num = |t: &str| {
            t.trim()
                .parse::<u64>()
                .map_err(|_| format!("invalid latency {s:?}: expected MS or MIN..MAX"))
        };
        if let Some((a, b)) = s.split_once("..").or_else(|| s.split_once('-')) {
            Ok(Latency::uniform(num(a)?, num(b.trim_start_matches('='))?))
        } else {
            Ok(Latency::fixed(num(s)?))
        }
    }
}

/// One value per endpoint kind: the latency knobs and the request counters share the shape.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PerKind<T> {
    pub images: T,
    pub task_create: T,
    pub task_get: T,
    pub task_list: T,
    pub task_delete: T,
    pub files: T,
}

impl<T: Copy> PerKind<T> {
    pub fn get(&self, kind: EndpointKind) -> T {
        match kind {
            EndpointKind::Images => self.images,
            EndpointKind::TaskCreate => self.task_create,
            EndpointKind::TaskGet => self.task_get,
            EndpointKind::TaskList => self.task_list,
            EndpointKind::TaskDelete => self.task_delete,
            EndpointKind::Files => self.files,
        }
    }

    pub fn get_mut(&mut self, kind: EndpointKind) -> &mut T {
        match kind {
            EndpointKind::Images => &mut self.images,
            EndpointKind::TaskCreate => &mut self.task_create,
            EndpointKind::TaskGet => &mut self.task_get,
            EndpointKind::TaskList => &mut self.task_list,
            EndpointKind::TaskDelete => &mut self.task_delete,
            EndpointKind::Files => &mut self.files,
        }
    }
}

/// Latency per endpoint kind.
pub type LatencyKnobs = PerKind<Latency>;

impl LatencyKnobs {
    /// The same latency for every API endpoint (files stay at zero).
    pub fn api(l: Latency) -> Self {
        LatencyKnobs {
            images: l,
            task_create: l,
            task_get: l,
            task_list: l,
            task_delete: l,
            files: Latency::ZERO,
        }
    }
}

/// Everything that can be tuned, at start-up or at runtime
/// (`MockHandle::update_knobs`, `POST /__mock/knobs`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Knobs {
    /// Expected bearer token (`Authorization: Bearer <api_key>`). Default `mock-key`.
    pub api_key: String,
    /// Seed of the PRNG behind every random decision. Changing it reseeds.
    pub seed: u64,
    /// Base URL used in returned file URLs (default: `http://<listen addr>`).
    pub public_base_url: Option<String>,
    /// Latency per endpoint kind.
    pub latency: LatencyKnobs,
    /// Probability per error code that a request fails with it,
    /// e.g. `{"RateLimitExceeded.EndpointRPMExceeded":0.1,"InternalServiceError":0.05}`.
    pub failure_rates: BTreeMap<String, f64>,
    /// Endpoint kinds to which `failure_rates`, `burst_429` and `hang_rate` apply
    /// (default: all API kinds, not files).
    pub fault_kinds: Vec<EndpointKind>,
    /// The next N (fault-eligible) requests get 429 `RateLimitExceeded.EndpointRPMExceeded`.
    /// Decremented as used.
    pub burst_429: u32,
    /// Probability that a request hangs (never answers until the client gives up or shutdown).
    pub hang_rate: f64,
    /// Probability that each generated image is rejected by the output content filter.
    pub reject_rate: f64,
    /// When false the task list endpoint answers 404 `InvalidEndpoint.NotFound`.
    pub list_enabled: bool,
    /// Time a new video task spends `queued`.
    pub queued_ms: u64,
    /// Time a video task spends `running` after `queued`.
    pub running_ms: u64,
    /// How many recent request bodies are kept in the stats (per kind).
    pub history: usize,
    /// Size of the served files (realistic by default; [`OutputSizes::minimal`] for none).
    pub output_sizes: OutputSizes,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            api_key: "mock-key".into(),
            seed: 42,
            public_base_url: None,
            latency: LatencyKnobs::default(),
            failure_rates: BTreeMap::new(),
            fault_kinds: EndpointKind::API.to_vec(),
            burst_429: 0,
            hang_rate: 0.0,
            reject_rate: 0.0,
            list_enabled: true,
            queued_ms: 200,
            running_ms: 800,
            history: 50,
            output_sizes: OutputSizes::default(),
        }
    }
}

impl Knobs {
    /// Applies a JSON merge patch: objects merge recursively, `null` removes a key
    /// (which resets a top-level knob to its default), anything else replaces.
    pub fn patched(&self, patch: &Value) -> Result<Knobs, String> {
        let mut current = serde_json::to_value(self).map_err(|e| e.to_string())?;
        merge_patch(&mut current, patch);
        serde_json::from_value(current).map_err(|e| format!("invalid knobs: {e}"))
    }
}

fn merge_patch(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// Number of requests received per endpoint kind.
pub type RequestCounts = PerKind<u64>;

/// What the mock observed. `GET /__mock/stats` returns this as JSON.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// Requests received per endpoint kind (control endpoints are not counted).
    pub requests: RequestCounts,
    /// Sum of `requests`.
    pub total_requests: u64,
    /// Requests currently being handled (all kinds, files included).
    pub in_flight: u64,
    /// High-water mark of `in_flight`.
    pub max_in_flight: u64,
    /// Image generation requests currently being handled.
    pub images_in_flight: u64,
    /// High-water mark of `images_in_flight`.
    pub images_max_in_flight: u64,
    /// Error responses sent, by error code (auth failures, injected faults, validation...).
    pub errors: BTreeMap<String, u64>,
    /// Images delivered (url or b64_json) in successful image responses.
    pub images_generated: u64,
    /// Images replaced by an `OutputImageSensitiveContentDetected` item.
    pub images_rejected: u64,
    /// Video tasks created.
    pub tasks_created: u64,
    /// The last `history` JSON bodies of image requests (oldest first).
    pub image_requests: Vec<Value>,
    /// The last `history` JSON bodies of task creation requests (oldest first).
    pub task_requests: Vec<Value>,
    /// Requests per prompt (images: `prompt`; tasks: the full text item).
    pub prompt_counts: BTreeMap<String, u64>,
}

impl Stats {
    /// Prompts of the recorded image requests, oldest first.
    pub fn image_prompts(&self) -> Vec<String> {
        self.image_requests
            .iter()
            .filter_map(|b| b.get("prompt").and_then(Value::as_str).map(String::from))
            .collect()
    }

    pub fn prompt_count(&self, prompt: &str) -> u64 {
        self.prompt_counts.get(prompt).copied().unwrap_or(0)
    }

    pub fn error_count(&self, code: &str) -> u64 {
        self.errors.get(code).copied().unwrap_or(0)
    }
}
