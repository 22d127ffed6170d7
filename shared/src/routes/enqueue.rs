//! `POST /api/images/seedream4/generate` and `POST /api/videos/seedance/generate`: validate,
//! price, reserve the credits together with the session and the idempotency record in one
//! transaction, send the queue message, answer 202. Two round trips to AWS on the happy path.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use lambda_http::{Body, Request, Response};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::auth::Identity;
use crate::error::{json_response, ApiError, Result};
use crate::generation::{self, Limits, Parsed};
use crate::ledger::{self, n, put_new, s, Reservation, ReserveError};
use crate::queue::{self, GenerationMessage};
use crate::sessions::Session;
use crate::{clock, keys, AppState};

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
    let idempotency_key = idempotency_key(request)?;
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

fn idempotency_key(request: &Request) -> Result<Option<String>> {
    let Some(value) = request.headers().get("idempotency-key") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .filter(|k| generation::valid_token(k))
        .map(|k| Some(k.to_owned()))
        .ok_or_else(|| {
            ApiError::invalid(
                "invalid_idempotency_key",
                "Idempotency-Key must be 1-128 characters of A-Z a-z 0-9 . _ : -",
            )
        })
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
        "status": "queued",
        "credits_reserved": session.credits_reserved,
    });
    let table = &state.config.table;
    let mut items = vec![put_new(table, session.to_item()?)?];
    if let (Some(key), Some(fingerprint)) = (idempotency_key, &fingerprint) {
        items.push(put_new(
            table,
            HashMap::from([
                ("pk".to_owned(), s(keys::user_pk(user_id))),
                ("sk".to_owned(), s(keys::idempotency_sk(route, key))),
                ("fingerprint".to_owned(), s(fingerprint.clone())),
                ("response".to_owned(), s(accepted.to_string())),
                ("session_id".to_owned(), s(session_id.clone())),
                (
                    "ttl".to_owned(),
                    n(now / 1000 + state.config.idempotency_ttl_secs),
                ),
            ]),
        )?);
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
        enqueued_at: now,
    };
    if let Err(e) = queue::send(&state.aws.sqs, &state.config.queue_url, &message).await {
        // The session stays queued with its credits held; the sweeper re-dispatches it.
        tracing::error!(error = %e, "queue send failed after the reserve; the sweeper will re-dispatch");
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
    item: Option<HashMap<String, AttributeValue>>,
) -> Result<Response<Body>> {
    let item = match item {
        Some(item) => item,
        None => state
            .aws
            .dynamodb
            .get_item()
            .table_name(&state.config.table)
            .key("pk", s(keys::user_pk(user_id)))
            .key("sk", s(keys::idempotency_sk(route, key)))
            .consistent_read(true)
            .send()
            .await?
            .item
            .ok_or_else(|| ApiError::internal("idempotency record vanished"))?,
    };
    let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
    if text("fingerprint").as_deref() != Some(fingerprint) {
        return Err(ApiError::IdempotencyKeyReused);
    }
    let stored = text("response").ok_or_else(|| ApiError::internal("record without response"))?;
    let mut response = json_response(202, &serde_json::from_str(&stored)?);
    response.headers_mut().insert(
        "idempotent-replayed",
        http::HeaderValue::from_static("true"),
    );
    Ok(response)
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
