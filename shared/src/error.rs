//! The error type of the HTTP edge. Each variant knows its status code and its
//! machine-readable code (the contract of `openapi.yaml`); our own faults ([`Fault`]) are logged
//! with their whole cause chain and answered with a generic message, so nothing about our
//! internals leaks to the caller. [`json_body`] is the one way a handler reads a JSON body.

use lambda_http::{Body, Response};
use serde_json::json;

use crate::fault::Fault;

/// Result of a handler step.
pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// An error with its place in the HTTP contract.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Invalid input (400); `code` says which rule was broken.
    #[error("{message}")]
    Validation {
        /// Machine-readable code, such as `prompt_too_long`.
        code: &'static str,
        /// Human-readable explanation.
        message: String,
    },
    /// No identity in the request context (401).
    #[error("authentication required")]
    Unauthorized,
    /// The caller is not allowed to do this (403).
    #[error("this route is reserved for administrators")]
    Forbidden,
    /// Nothing the caller may see exists here (404).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The balance does not cover the cost (402).
    #[error("this request costs {needed} credits but only {available} are available")]
    InsufficientCredits {
        /// Credits the request costs.
        needed: i64,
        /// Credits available to the user.
        available: i64,
    },
    /// The resource is not in a state that allows this (409).
    #[error("{0}")]
    Conflict(String),
    /// The `Idempotency-Key` was already used with another body (422).
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyKeyReused,
    /// The user has too many sessions in flight (429).
    #[error("too many generations in flight (at most {cap}); wait for one to finish")]
    TooManyInflight {
        /// The per-user cap.
        cap: u32,
    },
    /// Our own fault (500); the cause is logged, never returned.
    #[error("internal error: {0}")]
    Internal(#[from] Fault),
}

impl ApiError {
    /// A validation error with a code and a message.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::Validation {
            code,
            message: message.into(),
        }
    }

    /// An internal error from any displayable cause.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self::Internal(Fault::new(cause.to_string()))
    }

    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            Self::Validation { .. } => 400,
            Self::Unauthorized => 401,
            Self::InsufficientCredits { .. } => 402,
            Self::Forbidden => 403,
            Self::NotFound(_) => 404,
            Self::Conflict(_) => 409,
            Self::IdempotencyKeyReused => 422,
            Self::TooManyInflight { .. } => 429,
            Self::Internal(_) => 500,
        }
    }

    /// The machine-readable code of the error body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Validation { code, .. } => code,
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::InsufficientCredits { .. } => "insufficient_credits",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::TooManyInflight { .. } => "too_many_inflight",
            Self::Internal(_) => "internal",
        }
    }

    /// The error as an HTTP response with the contract's JSON body.
    pub fn into_response(self) -> Response<Body> {
        let message = match &self {
            Self::Internal(cause) => {
                tracing::error!(error = %cause.chain(), "internal error");
                "something went wrong on our side; nothing was charged".to_owned()
            }
            other => other.to_string(),
        };
        json_response(
            self.status(),
            &json!({"error": {"code": self.code(), "message": message}}),
        )
    }
}

impl From<serde_json::Error> for ApiError {
    fn from(e: serde_json::Error) -> Self {
        Self::Internal(e.into())
    }
}

impl<E, R> From<aws_sdk_dynamodb::error::SdkError<E, R>> for ApiError
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    fn from(e: aws_sdk_dynamodb::error::SdkError<E, R>) -> Self {
        Self::Internal(e.into())
    }
}

/// Parses a JSON request body into `T`, with one validation code per kind of mistake:
/// `invalid_json` (not JSON, or empty), `unknown_field`, `missing_field`, `invalid_field`.
pub fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            "invalid_json",
            "the body must be a JSON object",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        let text = e.to_string();
        let code = match e.classify() {
            serde_json::error::Category::Data if text.starts_with("unknown field") => {
                "unknown_field"
            }
            serde_json::error::Category::Data if text.starts_with("missing field") => {
                "missing_field"
            }
            serde_json::error::Category::Data => "invalid_field",
            _ => "invalid_json",
        };
        ApiError::invalid(code, text)
    })
}

/// A JSON response with the given status.
pub fn json_response(status: u16, body: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::Text(body.to_string()))
        .expect("a static status and header always build a response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_do_not_leak_their_cause() {
        let response = ApiError::internal("table xyz is on fire").into_response();
        assert_eq!(response.status(), 500);
        let Body::Text(text) = response.body() else {
            panic!("text body expected")
        };
        assert!(!text.contains("xyz"), "{text}");
        assert!(text.contains(r#""code":"internal""#), "{text}");
    }

    #[test]
    fn statuses_follow_the_contract() {
        assert_eq!(ApiError::invalid("invalid_json", "x").status(), 400);
        assert_eq!(
            ApiError::InsufficientCredits {
                needed: 2,
                available: 1
            }
            .status(),
            402
        );
        assert_eq!(ApiError::TooManyInflight { cap: 1 }.status(), 429);
        assert_eq!(ApiError::IdempotencyKeyReused.status(), 422);
    }
}
