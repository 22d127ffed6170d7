//! Small helpers: time, prompt triggers, query strings, error codes.

use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `YYYYMMDDHHMMSS` (UTC) for a unix timestamp, as ModelArk's task ids and request ids carry it.
pub(crate) fn compact_datetime(secs: u64) -> String {
    let format = time::macros::format_description!("[year][month][day][hour][minute][second]");
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(format).ok())
        .unwrap_or_default()
}

/// Deterministic triggers embedded in a prompt, e.g. `[reject:2]`, `[fail:InternalServiceError]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Triggers {
    pub hang: bool,
    pub latency_ms: Option<u64>,
    pub fail: Option<String>,
    pub fail_first: Option<(u64, String)>,
    /// `Some(usize::MAX)` for `[reject:all]`.
    pub reject: Option<usize>,
    pub task_fail: Option<String>,
    pub task_expire: bool,
    pub task_slow: bool,
    /// `[lost-answer-first:N]`: the first N requests with this prompt are carried out, then
    /// answered 500, as a timeout after the work looks to a client.
    pub lost_answer_first: Option<u64>,
    /// Whether this request's answer is lost (set on admission, from the prompt's count).
    pub lose_answer: bool,
}

pub(crate) const DEFAULT_TASK_FAIL_CODE: &str = "OutputVideoSensitiveContentDetected";

pub(crate) fn parse_triggers(text: &str) -> Triggers {
    let mut t = Triggers::default();
    let mut rest = text;
    while let Some(start) = rest.find('[') {
        let after = &rest[start + 1..];
        let Some(end) = after.find(']') else { break };
        let token = after[..end].trim();
        rest = &after[end + 1..];
        let (name, arg) = match token.split_once(':') {
            Some((n, a)) => (n.trim(), Some(a.trim())),
            None => (token, None),
        };
        match (name, arg) {
            ("hang", None) => t.hang = true,
            ("latency", Some(ms)) => {
                if let Ok(ms) = ms.parse() {
                    t.latency_ms = Some(ms);
                }
            }
            ("fail", Some(code)) if !code.is_empty() => t.fail = Some(code.to_string()),
            ("fail-first", Some(arg)) => {
                if let Some((n, code)) = arg.split_once(':') {
                    if let Ok(n) = n.trim().parse() {
                        t.fail_first = Some((n, code.trim().to_string()));
                    }
                }
            }
            ("reject", Some("all")) => t.reject = Some(usize::MAX),
            ("reject", Some(k)) => {
                if let Ok(k) = k.parse() {
                    t.reject = Some(k);
                }
            }
            ("task-fail", None) => t.task_fail = Some(DEFAULT_TASK_FAIL_CODE.into()),
            ("task-fail", Some(code)) if !code.is_empty() => t.task_fail = Some(code.into()),
            ("task-expire", None) => t.task_expire = true,
            ("task-slow", None) => t.task_slow = true,
            ("lost-answer-first", Some(n)) => t.lost_answer_first = n.parse().ok(),
            _ => {}
        }
    }
    t
}

/// Splits a raw query string into decoded `(key, value)` pairs, keeping repeats.
pub(crate) fn parse_query(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(pair), String::new()),
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// HTTP status and error `type` the mock uses for a provider error code.
pub fn status_for_code(code: &str) -> (u16, &'static str) {
    let base = code.split('.').next().unwrap_or(code);
    match base {
        "AuthenticationError" => (401, "Unauthorized"),
        "AccessDenied" | "AccountOverdueError" => (403, "Forbidden"),
        "InvalidEndpoint"
        | "InvalidEndpointOrModel"
        | "ModelNotOpen"
        | "ResourceNotFound"
        | "NotFound" => (404, "NotFound"),
        "InvalidAction" => (409, "Conflict"),
        "RateLimitExceeded" | "QuotaExceeded" | "ServerOverloaded" => (429, "TooManyRequests"),
        "InternalServiceError" | "InternalError" => (500, "InternalServerError"),
        "ServiceUnavailable" => (503, "ServiceUnavailable"),
        _ => {
            if let Ok(n) = code.parse::<u16>() {
                if (400..600).contains(&n) {
                    return (n, "Error");
                }
            }
            (400, "BadRequest")
        }
    }
}

