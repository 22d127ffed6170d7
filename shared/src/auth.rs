//! The caller's identity, taken only from the claims that the API Gateway JWT authorizer put in
//! the request context; a user id in a body or query string is never trusted.

use lambda_http::request::RequestContext;
use lambda_http::{Request, RequestExt};

use crate::error::ApiError;

/// The group whose members may use the admin routes.
pub const ADMIN_GROUP: &str = "admin";

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The `sub` claim: the user id everywhere in the system.
    pub user_id: String,
    /// The `email` claim, when present.
    pub email: Option<String>,
    /// The `cognito:groups` claim.
    pub groups: Vec<String>,
}

impl Identity {
    /// Reads the identity from the authorizer claims of the request (401 when absent).
    pub fn from_request(request: &Request) -> Result<Self, ApiError> {
        let RequestContext::ApiGatewayV2(context) = request.request_context() else {
            return Err(ApiError::Unauthorized);
        };
        let claims = context
            .authorizer
            .and_then(|a| a.jwt)
            .map(|jwt| jwt.claims)
            .ok_or(ApiError::Unauthorized)?;
        let user_id = claims
            .get("sub")
            .map(|s| s.trim().to_owned())
            .filter(|s| valid_user_id(s))
            .ok_or(ApiError::Unauthorized)?;
        Ok(Self {
            user_id,
            email: claims.get("email").cloned(),
            groups: claims
                .get("cognito:groups")
                .map(|g| parse_groups(g))
                .unwrap_or_default(),
        })
    }

    /// Whether the caller belongs to the admin group.
    pub fn is_admin(&self) -> bool {
        self.groups.iter().any(|g| g == ADMIN_GROUP)
    }

    /// Fails with 403 unless the caller is an admin.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

/// A user id is an opaque token; these limits keep it safe as part of a key or an S3 prefix.
pub fn valid_user_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
}

/// HTTP APIs flatten array claims to `[a b]`; other issuers send JSON arrays or commas.
fn parse_groups(raw: &str) -> Vec<String> {
    if let Ok(list) = serde_json::from_str::<Vec<String>>(raw) {
        return list;
    }
    raw.trim_matches(|c| c == '[' || c == ']')
        .split([' ', ','])
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_read_in_every_encoding() {
        assert_eq!(parse_groups("[admin ops]"), vec!["admin", "ops"]);
        assert_eq!(parse_groups(r#"["admin","ops"]"#), vec!["admin", "ops"]);
        assert_eq!(parse_groups("admin,ops"), vec!["admin", "ops"]);
        assert!(parse_groups("[]").is_empty());
    }

    #[test]
    fn user_ids_that_could_break_keys_are_refused() {
        assert!(valid_user_id("0b6c1a2e-user"));
        assert!(!valid_user_id("a#b"));
        assert!(!valid_user_id("a/b"));
        assert!(!valid_user_id(""));
    }
}
