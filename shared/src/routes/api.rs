//! The user's read routes (sessions, balance, ledger, usage summary) and health: the `api`
//! function. It reads, and writes only what a read settles (a balance read expires due lots);
//! the admin routes, which delete and re-queue, are another function's ([`super::admin`]).

use std::collections::{BTreeMap, HashSet};

use lambda_http::{Body, Request, Response};
use serde_json::{json, Value};

use crate::auth::Identity;
use crate::error::{json_response, ApiError, Result};
use crate::ledger::{self, EntryKind};
use crate::sessions::{self, Session};
use crate::table::keys;
use crate::{clock, AppState};

/// The routes the api function serves (API Gateway route keys).
pub const ROUTES: [&str; 6] = [
    "GET /health",
    "GET /api/sessions/{id}",
    "GET /api/sessions",
    "GET /api/credits/balance",
    "GET /api/credits/transactions",
    "GET /api/credits/usage/summary",
];

/// Handles one request to the api function.
pub async fn handle(state: &AppState, request: Request) -> Response<Body> {
    let route = super::route_key(&request);
    super::respond(
        super::request_id(&request),
        &route,
        dispatch(state, &route, &request),
    )
    .await
}

async fn dispatch(state: &AppState, route: &str, request: &Request) -> Result<Response<Body>> {
    if route == "GET /health" {
        return Ok(json_response(200, &json!({"status": "ok"})));
    }
    let identity = Identity::from_request(request)?;
    tracing::Span::current().record("user", identity.user_id.as_str());
    match route {
        "GET /api/sessions/{id}" => get_session(state, &identity, request).await,
        "GET /api/sessions" => list_sessions(state, &identity, request).await,
        "GET /api/credits/balance" => balance(state, &identity).await,
        "GET /api/credits/transactions" => transactions(state, &identity, request).await,
        "GET /api/credits/usage/summary" => usage_summary(state, &identity, request).await,
        _ => Err(ApiError::NotFound("route")),
    }
}

async fn get_session(
    state: &AppState,
    identity: &Identity,
    request: &Request,
) -> Result<Response<Body>> {
    let id = super::path_param(request, "id").unwrap_or_default();
    tracing::Span::current().record("session", id.as_str());
    let session = sessions::get(
        &state.aws.dynamodb,
        &state.config.table,
        &identity.user_id,
        &id,
    )
    .await?
    .ok_or(ApiError::NotFound("session"))?;
    Ok(json_response(200, &session_view(state, &session).await?))
}

async fn list_sessions(
    state: &AppState,
    identity: &Identity,
    request: &Request,
) -> Result<Response<Body>> {
    let page = super::page_request(request, keys::SESSION_PREFIX)?;
    let (items, next) = sessions::list(
        &state.aws.dynamodb,
        &state.config.table,
        &identity.user_id,
        &page,
    )
    .await?;
    let mut views = Vec::with_capacity(items.len());
    for session in &items {
        views.push(session_view(state, session).await?);
    }
    Ok(json_response(
        200,
        &json!({"items": views, "next_cursor": next}),
    ))
}

/// A session as the frontend sees it: outputs as short-lived presigned URLs.
async fn session_view(state: &AppState, session: &Session) -> Result<Value> {
    let ttl = std::time::Duration::from_secs(state.config.presign_ttl_secs);
    let expires_at = clock::now_ms() + ttl.as_millis() as i64;
    let mut outputs = Vec::with_capacity(session.outputs.len());
    for output in &session.outputs {
        let presigning = aws_sdk_s3::presigning::PresigningConfig::expires_in(ttl)
            .map_err(ApiError::internal)?;
        let url = state
            .aws
            .s3
            .get_object()
            .bucket(&state.config.bucket)
            .key(&output.key)
            .presigned(presigning)
            .await
            .map_err(ApiError::internal)?;
        outputs.push(json!({
            "index": output.index,
            "url": url.uri(),
            "content_type": output.content_type,
            "expires_at": expires_at,
        }));
    }
    Ok(json!({
        "session_id": session.session_id,
        "client_key": session.client_key,
        "kind": session.kind,
        "model": session.model,
        "status": session.status,
        "credits_reserved": session.credits_reserved,
        "credits_captured": session.credits_captured,
        "created_at": session.created_at_ms,
        "updated_at": session.updated_at_ms,
        "outputs": outputs,
        "note": session.note,
        "error": session.error,
        "timing": session.timing,
        "request": session.request,
    }))
}

