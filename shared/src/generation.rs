//! Validated generation requests: the edge of the system. A request body becomes an
//! [`ImageRequest`] or a [`VideoRequest`] only if every rule holds, so nothing invalid travels
//! past the enqueue function. Each broken rule has its own machine-readable code.

use serde::{Deserialize, Serialize};

use crate::error::{json_body, ApiError};
use crate::pricing::{self, Resolution, SizeClass};

/// Seedream models a user may pick.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageModel {
    /// Seedream 4.0.
    #[serde(rename = "seedream-4.0")]
    Seedream40,
    /// Seedream 4.5.
    #[serde(rename = "seedream-4.5")]
    Seedream45,
}

/// Seedance models a user may pick.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VideoModel {
    /// Seedance 1.0 pro.
    #[serde(rename = "seedance-1.0-pro")]
    SeedancePro,
    /// Seedance 1.0 lite.
    #[serde(rename = "seedance-1.0-lite")]
    SeedanceLite,
}

/// The size asked of Seedream: what is sent to the provider and the class it is priced by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSize {
    /// As sent to the provider: `1K`, `2K`, `4K` or `WIDTHxHEIGHT`.
    pub label: String,
    /// The price class.
    pub class: SizeClass,
}

/// A validated Seedream request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRequest {
    /// The prompt, trimmed.
    pub prompt: String,
    /// Output size.
    pub size: ImageSize,
    /// Number of images.
    pub n: u32,
    /// Seed, when given.
    pub seed: Option<i64>,
    /// Reference image URLs.
    pub reference_images: Vec<String>,
    /// Model picked.
    pub model: ImageModel,
}

/// A validated Seedance request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoRequest {
    /// The prompt, trimmed; never carries provider flags.
    pub prompt: String,
    /// Output resolution.
    pub resolution: Resolution,
    /// Aspect ratio (`16:9`, ..., `adaptive`).
    pub ratio: String,
    /// Length in seconds.
    pub duration: u32,
    /// First frame image URL, when given.
    pub first_frame: Option<String>,
    /// Model picked.
    pub model: VideoModel,
}

/// A validated request of either kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GenerationRequest {
    /// Images from Seedream.
    Image(ImageRequest),
    /// A video from Seedance.
    Video(VideoRequest),
}

impl GenerationRequest {
    /// Credits this request reserves.
    pub fn cost(&self) -> i64 {
        match self {
            Self::Image(r) => pricing::image_cost(r.size.class, r.n),
            Self::Video(r) => pricing::video_cost(r.resolution, r.duration),
        }
    }

    /// The model's public name, used in ledger entries and usage summaries.
    pub fn model_name(&self) -> &'static str {
        match self {
            Self::Image(r) => match r.model {
                ImageModel::Seedream40 => "seedream-4.0",
                ImageModel::Seedream45 => "seedream-4.5",
            },
            Self::Video(r) => match r.model {
                VideoModel::SeedancePro => "seedance-1.0-pro",
                VideoModel::SeedanceLite => "seedance-1.0-lite",
            },
        }
    }

    /// `image` or `video`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Image(_) => "image",
            Self::Video(_) => "video",
        }
    }
}

/// Limits of validation that come from configuration.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest prompt, in characters.
    pub max_prompt_chars: usize,
}

