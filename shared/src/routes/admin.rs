//! Every admin route (the `admin` group only), the `admin` function: credit grants, and the
//! dead letters: list (newest first), retry, delete, purge. A function of its own so that the
//! user-facing api function holds no right to delete items or re-queue work.

use aws_sdk_dynamodb::types::{DeleteRequest, TransactWriteItem, Update, WriteRequest};
use lambda_http::{Body, Request, Response};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{self, Identity};
use crate::deadletter::{self, DeadLetter, DLQ_PK, DLQ_PREFIX};
use crate::error::{json_body, json_response, ApiError, Result};
use crate::idempotency::{Claim, Prior};
use crate::ledger::{self, Grant, GrantError, Reservation, ReserveError};
use crate::queue::{self, GenerationMessage};
use crate::sessions::transitions::{self, DEAD_LETTERED};
use crate::sessions::{self, Session, Status};
use crate::table::{self, keys, number, page, string, Item};
use crate::{clock, AppState};

/// Route key of a grant.
pub const GRANT_ROUTE: &str = "POST /api/admin/credits/grant";

/// The routes the admin function serves (API Gateway route keys).
pub const ROUTES: [&str; 5] = [
    GRANT_ROUTE,
    "GET /api/admin/dlq/messages",
    "POST /api/admin/dlq/messages/{id}/retry",
    "DELETE /api/admin/dlq/messages/{id}",
    "POST /api/admin/dlq/purge",
];

