//! Test users: where their tokens come from (minted with the local stack's HS256 dev key, read
//! from a token file, or one given token), and seeding them with credits through the admin
//! grant route before the load starts.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Map, Value};
use tokio::sync::Semaphore;

use crate::api::{error_text, Api};
use crate::classify::Answer;

/// One user the load is spread over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestUser {
    /// The `sub` claim, when known (needed to grant credits).
    pub id: Option<String>,
    /// The bearer token.
    pub token: String,
}

impl TestUser {
    /// A user from a token; the id is read from the token's `sub` claim when it is a JWT.
    pub fn from_token(token: &str) -> Self {
        let token = token.trim();
        let token = token
            .strip_prefix("Bearer ")
            .or_else(|| token.strip_prefix("bearer "))
            .unwrap_or(token)
            .trim()
            .to_string();
        Self {
            id: claims(&token)
                .and_then(|c| c.get("sub").and_then(Value::as_str).map(str::to_owned)),
            token,
        }
    }
}

/// Issues HS256 tokens the way the local stack's gateway expects them.
#[derive(Clone, Debug)]
pub struct Minter {
    /// The HS256 key.
    pub key: String,
    /// `iss`, when the gateway checks it.
    pub issuer: Option<String>,
    /// `aud`, when the gateway checks it.
    pub audience: Option<String>,
}

impl Minter {
    /// A Cognito-ID-token-like JWT for `sub`, in the `admin` group if asked, valid for `ttl`.
    pub fn token(&self, sub: &str, admin: bool, ttl: Duration) -> String {
        let now = epoch_secs();
        let mut claims = json!({
            "sub": sub,
            "email": format!("{sub}@loadtest.example.com"),
            "email_verified": true,
            "token_use": "id",
            "auth_time": now,
            "iat": now,
            "exp": now + ttl.as_secs().max(60),
        });
        if let Some(issuer) = &self.issuer {
            claims["iss"] = json!(issuer);
        }
        if let Some(audience) = &self.audience {
            claims["aud"] = json!(audience);
        }
        if admin {
            claims["cognito:groups"] = json!(["admin"]);
        }
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(self.key.as_bytes()),
        )
        .expect("HS256 signing cannot fail")
    }

    /// `count` users named `{prefix}{i}`.
    pub fn users(&self, prefix: &str, count: usize, ttl: Duration) -> Vec<TestUser> {
        (0..count)
            .map(|i| {
                let sub = format!("{prefix}{i}");
                TestUser {
                    token: self.token(&sub, false, ttl),
                    id: Some(sub),
                }
            })
            .collect()
    }
}

/// The claims of a JWT, read without checking the signature (only to learn `sub`, `iss`, `aud`).
pub fn claims(token: &str) -> Option<Map<String, Value>> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The tokens of a token file: one per line; blank lines and `#` comments are skipped, a
/// `Bearer ` prefix is allowed.
pub fn parse_token_file(text: &str) -> Vec<TestUser> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(TestUser::from_token)
        .collect()
}

fn epoch_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Grants `amount` credits to every user with a known id through `POST /api/admin/credits/grant`,
/// a few at a time, each under an `Idempotency-Key` of the run so a retried seed grants nothing
/// twice. Returns how many users were seeded.
pub async fn seed(
    api: &Api,
    admin_token: &str,
    users: &[TestUser],
    amount: u64,
    run_id: &str,
) -> Result<usize, String> {
    let gate = Arc::new(Semaphore::new(8));
    let mut grants = tokio::task::JoinSet::new();
    let mut ids: Vec<String> = users.iter().filter_map(|u| u.id.clone()).collect();
    ids.sort();
    ids.dedup();
    for id in ids {
        let (api, gate, admin_token) = (api.clone(), gate.clone(), admin_token.to_string());
        let key = format!("loadtest-{run_id}-{id}");
        grants.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let body = json!({"user_id": id, "amount": amount, "source": "loadtest"});
            let reply = api
                .post(
                    "/api/admin/credits/grant",
                    &admin_token,
                    &body,
                    &[("Idempotency-Key", key.as_str())],
                )
                .await;
            match reply.answer {
                Answer::Status(200 | 201) => Ok(()),
                Answer::Status(code) => Err(format!(
                    "granting credits to `{id}` answered {code} {}",
                    error_text(reply.body.as_ref())
                )),
                other => Err(format!("granting credits to `{id}`: {}", other.label())),
            }
        });
    }
    let mut seeded = 0;
    while let Some(result) = grants.join_next().await {
        result.map_err(|e| format!("seeding task: {e}"))??;
        seeded += 1;
    }
    Ok(seeded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_carry_the_claims_the_gateway_checks() {
        let minter = Minter {
            key: "k".into(),
            issuer: Some("https://issuer/us-east-1".into()),
            audience: Some("web".into()),
        };
        let admin = claims(&minter.token("ops", true, Duration::from_secs(600))).unwrap();
        assert_eq!(admin["sub"], "ops");
        assert_eq!(admin["iss"], "https://issuer/us-east-1");
        assert_eq!(admin["aud"], "web");
        assert_eq!(admin["cognito:groups"], json!(["admin"]));
        assert!(admin["exp"].as_u64().unwrap() > epoch_secs());
        let users = minter.users("lt-x-", 3, Duration::from_secs(600));
        assert_eq!(users.len(), 3);
        assert_eq!(users[2].id.as_deref(), Some("lt-x-2"));
        let user = claims(&users[0].token).unwrap();
        assert!(user.get("cognito:groups").is_none());
        assert_eq!(TestUser::from_token(&users[1].token), users[1]);
    }

    #[test]
    fn a_token_file_skips_comments_and_bearer_prefixes() {
        let minter = Minter {
            key: "k".into(),
            issuer: None,
            audience: None,
        };
        let a = minter.token("alice", false, Duration::from_secs(60));
        let text = format!("# users\n\nBearer {a}\n  opaque-token  \n");
        let users = parse_token_file(&text);
        assert_eq!(users.len(), 2);
        assert_eq!(users[0].id.as_deref(), Some("alice"));
        assert_eq!(users[0].token, a);
        assert_eq!(users[1].id, None);
        assert_eq!(users[1].token, "opaque-token");
    }
}
