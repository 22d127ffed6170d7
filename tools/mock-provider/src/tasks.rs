//! Seedance: asynchronous video tasks under `/api/v3/contents/generations/tasks`.

use crate::images::{given, invalid, missing, optional_bool, required_text, Invalid};
use crate::knobs::EndpointKind;
use crate::util::{compact_datetime, now_unix, parse_query, Triggers};
use crate::Shared;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// Status of a video task, as the provider spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Expired,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Running => "running",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<TaskStatus> {
        Some(match s {
            "queued" => TaskStatus::Queued,
            "running" => TaskStatus::Running,
            "succeeded" => TaskStatus::Succeeded,
            "failed" => TaskStatus::Failed,
            "cancelled" => TaskStatus::Cancelled,
            "expired" => TaskStatus::Expired,
            _ => return None,
        })
    }

    /// Succeeded, failed, cancelled or expired.
    pub fn is_finished(self) -> bool {
        !matches!(self, TaskStatus::Queued | TaskStatus::Running)
    }
}

/// How a task ends (chosen at creation from the prompt triggers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum TaskOutcome {
    Succeed,
    /// `[task-fail]` / `[task-fail:CODE]`
    Fail {
        code: String,
    },
    /// `[task-expire]`
    Expire,
    /// `[task-slow]`: stays running forever.
    Slow,
}

/// An image content item of a task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TaskImage {
    pub url: String,
    pub role: Option<String>,
}

/// A stored video task with everything the mock received.
#[derive(Clone, Debug, Serialize)]
pub struct TaskRecord {
    pub id: String,
    pub model: String,
    /// The text content item as received (flags included).
    pub text: String,
    /// The text with the `--flag value` pairs removed.
    pub prompt: String,
    /// Flags as received, keyed by canonical name (`rs` → `resolution`, `rt` → `ratio`,
    /// `dur` → `duration`, `wm` → `watermark`, `cf` → `camerafixed`); bare flags map to `"true"`.
    pub flags: BTreeMap<String, String>,
    pub resolution: String,
    pub ratio: String,
    pub duration: u32,
    pub fps: u32,
    pub seed: i64,
    pub watermark: bool,
    pub camerafixed: bool,
    pub images: Vec<TaskImage>,
    pub return_last_frame: bool,
    pub callback_url: Option<String>,
    pub execution_expires_after: Option<u64>,
    pub outcome: TaskOutcome,
    /// Unix seconds.
    pub created_at: u64,
    /// Timings in force when the task was created.
    pub queued_ms: u64,
    pub running_ms: u64,
    /// Set when a queued task was cancelled (unix seconds).
    pub cancelled_at: Option<u64>,
    /// The raw request body.
    pub body: Value,
    #[serde(skip)]
    pub(crate) created: Instant,
    #[serde(skip)]
    pub(crate) seq: u64,
}

impl TaskRecord {
    /// Milliseconds since creation.
    pub fn elapsed_ms(&self) -> u64 {
        self.created.elapsed().as_millis() as u64
    }

    /// Current status, computed from the elapsed time.
    pub fn status(&self) -> TaskStatus {
        if self.cancelled_at.is_some() {
            return TaskStatus::Cancelled;
        }
        let e = self.elapsed_ms();
        if e < self.queued_ms {
            return TaskStatus::Queued;
        }
        if self.outcome == TaskOutcome::Slow || e < self.queued_ms + self.running_ms {
            return TaskStatus::Running;
        }
        match self.outcome {
            TaskOutcome::Succeed | TaskOutcome::Slow => TaskStatus::Succeeded,
            TaskOutcome::Fail { .. } => TaskStatus::Failed,
            TaskOutcome::Expire => TaskStatus::Expired,
        }
    }

    fn updated_at(&self, status: TaskStatus) -> u64 {
        match status {
            TaskStatus::Queued => self.created_at,
            TaskStatus::Cancelled => self.cancelled_at.unwrap_or(self.created_at),
            TaskStatus::Running => self.created_at + self.queued_ms / 1000,
            _ => self.created_at + (self.queued_ms + self.running_ms) / 1000,
        }
    }

    /// Nominal video size for the resolution and ratio.
    pub fn video_dims(&self) -> (u32, u32) {
        video_dims(&self.resolution, &self.ratio)
    }