/// Aspect ratios Seedance accepts.
pub const RATIOS: [&str; 8] = [
    "21:9", "16:9", "4:3", "1:1", "3:4", "9:16", "9:21", "adaptive",
];
/// Most images one Seedream request may produce, references included.
pub const MAX_IMAGES: i64 = 15;
/// Most reference images.
pub const MAX_REFERENCES: usize = 10;
/// Shortest and longest video, in seconds.
pub const DURATION_RANGE: std::ops::RangeInclusive<i64> = 3..=12;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageBody {
    prompt: serde_json::Value,
    #[serde(default)]
    size: Option<String>,
    #[serde(default)]
    n: Option<i64>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    reference_images: Option<Vec<String>>,
    #[serde(default)]
    client_key: Option<String>,
    #[serde(default)]
    model: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VideoBody {
    prompt: serde_json::Value,
    #[serde(default)]
    resolution: Option<String>,
    #[serde(default)]
    ratio: Option<String>,
    #[serde(default)]
    duration: Option<i64>,
    #[serde(default)]
    first_frame: Option<String>,
    #[serde(default)]
    client_key: Option<String>,
    #[serde(default)]
    model: Option<String>,
}

/// A validated request with the frontend's correlation key, when it sent one.
#[derive(Clone, Debug)]
pub struct Parsed {
    /// The request.
    pub request: GenerationRequest,
    /// The body's `client_key`.
    pub client_key: Option<String>,
}

/// Parses and validates a Seedream request body.
pub fn parse_image(body: &[u8], limits: Limits) -> Result<Parsed, ApiError> {
    let raw: ImageBody = json_body(body)?;
    let prompt = prompt(&raw.prompt, limits)?;
    let model = match raw.model.as_deref() {
        None | Some("seedream-4.0") => ImageModel::Seedream40,
        Some("seedream-4.5") => ImageModel::Seedream45,
        Some(other) => {
            return Err(ApiError::invalid(
                "invalid_model",
                format!("unknown model {other:?}; use seedream-4.0 or seedream-4.5"),
            ))
        }
    };
    let size = image_size(raw.size.as_deref().unwrap_or("2K"))?;
    let references = raw.reference_images.unwrap_or_default();
    if references.len() > MAX_REFERENCES {
        return Err(ApiError::invalid(
            "invalid_reference",
            format!("at most {MAX_REFERENCES} reference images"),
        ));
    }
    for url in &references {
        image_url(url, "invalid_reference")?;
    }
    let n = raw.n.unwrap_or(4);
    let most = MAX_IMAGES - references.len() as i64;
    if !(1..=most).contains(&n) {
        return Err(ApiError::invalid(
            "invalid_n",
            format!("n must be between 1 and {most} (inputs and outputs are at most {MAX_IMAGES} images)"),
        ));
    }
    if let Some(seed) = raw.seed {
        if !(-1..=2_147_483_647).contains(&seed) {
            return Err(ApiError::invalid(
                "invalid_seed",
                "seed must be between -1 and 2147483647",
            ));
        }
    }
    Ok(Parsed {
        request: GenerationRequest::Image(ImageRequest {
            prompt,
            size,
            n: n as u32,
            seed: raw.seed,
            reference_images: references,
            model,
        }),
        client_key: client_key(raw.client_key)?,
    })
}

/// Parses and validates a Seedance request body.
pub fn parse_video(body: &[u8], limits: Limits) -> Result<Parsed, ApiError> {
    let raw: VideoBody = json_body(body)?;
    let prompt = prompt(&raw.prompt, limits)?;
    if carries_flags(&prompt) {
        return Err(ApiError::invalid(
            "prompt_contains_flags",
            "the prompt must not carry --flags; use the resolution, ratio and duration fields",
        ));
    }
    let model = match raw.model.as_deref() {
        None | Some("seedance-1.0-pro") => VideoModel::SeedancePro,
        Some("seedance-1.0-lite") => VideoModel::SeedanceLite,
        Some(other) => {
            return Err(ApiError::invalid(
                "invalid_model",
                format!("unknown model {other:?}; use seedance-1.0-pro or seedance-1.0-lite"),
            ))
        }
    };
    let resolution = match raw.resolution.as_deref().unwrap_or("720p") {
        "480p" => Resolution::P480,
        "720p" => Resolution::P720,
        "1080p" => Resolution::P1080,
        other => {
            return Err(ApiError::invalid(
                "invalid_resolution",
                format!("unknown resolution {other:?}; use 480p, 720p or 1080p"),
            ))
        }
    };
    let ratio = raw.ratio.unwrap_or_else(|| "16:9".into());
    if !RATIOS.contains(&ratio.as_str()) {
        return Err(ApiError::invalid(
            "invalid_ratio",
            format!("unknown ratio {ratio:?}; use one of {}", RATIOS.join(", ")),
        ));
    }
    let duration = raw.duration.unwrap_or(5);
    if !DURATION_RANGE.contains(&duration) {
        return Err(ApiError::invalid(
            "invalid_duration",
            "duration must be between 3 and 12 seconds",
        ));
    }
    if let Some(url) = &raw.first_frame {
        image_url(url, "invalid_first_frame")?;
    }
    Ok(Parsed {
        request: GenerationRequest::Video(VideoRequest {
            prompt,
            resolution,
            ratio,
            duration: duration as u32,
            first_frame: raw.first_frame,
            model,
        }),
        client_key: client_key(raw.client_key)?,
    })
}

fn prompt(value: &serde_json::Value, limits: Limits) -> Result<String, ApiError> {
    let serde_json::Value::String(text) = value else {
        return Err(ApiError::invalid(
            "invalid_field",
            "prompt must be a string",
        ));
    };
    let text = text.trim();
    if text.is_empty() {
        return Err(ApiError::invalid(
            "prompt_empty",
            "prompt must not be empty",
        ));
    }
    let chars = text.chars().count();
    if chars > limits.max_prompt_chars {
        return Err(ApiError::invalid(
            "prompt_too_long",
            format!(
                "prompt is {chars} characters; at most {} are allowed",
                limits.max_prompt_chars
            ),
        ));
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(ApiError::invalid(
            "invalid_field",
            "prompt must not contain control characters",
        ));
    }
    Ok(text.to_owned())
}

/// Seedance reads `--name value` flags out of the prompt text; a user who could write them
/// would get 1080p while paying for 480p.
fn carries_flags(prompt: &str) -> bool {
    prompt.split_whitespace().any(|word| {
        word.strip_prefix("--")
            .and_then(|rest| rest.chars().next())
            .is_some_and(|c| c.is_ascii_alphabetic())
    })
}

fn image_size(label: &str) -> Result<ImageSize, ApiError> {
    let class = match label {
        "1K" => Some(SizeClass::K1),
        "2K" => Some(SizeClass::K2),
        "4K" => Some(SizeClass::K4),
        other => other.split_once('x').and_then(|(w, h)| {
            let (w, h) = (w.parse::<u32>().ok()?, h.parse::<u32>().ok()?);
            let in_range = |v: u32| (512..=4096).contains(&v);
            (in_range(w) && in_range(h) && w.max(h) <= 16 * w.min(h))
                .then(|| SizeClass::of_pixels(w, h))
        }),
    };
    class
        .map(|class| ImageSize {
            label: label.to_owned(),
            class,
        })
        .ok_or_else(|| {
            ApiError::invalid(
                "invalid_size",
                format!("unknown size {label:?}; use 1K, 2K, 4K or WIDTHxHEIGHT within 512..4096"),
            )
        })
}

/// Image inputs are `https` URLs: inline data URLs would not fit a DynamoDB item or a queue
/// message, so the frontend uploads first.
fn image_url(url: &str, code: &'static str) -> Result<(), ApiError> {
    let ok = url.len() <= 2048
        && url.starts_with("https://")
        && url.len() > "https://".len()
        && !url.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            code,
            "image inputs must be https URLs of at most 2048 characters",
        ))
    }
}

