//! An in-process fake of the API on 127.0.0.1:0: generate routes that answer a scripted cycle
//! of statuses after a fixed delay, sessions that finish after N polls, the admin grant route,
//! health and balance. It counts everything it served so tests compare the tool's numbers
//! with the server's.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

/// In the status cycle: a 202 whose body has no `session_id` (fails the checks).
pub const ACCEPTED_WITHOUT_SESSION: u16 = 1202;

/// How the fake behaves.
#[derive(Clone, Debug)]
pub struct Knobs {
    /// Generate request `k` answers `statuses[k % len]`.
    pub statuses: Vec<u16>,
    /// How long each generate request takes.
    pub delay: Duration,
    /// A session is finished on its N-th poll.
    pub polls_to_finish: u32,
    /// Every N-th accepted session fails (0: none).
    pub fail_every: u64,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            statuses: vec![202],
            delay: Duration::ZERO,
            polls_to_finish: 2,
            fail_every: 0,
        }
    }
}

/// What the fake served.
#[derive(Debug, Default)]
pub struct Served {
    pub generate: u64,
    pub images: u64,
    pub videos: u64,
    pub by_status: BTreeMap<u16, u64>,
    pub users: BTreeSet<String>,
    pub grants: Vec<(String, u64, bool)>,
    pub polls: u64,
    pub sessions: HashMap<String, (u32, bool)>,
    pub finished: u64,
    pub failed: u64,
    pub concurrent: u64,
    pub max_concurrent: u64,
}

struct Fake {
    knobs: Knobs,
    served: Mutex<Served>,
}

/// A running fake.
pub struct FakeApi {
    pub url: String,
    state: Arc<Fake>,
}

impl FakeApi {
    /// Starts a fake with `knobs` on a free port.
    pub async fn start(knobs: Knobs) -> Self {
        let state = Arc::new(Fake {
            knobs,
            served: Mutex::new(Served::default()),
        });
        let app = Router::new()
            .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
            .route("/api/credits/balance", get(balance))
            .route("/api/images/seedream4/generate", post(generate_image))
            .route("/api/videos/seedance/generate", post(generate_video))
            .route("/api/sessions/{id}", get(session))
            .route("/api/admin/credits/grant", post(grant))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, state }
    }

    /// Runs `f` on what was served.
    pub fn served<T>(&self, f: impl FnOnce(&Served) -> T) -> T {
        f(&self.state.served.lock().unwrap())
    }
}

fn error(status: u16, code: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        Json(json!({"error": {"code": code, "message": code}})),
    )
        .into_response()
}

/// The caller's `sub` (or the raw token), or `None` without a usable token.
fn caller(headers: &HeaderMap) -> Option<(String, bool)> {
    let token = headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?
        .to_string();
    if token == "bad" {
        return None;
    }
    Some(match loadtest::users::claims(&token) {
        Some(claims) => (
            claims.get("sub")?.as_str()?.to_string(),
            claims
                .get("cognito:groups")
                .and_then(Value::as_array)
                .is_some_and(|g| g.iter().any(|v| v == "admin")),
        ),
        None => (token, false),
    })
}

async fn balance(headers: HeaderMap) -> Response {
    match caller(&headers) {
        Some(_) => Json(json!({"available": 0, "held": 0, "captured": 0, "expired": 0, "granted": 0, "lots": []})).into_response(),
        None => (StatusCode::UNAUTHORIZED, Json(json!({"message": "Unauthorized"}))).into_response(),
    }
}

async fn generate_image(
    State(fake): State<Arc<Fake>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    generate(fake, headers, body, false).await
}

async fn generate_video(
    State(fake): State<Arc<Fake>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    generate(fake, headers, body, true).await
}

async fn generate(fake: Arc<Fake>, headers: HeaderMap, body: Value, video: bool) -> Response {
    let Some((user, _)) = caller(&headers) else {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "Unauthorized"})),
        )
            .into_response();
    };
    let k = {
        let mut s = fake.served.lock().unwrap();
        s.concurrent += 1;
        s.max_concurrent = s.max_concurrent.max(s.concurrent);
        let k = s.generate;
        s.generate += 1;
        if video {
            s.videos += 1;
        } else {
            s.images += 1;
        }
        s.users.insert(user);
        k
    };
    if !fake.knobs.delay.is_zero() {
        tokio::time::sleep(fake.knobs.delay).await;
    }
    let status = fake.knobs.statuses[(k as usize) % fake.knobs.statuses.len()];
    let mut s = fake.served.lock().unwrap();
    s.concurrent -= 1;
    *s.by_status.entry(status).or_default() += 1;
    let client_key = body
        .get("client_key")
        .cloned()
        .unwrap_or(json!("generated"));
    match status {
        202 => {
            let id = format!("s{k}");
            let fail = fake.knobs.fail_every > 0 && (k + 1) % fake.knobs.fail_every == 0;
            s.sessions.insert(id.clone(), (0, fail));
            (
                StatusCode::ACCEPTED,
                Json(json!({"session_id": id, "client_key": client_key, "status": "queued", "credits_reserved": 4})),
            )
                .into_response()
        }
        ACCEPTED_WITHOUT_SESSION => (
            StatusCode::ACCEPTED,
            Json(json!({"client_key": client_key, "status": "queued"})),
        )
            .into_response(),
        402 => error(402, "insufficient_credits"),
        429 => error(429, "too_many_inflight"),
        other => error(other, "internal"),
    }
}

async fn session(
    State(fake): State<Arc<Fake>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if caller(&headers).is_none() {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "Unauthorized"})),
        )
            .into_response();
    }
    let mut s = fake.served.lock().unwrap();
    s.polls += 1;
    let Some((polls, fail)) = s.sessions.get_mut(&id) else {
        return error(404, "not_found");
    };
    *polls += 1;
    let (polls, fail) = (*polls, *fail);
    let status = if polls < fake.knobs.polls_to_finish {
        "running"
    } else if fail {
        "failed"
    } else {
        "completed"
    };
    if polls == fake.knobs.polls_to_finish {
        if fail {
            s.failed += 1;
        } else {
            s.finished += 1;
        }
    }
    // Created at 1000, finished 250 ms later (server clock, epoch ms).
    Json(json!({"session_id": id, "status": status, "outputs": [], "created_at": 1000, "updated_at": 1250}))
        .into_response()
}

async fn grant(
    State(fake): State<Arc<Fake>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let Some((_, admin)) = caller(&headers) else {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "Unauthorized"})),
        )
            .into_response();
    };
    if !admin {
        return error(403, "forbidden");
    }
    let user = body["user_id"].as_str().unwrap_or_default().to_string();
    let amount = body["amount"].as_u64().unwrap_or_default();
    fake.served.lock().unwrap().grants.push((
        user.clone(),
        amount,
        headers.contains_key("idempotency-key"),
    ));
    (
        StatusCode::CREATED,
        Json(json!({"lot_id": "l1", "user_id": user, "amount": amount, "expires_at": null, "available": amount})),
    )
        .into_response()
}