    /// The task as `GET /contents/generations/tasks/{id}` returns it.
    pub fn to_api_json(&self, base_url: &str) -> Value {
        let status = self.status();
        let mut v = json!({
            "id": self.id,
            "model": self.model,
            "status": status.as_str(),
            "created_at": self.created_at,
            "updated_at": self.updated_at(status),
            "resolution": self.resolution,
            "ratio": self.ratio,
            "duration": self.duration,
            "framespersecond": self.fps,
            "seed": self.seed,
        });
        match status {
            TaskStatus::Succeeded => {
                let mut content =
                    json!({ "video_url": format!("{base_url}/files/{}.mp4", self.id) });
                if self.return_last_frame {
                    let (w, h) = self.video_dims();
                    content["last_frame_url"] =
                        json!(format!("{base_url}/files/{}-last-{w}x{h}.png", self.id));
                }
                v["content"] = content;
                let (w, h) = self.video_dims();
                let tokens =
                    u64::from(w) * u64::from(h) * u64::from(self.fps) * u64::from(self.duration)
                        / 1024;
                v["usage"] = json!({ "completion_tokens": tokens, "total_tokens": tokens });
            }
            TaskStatus::Failed => {
                if let TaskOutcome::Fail { code } = &self.outcome {
                    v["error"] = json!({
                        "code": code,
                        "message": crate::util::default_message(code),
                    });
                }
            }
            _ => {}
        }
        v
    }
}

fn video_dims(resolution: &str, ratio: &str) -> (u32, u32) {
    let (w, h) = match ratio {
        "21:9" => (1470, 630),
        "4:3" => (1112, 834),
        "1:1" => (960, 960),
        "3:4" => (834, 1112),
        "9:16" => (720, 1280),
        "9:21" => (630, 1470),
        _ => (1280, 720),
    };
    match resolution {
        "480p" => (w * 2 / 3, h * 2 / 3),
        "1080p" => (w * 3 / 2, h * 3 / 2),
        _ => (w, h),
    }
}

const RESOLUTIONS: [&str; 3] = ["480p", "720p", "1080p"];
const RATIOS: [&str; 8] = [
    "21:9", "16:9", "4:3", "1:1", "3:4", "9:16", "9:21", "adaptive",
];
const ROLES: [&str; 3] = ["first_frame", "last_frame", "reference_image"];

fn canonical_flag(name: &str) -> &str {
    match name {
        "rs" => "resolution",
        "rt" => "ratio",
        "dur" => "duration",
        "wm" => "watermark",
        "cf" => "camerafixed",
        "framespersecond" => "fps",
        other => other,
    }
}

/// Splits `"A kitten --resolution 720p --camerafixed"` into the prompt and flags.
pub(crate) fn parse_flags(text: &str) -> (String, BTreeMap<String, String>) {
    let tokens: Vec<&str> = text.split_whitespace().collect();
    let mut prompt = Vec::new();
    let mut flags = BTreeMap::new();
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i];
        match t
            .strip_prefix("--")
            .filter(|n| n.starts_with(|c: char| c.is_ascii_alphabetic()))
        {
            Some(name) => {
                let key = canonical_flag(name).to_string();
                match tokens.get(i + 1) {
                    Some(v) if !v.starts_with("--") => {
                        flags.insert(key, v.to_string());
                        i += 2;
                    }
                    _ => {
                        flags.insert(key, "true".to_string());
                        i += 1;
                    }
                }
            }
            None => {
                prompt.push(t);
                i += 1;
            }
        }
    }
    (prompt.join(" "), flags)
}

struct TaskSpec {
    model: String,
    text: String,
    prompt: String,
    flags: BTreeMap<String, String>,
    resolution: String,
    ratio: String,
    duration: u32,
    fps: u32,
    seed: Option<i64>,
    watermark: bool,
    camerafixed: bool,
    images: Vec<TaskImage>,
    return_last_frame: bool,
    callback_url: Option<String>,
    execution_expires_after: Option<u64>,
}

fn parse_bool_flag(flags: &BTreeMap<String, String>, name: &str) -> Result<bool, Invalid> {
    match flags.get(name).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(invalid(name, "expected true or false")),
    }
}

