//! Admin routes over dead letters: list (newest first), retry, delete, purge. Admin group only.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{DeleteRequest, TransactWriteItem, Update, WriteRequest};
use lambda_http::{Body, Request, Response};
use serde_json::json;

use crate::auth::Identity;
use crate::deadletter::{self, DeadLetter, DEAD_LETTERED, DLQ_PK, DLQ_PREFIX};
use crate::error::{json_response, ApiError, Result};
use crate::ledger::{self, n, s, Reservation, ReserveError};
use crate::pagination::{self, PageRequest};
use crate::queue::{self, GenerationMessage};
use crate::sessions::{self, Status};
use crate::{clock, AppState};

/// The admin dead-letter routes.
pub const ROUTES: [&str; 4] = [
    "GET /api/admin/dlq/messages",
    "POST /api/admin/dlq/messages/{id}/retry",
    "DELETE /api/admin/dlq/messages/{id}",
    "POST /api/admin/dlq/purge",
];

/// Dispatches an admin dead-letter route.
pub async fn dispatch(
    state: &AppState,
    identity: &Identity,
    route: &str,
    request: &Request,
) -> Result<Response<Body>> {
    identity.require_admin()?;
    let id = super::path_param(request, "id").unwrap_or_default();
    match route {
        "GET /api/admin/dlq/messages" => list(state, request).await,
        "POST /api/admin/dlq/messages/{id}/retry" => retry(state, identity, &id).await,
        "DELETE /api/admin/dlq/messages/{id}" => delete(state, &id).await,
        "POST /api/admin/dlq/purge" => purge(state).await,
        _ => Err(ApiError::NotFound("route")),
    }
}

async fn list(state: &AppState, request: &Request) -> Result<Response<Body>> {
    let page = PageRequest::parse(
        super::query(request, "cursor").as_deref(),
        super::query(request, "limit").as_deref(),
        DLQ_PREFIX,
    )?;
    let (items, next): (Vec<DeadLetter>, _) = pagination::query_prefix(
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
    ledger::get_item(
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
    let (Some(session_id), Some(user_id)) = (&letter.session_id, &letter.user_id) else {
        return Err(ApiError::Conflict(
            "this dead letter names no session to retry".into(),
        ));
    };
    let table = &state.config.table;
    let session = sessions::get(&state.aws.dynamodb, table, user_id, session_id)
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
    let now = clock::now_ms();
    let requeue = Update::builder()
        .table_name(table)
        .set_key(Some(sessions::session_key(user_id, session_id)))
        .update_expression(
            "SET #status = :queued, open_pk = :open, open_at = :now, updated_at = :now, credits_captured = :zero \
             REMOVE #error, last_error, first_failed_at, dispatched_at",
        )
        .condition_expression("#status = :failed AND #error.code = :dead")
        .set_expression_attribute_names(Some(HashMap::from([
            ("#status".to_owned(), "status".to_owned()),
            ("#error".to_owned(), "error".to_owned()),
        ])))
        .expression_attribute_values(":queued", s("queued"))
        .expression_attribute_values(":failed", s("failed"))
        .expression_attribute_values(":dead", s(DEAD_LETTERED))
        .expression_attribute_values(":open", s(sessions::OPEN_PK))
        .expression_attribute_values(":now", n(now))
        .expression_attribute_values(":zero", n(0))
        .build()
        .map_err(ApiError::internal)?;
    let mark = Update::builder()
        .table_name(table)
        .set_key(Some(deadletter::record_key(id)))
        .update_expression("SET retried_at = :now")
        .condition_expression("attribute_exists(pk)")
        .expression_attribute_values(":now", n(now))
        .build()
        .map_err(ApiError::internal)?;
    let reservation = Reservation {
        user_id,
        session_id,
        amount: session.credits_reserved,
        model: &session.model,
        inflight_cap: state.config.inflight_cap,
    };
    let items = vec![
        TransactWriteItem::builder().update(requeue).build(),
        TransactWriteItem::builder().update(mark).build(),
    ];
    match ledger::reserve(&state.aws.dynamodb, table, &reservation, items).await {
        Ok(()) => {}
        Err(ReserveError::ItemConflict { .. }) => {
            return Err(ApiError::Conflict(
                "the dead letter was retried meanwhile".into(),
            ))
        }
        Err(e) => return Err(e.into_api_error(&reservation)),
    }
    let message = GenerationMessage {
        session_id: session_id.clone(),
        user_id: user_id.clone(),
        attempt: session.attempt + 1,
        enqueued_at: now,
    };
    if let Err(e) = queue::send(&state.aws.sqs, &state.config.queue_url, &message).await {
        tracing::error!(error = %e, "retry send failed; the sweeper re-dispatches the queued session");
    }
    tracing::info!(admin = %identity.user_id, dead_letter = %id, session = %session_id, "dead letter retried");
    Ok(json_response(
        202,
        &json!({"session_id": session_id, "client_key": session.client_key, "status": "queued", "credits_reserved": session.credits_reserved}),
    ))
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
            .expression_attribute_values(":pk", s(DLQ_PK))
            .expression_attribute_values(":prefix", s(DLQ_PREFIX))
            .projection_expression("pk, sk")
            .set_exclusive_start_key(start)
            .send()
            .await?;
        let keys = page.items.unwrap_or_default();
        for chunk in keys.chunks(25) {
            let mut requests: Vec<WriteRequest> = chunk
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
            // BatchWriteItem may leave some for later: send those again until none is left.
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
                purged += requests.len() - left.len();
                if left.is_empty() {
                    break;
                }
                requests = left;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        match page.last_evaluated_key {
            Some(key) => start = Some(key),
            None => break,
        }
    }
    tracing::warn!(purged, "dead letters purged");
    Ok(json_response(200, &json!({"purged": purged})))
}