fn client_key(key: Option<String>) -> Result<Option<String>, ApiError> {
    match key {
        Some(k) if !valid_token(&k) => Err(ApiError::invalid(
            "invalid_client_key",
            "client_key must be 1-128 characters of A-Z a-z 0-9 . _ : -",
        )),
        other => Ok(other),
    }
}

/// Tokens chosen by clients (client keys, idempotency keys) that we echo or store.
pub fn valid_token(token: &str) -> bool {
    (1..=128).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_prompt_chars: 2000,
    };

    fn image_code(body: &str) -> &'static str {
        parse_image(body.as_bytes(), LIMITS).unwrap_err().code()
    }

    fn video_code(body: &str) -> &'static str {
        parse_video(body.as_bytes(), LIMITS).unwrap_err().code()
    }

    #[test]
    fn image_defaults_are_four_2k_images() {
        let parsed = parse_image(br#"{"prompt":" a lake "}"#, LIMITS).unwrap();
        let GenerationRequest::Image(r) = &parsed.request else {
            panic!()
        };
        assert_eq!(
            (r.n, r.size.class, r.prompt.as_str()),
            (4, SizeClass::K2, "a lake")
        );
        assert_eq!(parsed.request.cost(), 8);
        assert_eq!(parsed.request.model_name(), "seedream-4.0");
    }

    #[test]
    fn image_rules_each_have_their_code() {
        assert_eq!(image_code("{"), "invalid_json");
        assert_eq!(image_code(""), "invalid_json");
        assert_eq!(image_code("[]"), "invalid_field");
        assert_eq!(image_code(r#"{"prompt":5}"#), "invalid_field");
        assert_eq!(image_code(r#"{"prompt":"x","n":"4"}"#), "invalid_field");
        assert_eq!(image_code(r#"{"prompt":"x","n":2.5}"#), "invalid_field");
        assert_eq!(image_code(r#"{"n":1}"#), "missing_field");
        assert_eq!(
            image_code(r#"{"prompt":"x","user_id":"u"}"#),
            "unknown_field"
        );
        assert_eq!(image_code(r#"{"prompt":"   "}"#), "prompt_empty");
        let long = format!(r#"{{"prompt":"{}"}}"#, "a".repeat(10_000));
        assert_eq!(image_code(&long), "prompt_too_long");
        assert_eq!(image_code(r#"{"prompt":"x","n":0}"#), "invalid_n");
        assert_eq!(image_code(r#"{"prompt":"x","n":100}"#), "invalid_n");
        assert_eq!(image_code(r#"{"prompt":"x","n":-3}"#), "invalid_n");
        assert_eq!(image_code(r#"{"prompt":"x","size":"8K"}"#), "invalid_size");
        assert_eq!(
            image_code(r#"{"prompt":"x","size":"100x100"}"#),
            "invalid_size"
        );
        assert_eq!(
            image_code(r#"{"prompt":"x","model":"dall-e"}"#),
            "invalid_model"
        );
        assert_eq!(image_code(r#"{"prompt":"x","seed":-2}"#), "invalid_seed");
        assert_eq!(
            image_code(r#"{"prompt":"x","reference_images":["ftp://a"]}"#),
            "invalid_reference"
        );
        assert_eq!(
            image_code(r#"{"prompt":"x","client_key":"a b"}"#),
            "invalid_client_key"
        );
    }

    #[test]
    fn references_count_against_the_fifteen_images() {
        let refs: Vec<String> = (0..10)
            .map(|i| format!("\"https://e.x/{i}.png\""))
            .collect();
        let body = format!(
            r#"{{"prompt":"x","n":6,"reference_images":[{}]}}"#,
            refs.join(",")
        );
        assert_eq!(image_code(&body), "invalid_n");
        let body = body.replace(r#""n":6"#, r#""n":5"#);
        assert!(parse_image(body.as_bytes(), LIMITS).is_ok());
    }

    #[test]
    fn explicit_sizes_are_priced_by_pixels() {
        let parsed = parse_image(br#"{"prompt":"x","size":"4096x4096","n":1}"#, LIMITS).unwrap();
        assert_eq!(parsed.request.cost(), 4);
    }

    #[test]
    fn video_rules_each_have_their_code() {
        let ok = parse_video(
            br#"{"prompt":"a cat","duration":10,"resolution":"1080p"}"#,
            LIMITS,
        )
        .unwrap();
        assert_eq!(ok.request.cost(), 80);
        assert_eq!(
            video_code(r#"{"prompt":"a cat --resolution 1080p"}"#),
            "prompt_contains_flags"
        );
        assert_eq!(
            video_code(r#"{"prompt":"x","resolution":"8k"}"#),
            "invalid_resolution"
        );
        assert_eq!(
            video_code(r#"{"prompt":"x","ratio":"2:1"}"#),
            "invalid_ratio"
        );
        assert_eq!(
            video_code(r#"{"prompt":"x","duration":60}"#),
            "invalid_duration"
        );
        assert_eq!(
            video_code(r#"{"prompt":"x","model":"sora"}"#),
            "invalid_model"
        );
        assert_eq!(
            video_code(r#"{"prompt":"x","first_frame":"http://a"}"#),
            "invalid_first_frame"
        );
        assert_eq!(video_code(r#"{"prompt":"x","n":4}"#), "unknown_field");
    }

    #[test]
    fn a_dash_in_prose_is_not_a_flag() {
        assert!(!carries_flags("a cat -- sleeping, 3-D"));
        assert!(carries_flags("a cat --duration 12"));
    }
}
