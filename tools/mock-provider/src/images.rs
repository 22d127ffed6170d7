//! Seedream: `POST /api/v3/images/generations`.

use crate::knobs::EndpointKind;
use crate::util::now_unix;
use crate::{Inner, Shared};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use rand::Rng;
use serde_json::{json, Value};
use std::sync::Arc;

pub(crate) const REJECT_CODE: &str = "OutputImageSensitiveContentDetected";

/// A validation failure: (code, param, message).
pub(crate) struct Invalid {
    pub code: String,
    pub param: String,
    pub message: String,
}

pub(crate) fn missing(param: &str) -> Invalid {
    Invalid {
        code: "MissingParameter".into(),
        param: param.into(),
        message: format!(
            "The request failed because it is missing one or multiple required parameters: `{param}`."
        ),
    }
}

pub(crate) fn invalid(param: &str, detail: &str) -> Invalid {
    Invalid {
        code: format!("InvalidParameter.{param}"),
        param: param.into(),
        message: format!(
            "The parameter `{param}` specified in the request is not valid: {detail}."
        ),
    }
}

impl Shared {
    pub(crate) fn invalid_response(&self, e: Invalid) -> Response {
        self.error(&e.code, Some(e.message), Some(&e.param))
    }
}

struct ImageRequest {
    model: String,
    width: u32,
    height: u32,
    count: usize,
    b64: bool,
    stream: bool,
    seed: Option<u64>,
}

/// `1K|2K|4K` or `WxH` (total pixels 1280x720..=4096x4096, aspect ratio 1/16..=16).
pub(crate) fn parse_size(s: &str) -> Option<(u32, u32)> {
    match s.to_ascii_uppercase().as_str() {
        "1K" => return Some((1024, 1024)),
        "2K" => return Some((2048, 2048)),
        "4K" => return Some((4096, 4096)),
        _ => {}
    }
    let (w, h) = s.split_once(['x', 'X', '*'])?;
    let (w, h): (u32, u32) = (w.trim().parse().ok()?, h.trim().parse().ok()?);
    let pixels = u64::from(w) * u64::from(h);
    let ok = (1280 * 720..=4096 * 4096).contains(&pixels) && w <= 16 * h && h <= 16 * w;
    ok.then_some((w, h))
}

/// A field that may be absent: JSON `null` counts as absent, as the real API treats it.
pub(crate) fn given<'a>(body: &'a Value, key: &str) -> Option<&'a Value> {
    body.get(key).filter(|v| !v.is_null())
}

/// A required non-empty string field.
pub(crate) fn required_text(body: &Value, key: &str) -> Result<String, Invalid> {
    match body.get(key) {
        None | Some(Value::Null) => Err(missing(key)),
        Some(Value::String(m)) if !m.trim().is_empty() => Ok(m.clone()),
        Some(_) => Err(invalid(key, "expected a non-empty string")),
    }
}

/// An optional boolean field (false when absent).
pub(crate) fn optional_bool(body: &Value, key: &str) -> Result<bool, Invalid> {
    match given(body, key) {
        None => Ok(false),
        Some(v) => v
            .as_bool()
            .ok_or_else(|| invalid(key, "expected a boolean")),
    }
}

fn validate(body: &Value) -> Result<ImageRequest, Invalid> {
    let model = required_text(body, "model")?;
    required_text(body, "prompt")?;
    let inputs = reference_images(body)?;
    let b64 = match given(body, "response_format") {
        None => false,
        Some(v) => match v.as_str() {
            Some("url") => false,
            Some("b64_json") => true,
            _ => return Err(invalid("response_format", "expected `url` or `b64_json`")),
        },
    };
    let (width, height) = match given(body, "size") {
        None => (2048, 2048),
        Some(v) => v.as_str().and_then(parse_size).ok_or_else(|| {
            invalid(
                "size",
                "expected 1K, 2K, 4K or WxH within the allowed range",
            )
        })?,
    };
    let seed = match given(body, "seed") {
        None => None,
        Some(v) => match v.as_i64() {
            Some(-1) => None,
            Some(s) if (0..=2_147_483_647).contains(&s) => Some(s as u64),
            _ => return Err(invalid("seed", "expected an integer in [-1, 2147483647]")),
        },
    };
    optional_bool(body, "watermark")?;
    let stream = optional_bool(body, "stream")?;
    let count = image_count(body)?;
    if inputs + count > 15 {
        return Err(invalid(
            "sequential_image_generation_options.max_images",
            "reference images plus generated images must not exceed 15",
        ));
    }
    Ok(ImageRequest {
        model,
        width,
        height,
        count,
        b64,
        stream,
        seed,
    })
}