pub(crate) fn default_message(code: &str) -> String {
    let base = code.split('.').next().unwrap_or(code);
    match base {
        "AuthenticationError" => {
            "The API key or AK/SK in the request is missing or invalid.".into()
        }
        "AccessDenied" => "You do not have access to the requested resource.".into(),
        "AccountOverdueError" => {
            "The request failed because your account has an overdue balance.".into()
        }
        "RateLimitExceeded" => {
            "The request has exceeded the rate limit. Please try again later.".into()
        }
        "InternalServiceError" => "The service encountered an unexpected internal error.".into(),
        "ServiceUnavailable" => {
            "The service is temporarily unavailable. Please try again later.".into()
        }
        "InputTextSensitiveContentDetected" => {
            "The request failed because the input text may contain sensitive information.".into()
        }
        "InputImageSensitiveContentDetected" => {
            "The request failed because the input image may contain sensitive information.".into()
        }
        "OutputImageSensitiveContentDetected" => {
            "The request failed because the output image may contain sensitive information.".into()
        }
        "OutputVideoSensitiveContentDetected" => {
            "The request failed because the output video may contain sensitive information.".into()
        }
        "SensitiveContentDetected" => {
            "The request failed because it may contain sensitive information.".into()
        }
        "ResourceNotFound" => "The specified resource is not found.".into(),
        "InvalidEndpoint" | "InvalidEndpointOrModel" => {
            "The model or endpoint specified in the request does not exist.".into()
        }
        _ => format!("The request failed with error {code} (injected by mock)."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers() {
        let t = parse_triggers("a cat [reject:2] [latency:50] [fail-first:3:InternalServiceError]");
        assert_eq!(t.reject, Some(2));
        assert_eq!(t.latency_ms, Some(50));
        assert_eq!(t.fail_first, Some((3, "InternalServiceError".into())));
        assert_eq!(
            parse_triggers("[lost-answer-first:2]").lost_answer_first,
            Some(2)
        );
        let t = parse_triggers(
            "[reject:all][hang][task-slow][fail:RateLimitExceeded.EndpointRPMExceeded]",
        );
        assert_eq!(t.reject, Some(usize::MAX));
        assert!(t.hang && t.task_slow);
        assert_eq!(
            t.fail.as_deref(),
            Some("RateLimitExceeded.EndpointRPMExceeded")
        );
        assert_eq!(parse_triggers("no triggers [here]"), Triggers::default());
    }

    #[test]
    fn query() {
        let q = parse_query("page_num=1&filter.task_ids=a%2Db&filter.task_ids=c+d&x");
        assert_eq!(
            q,
            vec![
                ("page_num".into(), "1".into()),
                ("filter.task_ids".into(), "a-b".into()),
                ("filter.task_ids".into(), "c d".into()),
                ("x".into(), String::new()),
            ]
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn dates_and_codes() {
        assert_eq!(compact_datetime(0), "19700101000000");
        assert_eq!(compact_datetime(1_757_388_756), "20250909033236");
        assert_eq!(
            status_for_code("RateLimitExceeded.EndpointRPMExceeded").0,
            429
        );
        assert_eq!(status_for_code("InvalidParameter.size").0, 400);
        assert_eq!(status_for_code("InputTextSensitiveContentDetected").0, 400);
        assert_eq!(status_for_code("AuthenticationError").0, 401);
        assert_eq!(status_for_code("InternalServiceError").0, 500);
        assert_eq!(status_for_code("ServiceUnavailable").0, 503);
    }
}
