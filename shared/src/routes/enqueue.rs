//! `POST /api/images/seedream4/generate` and `POST /api/videos/seedance/generate`: validate,
//! price, reserve the credits together with the session and the idempotency record in one
//! transaction, send the queue message, answer 202. Two round trips to AWS on the happy path.

use lambda_http::{Body, Request, Response};
use serde_json::json;

use crate::auth::Identity;
use crate::error::{json_response, ApiError, Result};
use crate::generation::{self, Limits, Parsed};
use crate::idempotency::{Claim, Prior};
use crate::ledger::{self, Reservation, ReserveError};
use crate::queue::{self, GenerationMessage};
use crate::sessions::Session;
use crate::table::{keys, put_new, Item};
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
    let claim = idempotency_key.map(|key| claim(user_id, route, key, &parsed));
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
    if let Some(claim) = &claim {
        let ttl = state.config.idempotency_ttl_secs;
        items.push(claim.record(table, &accepted, ttl, [("session_id", session_id.clone())])?);
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
            let claim =
                claim.ok_or_else(|| ApiError::internal("item 1 is the idempotency record"))?;
            return replay(state, &claim, item).await;
        }
        Err(e) if e.may_have_committed() => {
            if !committed(state, &session).await? {
                return Err(e.into_api_error(&reservation));
            }
            tracing::warn!(error = ?e, "the reserve committed unseen; accepting the session");
        }
        Err(e) => return Err(e.into_api_error(&reservation)),
    }
    let message = GenerationMessage {
        session_id: session_id.clone(),
        user_id: user_id.to_owned(),
        attempt: 0,
        retries: 0,
        enqueued_at_ms: now,
    };
    if let Err(e) = queue::send(&state.aws.sqs, &state.config.queue_url, &message).await {
        // The session stays queued with its credits held; the sweeper re-dispatches it.
        tracing::error!(error = %e.chain(), "queue send failed after the reserve; the sweeper will re-dispatch");
    }
    Ok(json_response(202, &accepted))
}

/// Whether the session was written after all, by a reserve whose answer was lost, timed out
/// or whose retry met its own commit. Its id is fresh, so nobody else could have written it.
/// If even this read fails, the outcome stays unknown and the answer is a 500 (a retry with
/// the same `Idempotency-Key` then replays the 202).
async fn committed(state: &AppState, session: &Session) -> Result<bool> {
    let stored = crate::sessions::get(
        &state.aws.dynamodb,
        &state.config.table,
        &session.user_id,
        &session.session_id,
    )
    .await?;
    Ok(stored.is_some())
}

/// The first answer to a repeated `Idempotency-Key`, or 422 if the body differs.
async fn replay(state: &AppState, claim: &Claim, stored: Option<Item>) -> Result<Response<Body>> {
    let prior = claim.prior(&state.aws.dynamodb, &state.config.table, stored);
    match prior.await? {
        Prior::SameRequest(answer) => Ok(super::replayed(json_response(202, &answer))),
        Prior::OtherRequest => Err(ApiError::IdempotencyKeyReused),
        Prior::Unused => Err(ApiError::internal("idempotency record vanished")),
    }
}

/// The claim on an `Idempotency-Key`: two requests are the same when their route and
/// validated request are.
fn claim(user_id: &str, route: &str, key: &str, parsed: &Parsed) -> Claim {
    let canonical = json!({
        "route": route,
        "request": parsed.request,
        "client_key": parsed.client_key,
    });
    Claim::new(user_id, route, key, &canonical)
}