/// How many reference images `image` carries (a URL/data URI, or a list of up to 10).
fn reference_images(body: &Value) -> Result<usize, Invalid> {
    match body.get("image") {
        None | Some(Value::Null) => Ok(0),
        Some(Value::String(s)) if !s.is_empty() => Ok(1),
        Some(Value::Array(a))
            if a.len() <= 10 && a.iter().all(|i| i.as_str().is_some_and(|s| !s.is_empty())) =>
        {
            Ok(a.len())
        }
        Some(_) => Err(invalid(
            "image",
            "expected a URL/data URI or a list of at most 10",
        )),
    }
}

/// Images asked for: one, or up to `max_images` with sequential generation on.
fn image_count(body: &Value) -> Result<usize, Invalid> {
    let sequential = match given(body, "sequential_image_generation") {
        None => false,
        Some(v) => match v.as_str() {
            Some("auto") => true,
            Some("disabled") => false,
            _ => {
                return Err(invalid(
                    "sequential_image_generation",
                    "expected `auto` or `disabled`",
                ))
            }
        },
    };
    let max_images = match given(body, "sequential_image_generation_options") {
        None => 15,
        Some(Value::Object(o)) => match o.get("max_images").filter(|v| !v.is_null()) {
            None => 15,
            Some(v) => match v.as_u64() {
                Some(n @ 1..=15) => n as usize,
                _ => {
                    return Err(invalid(
                        "sequential_image_generation_options.max_images",
                        "expected an integer in [1, 15]",
                    ))
                }
            },
        },
        Some(_) => {
            return Err(invalid(
                "sequential_image_generation_options",
                "expected an object",
            ))
        }
    };
    Ok(if sequential { max_images } else { 1 })
}

enum Outcome {
    Image { name: String, seed: u64 },
    Rejected,
}

fn image_prompt(body: &Value) -> Option<String> {
    body.get("prompt").and_then(Value::as_str).map(String::from)
}

pub(crate) async fn generate(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (_flight, body, triggers) = match s
        .admit_generation(EndpointKind::Images, &headers, &body, image_prompt)
        .await
    {
        Ok(admitted) => admitted,
        Err(r) => return *r,
    };
    let req = match validate(&body) {
        Ok(r) => r,
        Err(e) => return s.invalid_response(e),
    };
    let (outcomes, request_id, sizes) = {
        let mut g = s.lock();
        let outcomes = decide(&mut g, &req, triggers.reject.unwrap_or(0));
        (outcomes, g.next_request_id(), g.knobs.output_sizes)
    };
    let items = image_items(&s.public_base(), &req, &outcomes, &request_id, &sizes);
    let generated = items.iter().filter(|i| i.get("error").is_none()).count() as u64;
    let tokens = generated * u64::from(req.width) * u64::from(req.height) / 256;
    let usage = json!({
        "generated_images": generated,
        "output_tokens": tokens,
        "total_tokens": tokens,
    });
    if triggers.lose_answer {
        return s.error("InternalServiceError", None, None);
    }
    let created = now_unix();
    if req.stream {
        return event_stream(&req.model, created, items, usage);
    }
    Json(json!({
        "model": req.model,
        "created": created,
        "data": items,
        "usage": usage,
    }))
    .into_response()
}