fn validate(body: &Value) -> Result<TaskSpec, Invalid> {
    let model = required_text(body, "model")?;
    let (text, images) = content(body)?;
    let (prompt, flags) = parse_flags(&text);
    let (resolution, ratio) = resolution_and_ratio(&model, &flags, &images)?;
    let duration = match flags.get("duration") {
        None => 5,
        Some(d) => match d.parse::<u32>() {
            Ok(d @ 2..=12) => d,
            _ => return Err(invalid("duration", "expected an integer in [2, 12]")),
        },
    };
    let fps = match flags.get("fps") {
        None => 24,
        Some(f) => match f.parse::<u32>() {
            Ok(f @ (16 | 24)) => f,
            _ => return Err(invalid("fps", "expected 24")),
        },
    };
    let seed = match flags.get("seed") {
        None => None,
        Some(s) => match s.parse::<i64>() {
            Ok(-1) => None,
            Ok(s @ 0..=4_294_967_295) => Some(s),
            _ => return Err(invalid("seed", "expected an integer in [-1, 4294967295]")),
        },
    };
    let watermark = parse_bool_flag(&flags, "watermark")?;
    let camerafixed = parse_bool_flag(&flags, "camerafixed")?;
    let return_last_frame = optional_bool(body, "return_last_frame")?;
    let callback_url = match given(body, "callback_url") {
        None => None,
        Some(v) => Some(
            v.as_str()
                .filter(|s| s.starts_with("http://") || s.starts_with("https://"))
                .ok_or_else(|| invalid("callback_url", "expected an http(s) URL"))?
                .to_string(),
        ),
    };
    let execution_expires_after = match given(body, "execution_expires_after") {
        None => None,
        Some(v) => match v.as_u64() {
            Some(s @ 3600..=259_200) => Some(s),
            _ => {
                return Err(invalid(
                    "execution_expires_after",
                    "expected an integer in [3600, 259200]",
                ))
            }
        },
    };
    Ok(TaskSpec {
        model,
        text,
        prompt,
        flags,
        resolution,
        ratio,
        duration,
        fps,
        seed,
        watermark,
        camerafixed,
        images,
        return_last_frame,
        callback_url,
        execution_expires_after,
    })
}

/// The `content` list: at most one text item (empty when there is none) and the images.
fn content(body: &Value) -> Result<(String, Vec<TaskImage>), Invalid> {
    let content = match body.get("content") {
        None | Some(Value::Null) => return Err(missing("content")),
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(_) => return Err(invalid("content", "expected a non-empty list")),
    };
    let mut text: Option<String> = None;
    let mut images = Vec::new();
    for item in content {
        match item.get("type").and_then(Value::as_str) {
            Some("text") => {
                let t = item
                    .get("text")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid("content.text", "expected a string"))?;
                if text.is_some() {
                    return Err(invalid("content", "at most one text item is allowed"));
                }
                text = Some(t.to_string());
            }
            Some("image_url") => images.push(image_item(item)?),
            _ => return Err(invalid("content.type", "expected `text` or `image_url`")),
        }
    }
    if text.is_none() && images.is_empty() {
        return Err(invalid("content", "expected a text or an image item"));
    }
    Ok((text.unwrap_or_default(), images))
}

fn image_item(item: &Value) -> Result<TaskImage, Invalid> {
    let url = item
        .get("image_url")
        .and_then(|i| i.get("url"))
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| invalid("content.image_url", "expected {\"url\": ...}"))?;
    let role = match given(item, "role") {
        None => None,
        Some(r) => match r.as_str() {
            Some(r) if ROLES.contains(&r) => Some(r.to_string()),
            _ => {
                return Err(invalid(
                    "content.role",
                    "expected first_frame, last_frame or reference_image",
                ))
            }
        },
    };
    Ok(TaskImage {
        url: url.to_string(),
        role,
    })
}

/// The `--resolution` and `--ratio` flags, with the model's and the images' defaults (a pro
/// model renders 1080p; a first frame makes the ratio adaptive).
fn resolution_and_ratio(
    model: &str,
    flags: &BTreeMap<String, String>,
    images: &[TaskImage],
) -> Result<(String, String), Invalid> {
    let default_resolution = if model.contains("pro") {
        "1080p"
    } else {
        "720p"
    };
    let resolution = flags
        .get("resolution")
        .cloned()
        .unwrap_or_else(|| default_resolution.to_string());
    if !RESOLUTIONS.contains(&resolution.as_str()) {
        return Err(invalid("resolution", "expected 480p, 720p or 1080p"));
    }
    let has_first_frame = images
        .iter()
        .any(|i| i.role.as_deref().unwrap_or("first_frame") == "first_frame");
    let ratio = flags
        .get("ratio")
        .cloned()
        .unwrap_or_else(|| if has_first_frame { "adaptive" } else { "16:9" }.to_string());
    if !RATIOS.contains(&ratio.as_str()) {
        return Err(invalid(
            "ratio",
            "expected one of 21:9|16:9|4:3|1:1|3:4|9:16|9:21|adaptive",
        ));
    }
    Ok((resolution, ratio))
}