/// Handles one request to the admin function.
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
    let identity = Identity::from_request(request)?;
    tracing::Span::current().record("user", identity.user_id.as_str());
    identity.require_admin()?;
    let id = super::path_param(request, "id").unwrap_or_default();
    match route {
        GRANT_ROUTE => grant(state, &identity, request).await,
        "GET /api/admin/dlq/messages" => list(state, request).await,
        "POST /api/admin/dlq/messages/{id}/retry" => retry(state, &identity, &id).await,
        "DELETE /api/admin/dlq/messages/{id}" => delete(state, &id).await,
        "POST /api/admin/dlq/purge" => purge(state).await,
        _ => Err(ApiError::NotFound("route")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    user_id: String,
    amount: i64,
    /// Epoch seconds.
    #[serde(default)]
    expires_at: Option<i64>,
    source: String,
}

/// Largest single grant.
const MAX_GRANT: i64 = 1_000_000;

impl GrantBody {
    fn validate(&self) -> Result<()> {
        if !auth::valid_user_id(&self.user_id) {
            return Err(ApiError::invalid(
                "invalid_field",
                "user_id is not a valid user id",
            ));
        }
        if !(1..=MAX_GRANT).contains(&self.amount) {
            return Err(ApiError::invalid(
                "invalid_amount",
                format!("amount must be 1..{MAX_GRANT}"),
            ));
        }
        if self.source.trim().is_empty() || self.source.len() > 64 {
            return Err(ApiError::invalid(
                "invalid_field",
                "source must be 1-64 characters",
            ));
        }
        Ok(())
    }

    /// The one rule that depends on when the request arrives.
    fn expiry_is_ahead(&self) -> Result<()> {
        if self.expires_at.is_some_and(|t| t <= clock::now_secs()) {
            return Err(ApiError::invalid(
                "invalid_expiry",
                "expires_at must be in the future",
            ));
        }
        Ok(())
    }
}

async fn grant(state: &AppState, identity: &Identity, request: &Request) -> Result<Response<Body>> {
    let body: GrantBody = json_body(super::body_bytes(request))?;
    body.validate()?;
    let source = body.source.trim();
    // With an Idempotency-Key (the admin's own, like any client's), the grant and its record
    // commit together: a retry, however late, grants nothing and gets the first answer.
    let claim = super::idempotency_key(request)?.map(|key| {
        let canonical = json!({"route": GRANT_ROUTE, "user_id": body.user_id,
            "amount": body.amount, "expires_at": body.expires_at, "source": source});
        Claim::new(&identity.user_id, GRANT_ROUTE, &key, &canonical)
    });
    let ddb = &state.aws.dynamodb;
    let table = &state.config.table;
    if let Err(expired) = body.expiry_is_ahead() {
        // A late retry of a grant whose expiry has passed since is still that grant's replay.
        return match &claim {
            Some(claim) => replay(state, identity, claim, None, Some(expired)).await,
            None => Err(expired),
        };
    }
    let lot_id = keys::new_id();
    let answer = json!({
        "lot_id": lot_id,
        "user_id": body.user_id,
        "amount": body.amount,
        "expires_at": body.expires_at,
    });
    let ttl = state.config.idempotency_ttl_secs;
    let records = claim
        .iter()
        .map(|c| c.record(table, &answer, ttl, []))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let grant = Grant {
        user_id: &body.user_id,
        lot_id: &lot_id,
        amount: body.amount,
        expires_at_secs: body.expires_at,
        source,
    };
    match ledger::grant(ddb, table, &grant, records).await {
        Ok(outcome) => {
            tracing::info!(admin = %identity.user_id, to = %body.user_id, amount = body.amount, lot = %lot_id, "credits granted");
            Ok(json_response(
                201,
                &with_available(answer, outcome.available),
            ))
        }
        Err(GrantError::ItemConflict(stored)) => {
            let claim =
                claim.ok_or_else(|| ApiError::internal("the record is the only extra item"))?;
            replay(state, identity, &claim, stored, None).await
        }
        Err(GrantError::Failed(e)) => Err(e.into()),
    }
}

/// The answer to a grant whose key was used before: the first answer (200) if it was this
/// grant, 422 if another; `unused` is the error to give when the key was never used.
async fn replay(
    state: &AppState,
    identity: &Identity,
    claim: &Claim,
    stored: Option<Item>,
    unused: Option<ApiError>,
) -> Result<Response<Body>> {
    let ddb = &state.aws.dynamodb;
    let table = &state.config.table;
    let first = match claim.prior(ddb, table, stored).await? {
        Prior::SameRequest(first) => first,
        Prior::OtherRequest => return Err(ApiError::IdempotencyKeyReused),
        Prior::Unused => {
            return Err(unused.unwrap_or_else(|| ApiError::internal("idempotency record vanished")))
        }
    };
    let user = first["user_id"].as_str().unwrap_or_default();
    let available = ledger::get_account(ddb, table, user)
        .await?
        .map_or(0, |a| a.available);
    tracing::info!(admin = %identity.user_id, to = %user, lot = %first["lot_id"], "grant replayed: nothing granted");
    Ok(super::replayed(json_response(
        200,
        &with_available(first, available),
    )))
}

/// A grant's answer with the recipient's balance now.
fn with_available(mut answer: serde_json::Value, available: i64) -> serde_json::Value {
    answer["available"] = json!(available);
    answer
}

async fn list(state: &AppState, request: &Request) -> Result<Response<Body>> {
    let page = super::page_request(request, DLQ_PREFIX)?;
    let (items, next): (Vec<DeadLetter>, _) = page::query_prefix(
        &state.aws.dynamodb,
        &state.config.table,
        DLQ_PK,
        DLQ_PREFIX,
        &page,
        None,
    )
    .await?;
    Ok(json_response(
        200,
        &json!({"items": items, "next_cursor": next}),
    ))
}

async fn get(state: &AppState, id: &str) -> Result<DeadLetter> {
    if !sessions::valid_session_id(id) {
        return Err(ApiError::NotFound("dead letter"));
    }
    table::get_item(
        &state.aws.dynamodb,
        &state.config.table,
        deadletter::record_key(id),
    )
    .await?
    .ok_or(ApiError::NotFound("dead letter"))
}

/// Re-reserves the credits and re-enqueues the session as a new attempt (402 if the user can
/// no longer pay, 409 if the session is no longer dead-lettered).
async fn retry(state: &AppState, identity: &Identity, id: &str) -> Result<Response<Body>> {
    let letter = get(state, id).await?;
    let session = dead_lettered_session(state, &letter).await?;
    let (user_id, session_id) = (&session.user_id, &session.session_id);
    let table = &state.config.table;
    let now = clock::now_ms();
    let reservation = Reservation {
        user_id,
        session_id,
        amount: session.credits_reserved,
        model: &session.model,
        inflight_cap: state.config.inflight_cap,
    };
    let items = vec![
        transitions::requeue(table, user_id, session_id, now)?,
        mark_retried(table, id, now)?,
    ];
    if let Err(e) = ledger::reserve(&state.aws.dynamodb, table, &reservation, items).await {
        if !(e.may_have_committed() && retried_at(state, id).await? == Some(now)) {
            return Err(match e {
                ReserveError::ItemConflict { .. } => {
                    ApiError::Conflict("the dead letter was retried meanwhile".into())
                }
                e => e.into_api_error(&reservation),
            });
        }
        tracing::warn!(error = ?e, "the retry's reserve committed unseen; going on");
    }
    let message = GenerationMessage {
        session_id: session_id.clone(),
        user_id: user_id.clone(),
        attempt: session.attempt + 1,
        retries: session.retries + 1,
        enqueued_at_ms: now,
    };
    if let Err(e) = queue::send(&state.aws.sqs, &state.config.queue_url, &message).await {
        tracing::error!(error = %e.chain(), "retry send failed; the sweeper re-dispatches the queued session");
    }
    tracing::info!(admin = %identity.user_id, dead_letter = %id, session = %session_id, "dead letter retried");
    Ok(json_response(
        202,
        &json!({"session_id": session_id, "client_key": session.client_key, "status": Status::Queued, "credits_reserved": session.credits_reserved}),
    ))
}

/// When the dead letter was last retried: a reserve whose answer was lost (or whose retry met
/// its own commit) is known to be this call's by the time it stamped.
async fn retried_at(state: &AppState, id: &str) -> Result<Option<i64>> {
    Ok(get(state, id).await?.retried_at_ms)
}

/// The session a dead letter names, if it is still dead-lettered (409 otherwise).
async fn dead_lettered_session(state: &AppState, letter: &DeadLetter) -> Result<Session> {
    let (Some(session_id), Some(user_id)) = (&letter.session_id, &letter.user_id) else {
        return Err(ApiError::Conflict(
            "this dead letter names no session to retry".into(),
        ));
    };
    let session = sessions::get(
        &state.aws.dynamodb,
        &state.config.table,
        user_id,
        session_id,
    )
    .await?
    .ok_or_else(|| ApiError::Conflict("the session no longer exists".into()))?;
    let dead_lettered = session.status == Status::Failed
        && session
            .error
            .as_ref()
            .is_some_and(|e| e.code == DEAD_LETTERED);
    if !dead_lettered {
        return Err(ApiError::Conflict(format!(
            "the session is {:?}, not dead-lettered",
            session.status
        )));
    }
    Ok(session)
}

/// The update that stamps a dead-letter record with the time of its retry.
fn mark_retried(table: &str, id: &str, now_ms: i64) -> Result<TransactWriteItem> {
    let update = Update::builder()
        .table_name(table)
        .set_key(Some(deadletter::record_key(id)))
        .update_expression("SET retried_at = :now")
        .condition_expression("attribute_exists(pk)")
        .expression_attribute_values(":now", number(now_ms))
        .build()
        .map_err(crate::fault::Fault::from)?;
    Ok(TransactWriteItem::builder().update(update).build())
}

async fn delete(state: &AppState, id: &str) -> Result<Response<Body>> {
    get(state, id).await?;
    state
        .aws
        .dynamodb
        .delete_item()
        .table_name(&state.config.table)
        .set_key(Some(deadletter::record_key(id)))
        .send()
        .await?;
    Ok(json_response(200, &json!({"deleted": id})))
}

async fn purge(state: &AppState) -> Result<Response<Body>> {
    let ddb = &state.aws.dynamodb;
    let table = &state.config.table;
    let mut purged = 0usize;
    let mut start = None;
    loop {
        let page = ddb
            .query()
            .table_name(table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .expression_attribute_values(":pk", string(DLQ_PK))
            .expression_attribute_values(":prefix", string(DLQ_PREFIX))
            .projection_expression("pk, sk")
            .set_exclusive_start_key(start)
            .send()
            .await?;
        for chunk in page.items.unwrap_or_default().chunks(25) {
            purged += delete_keys(ddb, table, chunk).await?;
        }
        match page.last_evaluated_key {
            Some(key) => start = Some(key),
            None => break,
        }
    }
    tracing::warn!(purged, "dead letters purged");
    Ok(json_response(200, &json!({"purged": purged})))
}

/// Deletes up to 25 items in one `BatchWriteItem`, sending again what DynamoDB leaves
/// unprocessed; returns how many were deleted.
async fn delete_keys(ddb: &aws_sdk_dynamodb::Client, table: &str, keys: &[Item]) -> Result<usize> {
    let mut requests: Vec<WriteRequest> = keys
        .iter()
        .map(|key| {
            WriteRequest::builder()
                .delete_request(
                    DeleteRequest::builder()
                        .set_key(Some(key.clone()))
                        .build()
                        .expect("key set"),
                )
                .build()
        })
        .collect();
    let mut deleted = 0;
    for _ in 0..8 {
        let output = ddb
            .batch_write_item()
            .request_items(table, requests.clone())
            .send()
            .await?;
        let left = output
            .unprocessed_items
            .and_then(|mut u| u.remove(table))
            .unwrap_or_default();
        deleted += requests.len() - left.len();
        if left.is_empty() {
            break;
        }
        requests = left;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Ok(deleted)
}