/// Which images are generated (with their seeds and file names) and which the content filter
/// rejects: the first `forced` ones, then each with the knobs' reject rate; counted in stats.
fn decide(g: &mut Inner, req: &ImageRequest, forced: usize) -> Vec<Outcome> {
    let rate = g.knobs.reject_rate;
    let mut out = Vec::with_capacity(req.count);
    for i in 0..req.count {
        let rejected = i < forced || (rate > 0.0 && g.rng.random::<f64>() < rate);
        if rejected {
            out.push(Outcome::Rejected);
            continue;
        }
        let seed = match req.seed {
            Some(s) => s + i as u64,
            None => g.rng.random_range(0..=2_147_483_647u64),
        };
        let uniq: u32 = g.rng.random();
        out.push(Outcome::Image {
            name: format!("s{seed}-{uniq:08x}-{}x{}.png", req.width, req.height),
            seed,
        });
    }
    let generated = out
        .iter()
        .filter(|o| matches!(o, Outcome::Image { .. }))
        .count();
    g.stats.images_generated += generated as u64;
    g.stats.images_rejected += (out.len() - generated) as u64;
    if generated < out.len() {
        *g.stats.errors.entry(REJECT_CODE.to_string()).or_insert(0) +=
            (out.len() - generated) as u64;
    }
    out
}

/// The `data` items: a URL or base64 PNG per image, an error item per rejection.
fn image_items(
    base: &str,
    req: &ImageRequest,
    outcomes: &[Outcome],
    request_id: &str,
    sizes: &crate::OutputSizes,
) -> Vec<Value> {
    let size = format!("{}x{}", req.width, req.height);
    outcomes
        .iter()
        .map(|o| match o {
            Outcome::Image { seed, .. } if req.b64 => {
                let bytes = crate::image_file(sizes, req.width, req.height, *seed).to_vec();
                json!({
                    "b64_json": base64::engine::general_purpose::STANDARD.encode(bytes),
                    "size": size,
                })
            }
            Outcome::Image { name, .. } => json!({
                "url": format!("{base}/files/{name}"),
                "size": size,
            }),
            Outcome::Rejected => json!({
                "error": {
                    "code": REJECT_CODE,
                    "message": format!(
                        "The request failed because the output image may contain sensitive information. Request ID: {request_id}"
                    ),
                }
            }),
        })
        .collect()
}

/// The streamed answer: one event per image (succeeded or failed), then `completed`, `[DONE]`.
fn event_stream(model: &str, created: u64, items: Vec<Value>, usage: Value) -> Response {
    let mut sse = String::new();
    let mut event = |name: &str, mut data: Value| {
        data["type"] = json!(name);
        data["model"] = json!(model);
        data["created"] = json!(created);
        sse.push_str(&format!("event: {name}\ndata: {data}\n\n"));
    };
    for (index, item) in items.into_iter().enumerate() {
        let mut data = item;
        data["image_index"] = json!(index);
        if data.get("error").is_some() {
            event("image_generation.partial_failed", data);
        } else {
            event("image_generation.partial_succeeded", data);
        }
    }
    event("image_generation.completed", json!({ "usage": usage }));
    sse.push_str("data: [DONE]\n\n");
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        sse,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2K"), Some((2048, 2048)));
        assert_eq!(parse_size("1k"), Some((1024, 1024)));
        assert_eq!(parse_size("2720x1536"), Some((2720, 1536)));
        assert_eq!(parse_size("100x100"), None);
        assert_eq!(parse_size("8K"), None);
        assert_eq!(parse_size("big"), None);
    }

    #[test]
    fn validation() {
        let ok = json!({"model":"m","prompt":"p","sequential_image_generation":"auto",
            "sequential_image_generation_options":{"max_images":4},"size":"1K"});
        let r = validate(&ok).ok().unwrap();
        assert_eq!((r.count, r.width, r.height, r.b64), (4, 1024, 1024, false));
        let r = validate(&json!({"model":"m","prompt":"p","sequential_image_generation_options":{"max_images":4}}))
            .ok()
            .unwrap();
        assert_eq!(r.count, 1);
        let e = validate(&json!({"prompt":"p"})).err().unwrap();
        assert_eq!(
            (e.code.as_str(), e.param.as_str()),
            ("MissingParameter", "model")
        );
        let e = validate(&json!({"model":"m","prompt":"p","size":"9x9"}))
            .err()
            .unwrap();
        assert_eq!(e.code, "InvalidParameter.size");
        let e = validate(&json!({"model":"m","prompt":"p","response_format":"png"}))
            .err()
            .unwrap();
        assert_eq!(e.code, "InvalidParameter.response_format");
    }
}