fn outcome_for(t: &Triggers) -> TaskOutcome {
    if let Some(code) = &t.task_fail {
        TaskOutcome::Fail { code: code.clone() }
    } else if t.task_expire {
        TaskOutcome::Expire
    } else if t.task_slow {
        TaskOutcome::Slow
    } else {
        TaskOutcome::Succeed
    }
}

/// The task's text item, which carries the prompt (and its triggers).
fn task_text(body: &Value) -> Option<String> {
    body.get("content")
        .and_then(Value::as_array)
        .and_then(|items| {
            items
                .iter()
                .find(|i| i.get("type").and_then(Value::as_str) == Some("text"))
        })
        .and_then(|i| i.get("text"))
        .and_then(Value::as_str)
        .map(String::from)
}

pub(crate) async fn create(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (_flight, body, triggers) = match s
        .admit_generation(EndpointKind::TaskCreate, &headers, &body, task_text)
        .await
    {
        Ok(admitted) => admitted,
        Err(r) => return *r,
    };
    let spec = match validate(&body) {
        Ok(spec) => spec,
        Err(e) => return s.invalid_response(e),
    };
    let mut g = s.lock();
    let now = now_unix();
    let id = loop {
        let suffix: String = (0..5)
            .map(|_| {
                let c = g.rng.random_range(0..36u32);
                char::from_digit(c, 36).unwrap_or('0')
            })
            .collect();
        let id = format!("cgt-{}-{suffix}", compact_datetime(now));
        if !g.tasks.contains_key(&id) {
            break id;
        }
    };
    let seed = spec
        .seed
        .unwrap_or_else(|| g.rng.random_range(0..=4_294_967_295i64));
    g.task_seq += 1;
    let record = TaskRecord {
        id: id.clone(),
        model: spec.model,
        text: spec.text,
        prompt: spec.prompt,
        flags: spec.flags,
        resolution: spec.resolution,
        ratio: spec.ratio,
        duration: spec.duration,
        fps: spec.fps,
        seed,
        watermark: spec.watermark,
        camerafixed: spec.camerafixed,
        images: spec.images,
        return_last_frame: spec.return_last_frame,
        callback_url: spec.callback_url,
        execution_expires_after: spec.execution_expires_after,
        outcome: outcome_for(&triggers),
        created_at: now,
        queued_ms: g.knobs.queued_ms,
        running_ms: g.knobs.running_ms,
        cancelled_at: None,
        body,
        created: Instant::now(),
        seq: g.task_seq,
    };
    g.tasks.insert(id.clone(), record);
    g.stats.tasks_created += 1;
    drop(g);
    if triggers.lose_answer {
        return s.error("InternalServiceError", None, None);
    }
    Json(json!({ "id": id })).into_response()
}

fn task_not_found(s: &Shared, id: &str) -> Response {
    s.error(
        "ResourceNotFound",
        Some(format!("The specified task `{id}` is not found.")),
        None,
    )
}

pub(crate) async fn get(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let _flight = s.enter(EndpointKind::TaskGet);
    if let Some(r) = s.auth_error(&headers) {
        return r;
    }
    if let Some(r) = s.simple_faults(EndpointKind::TaskGet).await {
        return r;
    }
    let base = s.public_base();
    let task = s.lock().tasks.get(&id).map(|t| t.to_api_json(&base));
    match task {
        Some(t) => Json(t).into_response(),
        None => task_not_found(&s, &id),
    }
}

