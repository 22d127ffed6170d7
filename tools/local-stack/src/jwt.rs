//! The local stand-in for the HTTP API's Cognito JWT authorizer: tokens signed with an HS256 dev
//! key, checked for signature, expiry, issuer and audience as API Gateway checks them, and the
//! claims flattened to strings as API Gateway passes them in `requestContext.authorizer.jwt`.

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Map, Value};

/// How tokens are issued and checked.
#[derive(Clone, Debug)]
pub struct JwtConfig {
    /// The HS256 key.
    pub key: String,
    /// Expected `iss`.
    pub issuer: String,
    /// Expected `aud`.
    pub audience: String,
}

/// Why a request was refused (API Gateway answers 401 `{"message":"Unauthorized"}`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization` header.
    Missing,
    /// The token is malformed, badly signed, expired or for another issuer or audience.
    Invalid(String),
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing => write!(f, "no Authorization header"),
            Self::Invalid(why) => write!(f, "invalid token: {why}"),
        }
    }
}

/// A fresh random dev key (32 bytes, hex).
pub fn random_key() -> String {
    let a = ulid::Ulid::new().0;
    let b = ulid::Ulid::new().0;
    format!("{a:032x}{b:032x}")
}

impl JwtConfig {
    /// Issues an ID-token-like JWT for `user`, valid for `ttl_secs`.
    pub fn issue(
        &self,
        user: &str,
        email: Option<&str>,
        groups: &[String],
        ttl_secs: i64,
    ) -> String {
        let now = now_secs();
        let email = email
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{user}@example.com"));
        let mut claims = json!({
            "sub": user,
            "email": email,
            "email_verified": true,
            "iss": self.issuer,
            "aud": self.audience,
            "token_use": "id",
            "auth_time": now,
            "iat": now,
            "exp": now + ttl_secs,
        });
        if !groups.is_empty() {
            claims["cognito:groups"] = json!(groups);
        }
        self.sign(&claims)
    }

    /// Signs arbitrary claims (tests use it for expired or foreign tokens).
    pub fn sign(&self, claims: &Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(self.key.as_bytes()),
        )
        .expect("HS256 signing cannot fail")
    }

    /// Checks an `Authorization` header value (`Bearer <jwt>` or the bare token, as API
    /// Gateway accepts both) and returns the claims as API Gateway passes them.
    pub fn verify(&self, authorization: Option<&str>) -> Result<Map<String, Value>, AuthError> {
        let header = authorization
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .ok_or(AuthError::Missing)?;
        let token = match header.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => header,
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = decode::<Map<String, Value>>(
            token,
            &DecodingKey::from_secret(self.key.as_bytes()),
            &validation,
        )
        .map_err(|e| AuthError::Invalid(e.to_string()))?;
        Ok(flatten_claims(&data.claims))
    }
}

/// Claims as API Gateway HTTP APIs pass them: every value a string, arrays as `[a b]`.
pub fn flatten_claims(claims: &Map<String, Value>) -> Map<String, Value> {
    claims
        .iter()
        .map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Array(items) => format!(
                    "[{}]",
                    items
                        .iter()
                        .map(|i| match i {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
                other => other.to_string(),
            };
            (k.clone(), Value::String(text))
        })
        .collect()
}

/// Seconds since the epoch.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> JwtConfig {
        JwtConfig {
            key: "dev-key".into(),
            issuer: "https://issuer".into(),
            audience: "web".into(),
        }
    }

    #[test]
    fn a_valid_token_yields_string_claims() {
        let c = config();
        let token = c.issue("alice", None, &["admin".into()], 600);
        let claims = c.verify(Some(&format!("Bearer {token}"))).unwrap();
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["email"], "alice@example.com");
        assert_eq!(claims["cognito:groups"], "[admin]");
        assert_eq!(claims["email_verified"], "true");
        assert!(claims["exp"].is_string());
        // API Gateway also takes the bare token.
        assert!(c.verify(Some(&token)).is_ok());
    }

    #[test]
    fn wrong_key_expired_foreign_or_missing_tokens_are_refused() {
        let c = config();
        let other = JwtConfig {
            key: "another-key".into(),
            ..config()
        };
        let forged = other.issue("alice", None, &[], 600);
        assert!(matches!(
            c.verify(Some(&format!("Bearer {forged}"))),
            Err(AuthError::Invalid(_))
        ));
        let expired = c.sign(&json!({
            "sub": "alice", "iss": c.issuer, "aud": c.audience, "exp": now_secs() - 5,
        }));
        assert!(c.verify(Some(&format!("Bearer {expired}"))).is_err());
        let foreign_issuer = c.sign(&json!({
            "sub": "alice", "iss": "https://elsewhere", "aud": c.audience, "exp": now_secs() + 60,
        }));
        assert!(c.verify(Some(&foreign_issuer)).is_err());
        let foreign_audience = c.sign(&json!({
            "sub": "alice", "iss": c.issuer, "aud": "other", "exp": now_secs() + 60,
        }));
        assert!(c.verify(Some(&foreign_audience)).is_err());
        let no_sub = c.sign(&json!({"iss": c.issuer, "aud": c.audience, "exp": now_secs() + 60}));
        assert!(c.verify(Some(&no_sub)).is_err());
        assert_eq!(c.verify(None), Err(AuthError::Missing));
        assert_eq!(c.verify(Some("  ")), Err(AuthError::Missing));
        assert!(c.verify(Some("Bearer not-a-jwt")).is_err());
    }
}