async fn balance(state: &AppState, identity: &Identity) -> Result<Response<Body>> {
    let ddb = &state.aws.dynamodb;
    let table = &state.config.table;
    let mut account = ledger::get_account(ddb, table, &identity.user_id).await?;
    if account
        .as_ref()
        .is_some_and(|a| a.next_expiry_secs <= clock::now_secs())
    {
        // A lot is past its expiry: expire it now so the balance shown is spendable.
        ledger::expire_due(ddb, table, &identity.user_id, clock::now_secs()).await?;
        account = ledger::get_account(ddb, table, &identity.user_id).await?;
    }
    let account = account.unwrap_or_default();
    let mut lots: Vec<_> = account.lots.iter().collect();
    lots.sort_by_key(|(id, l)| (l.expires_at_secs.unwrap_or(ledger::NO_EXPIRY), *id));
    let lots: Vec<Value> = lots
        .into_iter()
        .map(|(id, l)| {
            json!({
                "lot_id": id, "amount": l.amount, "remaining": l.remaining,
                "expires_at": l.expires_at_secs, "source": l.source, "expired": l.expired,
            })
        })
        .collect();
    Ok(json_response(
        200,
        &json!({
            "available": account.available,
            "held": account.held,
            "captured": account.captured,
            "expired": account.expired,
            "granted": account.granted,
            "inflight": account.inflight,
            "lots": lots,
        }),
    ))
}

async fn transactions(
    state: &AppState,
    identity: &Identity,
    request: &Request,
) -> Result<Response<Body>> {
    let page = super::page_request(request, keys::LEDGER_PREFIX)?;
    let (entries, next) = ledger::list_entries(
        &state.aws.dynamodb,
        &state.config.table,
        &identity.user_id,
        &page,
    )
    .await?;
    let items: Vec<Value> = entries
        .iter()
        .map(|e| {
            json!({
                "entry_id": e.entry_id, "kind": e.kind, "amount": e.amount,
                "session_id": e.session_id, "lot_id": e.lot_id, "model": e.model, "at": e.at_ms,
            })
        })
        .collect();
    Ok(json_response(
        200,
        &json!({"items": items, "next_cursor": next}),
    ))
}

/// Longest range of a usage summary, in days.
const MAX_SUMMARY_DAYS: i64 = 366;
const DAY_MS: i64 = 86_400_000;

async fn usage_summary(
    state: &AppState,
    identity: &Identity,
    request: &Request,
) -> Result<Response<Body>> {
    let today = clock::parse_day(&clock::day_of(clock::now_ms())).unwrap_or_default();
    let day = |name: &str, default: i64| -> Result<i64> {
        match super::query(request, name) {
            None => Ok(default),
            Some(raw) => clock::parse_day(&raw).ok_or_else(|| {
                ApiError::invalid("invalid_range", format!("{name} must be YYYY-MM-DD"))
            }),
        }
    };
    let to = day("to", today)?;
    let from = day("from", to - 29 * DAY_MS)?;
    if from > to || (to - from) / DAY_MS >= MAX_SUMMARY_DAYS {
        return Err(ApiError::invalid(
            "invalid_range",
            format!("from must not be after to, and the range at most {MAX_SUMMARY_DAYS} days"),
        ));
    }
    let entries = ledger::entries_between(
        &state.aws.dynamodb,
        &state.config.table,
        &identity.user_id,
        &keys::id_floor(from),
        &keys::id_floor(to + DAY_MS),
    )
    .await?;
    let mut rows: BTreeMap<(String, String), (i64, HashSet<String>)> = BTreeMap::new();
    for entry in entries.iter().filter(|e| e.kind == EntryKind::Capture) {
        let key = (
            clock::day_of(entry.at_ms),
            entry.model.clone().unwrap_or_default(),
        );
        let row = rows.entry(key).or_default();
        row.0 += entry.amount;
        row.1.extend(entry.session_id.clone());
    }
    let total: i64 = rows.values().map(|(credits, _)| credits).sum();
    let by_model_day: Vec<Value> = rows
        .into_iter()
        .map(|((day, model), (credits, sessions))| {
            json!({"day": day, "model": model, "credits": credits, "sessions": sessions.len()})
        })
        .collect();
    Ok(json_response(
        200,
        &json!({
            "from": clock::day_of(from),
            "to": clock::day_of(to),
            "total": total,
            "by_model_day": by_model_day,
        }),
    ))
}