pub(crate) async fn list(
    State(s): State<Arc<Shared>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let _flight = s.enter(EndpointKind::TaskList);
    if let Some(r) = s.auth_error(&headers) {
        return r;
    }
    if !s.lock().knobs.list_enabled {
        return s.error(
            "InvalidEndpoint.NotFound",
            Some("The task list endpoint is disabled on this mock (list_enabled=false).".into()),
            None,
        );
    }
    if let Some(r) = s.simple_faults(EndpointKind::TaskList).await {
        return r;
    }
    let mut page_num = 1usize;
    let mut page_size = 10usize;
    let mut ids: Vec<String> = Vec::new();
    let mut status: Option<TaskStatus> = None;
    let mut model: Option<String> = None;
    for (k, v) in parse_query(query.as_deref().unwrap_or("")) {
        match k.as_str() {
            "page_num" => match v.parse::<usize>() {
                Ok(n) if n >= 1 => page_num = n,
                _ => return s.invalid_response(invalid("page_num", "expected an integer >= 1")),
            },
            "page_size" => match v.parse::<usize>() {
                Ok(n @ 1..=500) => page_size = n,
                _ => {
                    return s
                        .invalid_response(invalid("page_size", "expected an integer in [1, 500]"))
                }
            },
            "filter.task_ids" if !v.is_empty() => ids.push(v),
            "filter.status" => match TaskStatus::parse(&v) {
                Some(st) => status = Some(st),
                None if v.is_empty() => {}
                None => return s.invalid_response(invalid("filter.status", "unknown status")),
            },
            "filter.model" => model = Some(v).filter(|m| !m.is_empty()),
            _ => {}
        }
    }
    let base = s.public_base();
    let g = s.lock();
    let mut tasks: Vec<&TaskRecord> = g
        .tasks
        .values()
        .filter(|t| ids.is_empty() || ids.contains(&t.id))
        .filter(|t| model.as_ref().is_none_or(|m| &t.model == m))
        .filter(|t| status.is_none_or(|st| t.status() == st))
        .collect();
    tasks.sort_by_key(|t| std::cmp::Reverse(t.seq)); // newest first
    let total = tasks.len();
    let items: Vec<Value> = tasks
        .into_iter()
        .skip((page_num - 1).saturating_mul(page_size))
        .take(page_size)
        .map(|t| t.to_api_json(&base))
        .collect();
    drop(g);
    Json(json!({ "total": total, "items": items })).into_response()
}

pub(crate) async fn delete(
    State(s): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let _flight = s.enter(EndpointKind::TaskDelete);
    if let Some(r) = s.auth_error(&headers) {
        return r;
    }
    if let Some(r) = s.simple_faults(EndpointKind::TaskDelete).await {
        return r;
    }
    let status = {
        let mut g = s.lock();
        let status = g.tasks.get(&id).map(TaskRecord::status);
        match status {
            Some(TaskStatus::Queued) => {
                if let Some(t) = g.tasks.get_mut(&id) {
                    t.cancelled_at = Some(now_unix());
                }
            }
            Some(st) if st.is_finished() => {
                g.tasks.remove(&id);
            }
            _ => {}
        }
        status
    };
    match status {
        None => task_not_found(&s, &id),
        Some(TaskStatus::Running) => s.error(
            "InvalidAction.TaskRunning",
            Some(format!(
                "The task `{id}` is running and cannot be cancelled."
            )),
            None,
        ),
        Some(_) => StatusCode::OK.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags() {
        let (p, f) = parse_flags(
            "A kitten yawns --resolution 720p --ratio 16:9 --duration 5 --camerafixed false --wm true --x",
        );
        assert_eq!(p, "A kitten yawns");
        assert_eq!(f["resolution"], "720p");
        assert_eq!(f["ratio"], "16:9");
        assert_eq!(f["duration"], "5");
        assert_eq!(f["camerafixed"], "false");
        assert_eq!(f["watermark"], "true");
        assert_eq!(f["x"], "true");
    }

    #[test]
    fn task_validation() {
        let ok = json!({"model":"seedance-1-0-pro-250528","content":[
            {"type":"text","text":"cat --rs 480p --dur 3"},
            {"type":"image_url","image_url":{"url":"https://x/a.png"},"role":"first_frame"}]});
        let s = validate(&ok).ok().unwrap();
        assert_eq!(
            (s.resolution.as_str(), s.ratio.as_str(), s.duration),
            ("480p", "adaptive", 3)
        );
        let bad = json!({"model":"m","content":[{"type":"text","text":"cat --resolution 4k"}]});
        assert_eq!(
            validate(&bad).err().unwrap().code,
            "InvalidParameter.resolution"
        );
        let bad = json!({"model":"m"});
        assert_eq!(validate(&bad).err().unwrap().code, "MissingParameter");
    }
}
