//! `POST /api/images/seedream4/generate` and `POST /api/videos/seedance/generate`: validate,
//! price, reserve the credits together with the session and the idempotency record in one
//! transaction, send the queue message, answer 202. Two round trips to AWS on the happy path.

use lambda_http::{Body, Request, Response};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::auth::Identity;
use crate::error::{json_response, ApiError, Result};
use crate::generation::{self, Limits, Parsed};
use crate::ledger::{self, Reservation, ReserveError};
use crate::queue::{self, GenerationMessage};
use crate::sessions::Session;
use crate::table::{self, keys, number, put_new, string, Item};
use crate::{clock, AppState};

/// Route key of image generation.
pub const IMAGE_ROUTE: &str = "POST /api/images/seedream4/generate";
/// Route key of video generation.
pub const VIDEO_ROUTE: &str = "POST /api/videos/seedance/generate";

/// The routes this function serves.
pub const ROUTES: [&str; 2] = [IMAGE_ROUTE, VIDEO_ROUTE];

/// Handles one request to the enqueue function.
pub async fn handle(state: &AppState, request: Request) -> Response<Body> {
    let route = super::route_key(&request);
    super::respond(
        super::request_id(&request),
        &route,
        enqueue(state, &route, &request),
    )
    .await
}

async fn enqueue(state: &AppState, route: &str, request: &Request) -> Result<Response<Body>> {
    let identity = Identity::from_request(request)?;
    tracing::Span::current().record("user", identity.user_id.as_str());
    let limits = Limits {
        max_prompt_chars: state.config.max_prompt_chars,
    };
    let idempotency_key = super::idempotency_key(request)?;
    let body = super::body_bytes(request);
    let parsed = match route {
        IMAGE_ROUTE => generation::parse_image(body, limits)?,
        VIDEO_ROUTE => generation::parse_video(body, limits)?,
        _ => return Err(ApiError::NotFound("route")),
    };
    accept(
        state,
        &identity.user_id,
        route,
        parsed,
        idempotency_key.as_deref(),
    )
    .await
}

/// Reserves, records and dispatches a validated request; answers 202.
pub async fn accept(
    state: &AppState,
    user_id: &str,
    route: &str,
    parsed: Parsed,
    idempotency_key: Option<&str>,
) -> Result<Response<Body>> {
    let now = clock::now_ms();
    let session_id = keys::new_id();
    tracing::Span::current().record("session", session_id.as_str());
    // Only a request that carries an Idempotency-Key needs its fingerprint.
    let fingerprint = idempotency_key
        .map(|_| fingerprint(route, &parsed))
        .transpose()?;
    let client_key = parsed.client_key.clone().unwrap_or_else(keys::new_id);
    let session = Session::queued(session_id.clone(), user_id, client_key, parsed.request, now);
    let accepted = json!({
        "session_id": session.session_id,
        "client_key": session.client_key,
        "status": session.status,
        "credits_reserved": session.credits_reserved,
    });
    let table = &state.config.table;
    let mut items = vec![put_new(table, session.to_item()?)?];
    if let (Some(key), Some(fingerprint)) = (idempotency_key, &fingerprint) {
        let mut record = idempotency_key_of(user_id, route, key);
        record.extend([
            ("fingerprint".to_owned(), string(fingerprint.clone())),
            ("response".to_owned(), string(accepted.to_string())),
            ("session_id".to_owned(), string(session_id.clone())),
            (
                "ttl".to_owned(),
                number(clock::ms_to_secs(now) + state.config.idempotency_ttl_secs),
            ),
        ]);
        items.push(put_new(table, record)?);
    }
    let reservation = Reservation {
        user_id,
        session_id: &session_id,
        amount: session.credits_reserved,
        model: &session.model,
        inflight_cap: state.config.inflight_cap,
    };
    match ledger::reserve(&state.aws.dynamodb, table, &reservation, items).await {
        Ok(()) => {}
        Err(ReserveError::ItemConflict { index: 1, item }) => {
            let (Some(key), Some(fingerprint)) = (idempotency_key, &fingerprint) else {
                return Err(ApiError::internal("item 1 is the idempotency record"));
            };
            return replay(state, user_id, route, key, fingerprint, item).await;
        }
        Err(e) => return Err(e.into_api_error(&reservation)),
    }
    let message = GenerationMessage {
        session_id: session_id.clone(),
        user_id: user_id.to_owned(),
        attempt: 0,
        enqueued_at_ms: now,
    };
    if let Err(e) = queue::send(&state.aws.sqs, &state.config.queue_url, &message).await {
        // The session stays queued with its credits held; the sweeper re-dispatches it.
        tracing::error!(error = %e.chain(), "queue send failed after the reserve; the sweeper will re-dispatch");
    }
    Ok(json_response(202, &accepted))
}

/// The first answer to a repeated `Idempotency-Key`, or 422 if the body differs.
async fn replay(
    state: &AppState,
    user_id: &str,
    route: &str,
    key: &str,
    fingerprint: &str,
    item: Option<Item>,
) -> Result<Response<Body>> {
    let item = match item {
        Some(item) => item,
        None => state
            .aws
            .dynamodb
            .get_item()
            .table_name(&state.config.table)
            .set_key(Some(idempotency_key_of(user_id, route, key)))
            .consistent_read(true)
            .send()
            .await?
            .item
            .ok_or_else(|| ApiError::internal("idempotency record vanished"))?,
    };
    if table::string_of(&item, "fingerprint") != Some(fingerprint) {
        return Err(ApiError::IdempotencyKeyReused);
    }
    let stored = table::string_of(&item, "response")
        .ok_or_else(|| ApiError::internal("record without response"))?;
    let mut response = json_response(202, &serde_json::from_str(stored)?);
    response.headers_mut().insert(
        "idempotent-replayed",
        http::HeaderValue::from_static("true"),
    );
    Ok(response)
}

/// The key of the idempotency record of `key` on `route`.
fn idempotency_key_of(user_id: &str, route: &str, key: &str) -> Item {
    table::key(keys::user_pk(user_id), keys::idempotency_sk(route, key))
}

/// What makes two requests "the same" for idempotency: the route and the validated request.
fn fingerprint(route: &str, parsed: &Parsed) -> Result<String> {
    let canonical = serde_json::to_string(&json!({
        "route": route,
        "request": parsed.request,
        "client_key": parsed.client_key,
    }))?;
    Ok(hex::encode(Sha256::digest(canonical)))
}
