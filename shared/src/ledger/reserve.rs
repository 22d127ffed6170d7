//! The hot path: a hold placed for a new session without reading first.

use aws_sdk_dynamodb::types::{
    CancellationReason, ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};

use super::{account_key, expire_due, get_account, Account, EntryKind, Hold, LedgerEntry};
use crate::clock;
use crate::error::ApiError;
use crate::fault::Fault;
use crate::table::{self, number, Item, TxFailure, MAX_ATTEMPTS};

/// A hold to place for a new session.
#[derive(Clone, Debug)]
pub struct Reservation<'a> {
    /// Whose credits.
    pub user_id: &'a str,
    /// The session the hold belongs to.
    pub session_id: &'a str,
    /// Credits to hold.
    pub amount: i64,
    /// Model, for the ledger.
    pub model: &'a str,
    /// Per-user cap on sessions in flight.
    pub inflight_cap: u32,
}

/// Why a reserve was refused.
#[derive(Debug)]
pub enum ReserveError {
    /// The balance does not cover the hold (no account counts as a zero balance).
    Insufficient {
        /// Credits available.
        available: i64,
    },
    /// The user already has `cap` sessions in flight.
    TooManyInflight,
    /// One of the caller's own items failed its condition; carries its index among the
    /// caller's items and the item as it was, when DynamoDB returned it.
    ItemConflict {
        /// Index among the caller's extra items.
        index: usize,
        /// The stored item.
        item: Option<Item>,
    },
    /// Our own failure.
    Failed(Fault),
}

impl ReserveError {
    /// The HTTP error for a refused reserve; a conflict on the caller's own items is the
    /// caller's to interpret first (idempotent replay, concurrent retry), else it is a 409.
    pub fn into_api_error(self, reservation: &Reservation<'_>) -> ApiError {
        match self {
            Self::Insufficient { available } => ApiError::InsufficientCredits {
                needed: reservation.amount,
                available,
            },
            Self::TooManyInflight => ApiError::TooManyInflight {
                cap: reservation.inflight_cap,
            },
            Self::ItemConflict { index, .. } => {
                ApiError::Conflict(format!("item {index} of the reservation changed meanwhile"))
            }
            Self::Failed(e) => e.into(),
        }
    }

    /// Whether the hold may have been placed after all: the transaction's answer never came
    /// (a transport error, a timeout, a 500 after committing), or a retry met the caller's
    /// first item, the one a commit of this very request wrote. The caller reads back.
    pub fn may_have_committed(&self) -> bool {
        matches!(self, Self::Failed(_) | Self::ItemConflict { index: 0, .. })
    }
}

impl From<Fault> for ReserveError {
    fn from(e: Fault) -> Self {
        Self::Failed(e)
    }
}

/// What one refused attempt means.
enum Refusal {
    /// A lot is past its expiry: expire it, then try again at once.
    ExpireFirst,
    /// A conflict with a concurrent transaction: try again shortly.
    Conflict,
    /// Refused for good.
    Final(ReserveError),
}

/// Places a hold atomically with the caller's `items` (session, idempotency record), in one
/// transaction and without reading first. Two requests racing for the last credits cannot both
/// win: the condition on `available` is evaluated inside the write.
pub async fn reserve(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    reservation: &Reservation<'_>,
    items: Vec<TransactWriteItem>,
) -> Result<(), ReserveError> {
    let mut expired_once = false;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let now_ms = clock::now_ms();
        let mut writes = vec![
            hold_update(table, reservation, now_ms)?,
            hold_entry(reservation).put(table, reservation.user_id)?,
        ];
        let own_items = writes.len();
        writes.extend(items.iter().cloned());
        let reasons = match table::transact(ddb, writes).await {
            Ok(()) => return Ok(()),
            Err(TxFailure::Cancelled(reasons)) => reasons,
            Err(TxFailure::Other(e)) => return Err(ReserveError::Failed(e)),
        };
        let may_expire = !expired_once;
        match refusal(
            ddb,
            table,
            reservation,
            &reasons,
            own_items,
            now_ms,
            may_expire,
        )
        .await?
        {
            Refusal::ExpireFirst => {
                expired_once = true;
                expire_due(ddb, table, reservation.user_id, clock::ms_to_secs(now_ms)).await?;
            }
            Refusal::Conflict if attempt < MAX_ATTEMPTS => table::backoff(attempt).await,
            Refusal::Conflict => {
                return Err(ReserveError::Failed(Fault::new(format!(
                    "reserve gave up after {attempt} conflicting attempts: {reasons:?}"
                ))))
            }
            Refusal::Final(e) => return Err(e),
        }
    }
}

/// The conditional update of the account that records the hold.
fn hold_update(
    table: &str,
    reservation: &Reservation<'_>,
    now_ms: i64,
) -> Result<TransactWriteItem, Fault> {
    let hold = Hold {
        amount: reservation.amount,
        created_at_ms: now_ms,
        expired_part: 0,
        model: reservation.model.to_owned(),
    };
    let update = Update::builder()
        .table_name(table)
        .set_key(Some(account_key(reservation.user_id)))
        .update_expression(
            "SET holds.#sid = :hold ADD available :minus, held :amount, inflight :one",
        )
        .condition_expression(
            "attribute_exists(pk) AND available >= :amount AND inflight < :cap \
             AND next_expiry > :now AND attribute_not_exists(holds.#sid)",
        )
        .expression_attribute_names("#sid", reservation.session_id)
        .expression_attribute_values(":hold", serde_dynamo::to_attribute_value(&hold)?)
        .expression_attribute_values(":minus", number(-reservation.amount))
        .expression_attribute_values(":amount", number(reservation.amount))
        .expression_attribute_values(":one", number(1))
        .expression_attribute_values(":cap", number(i64::from(reservation.inflight_cap)))
        .expression_attribute_values(":now", number(clock::ms_to_secs(now_ms)))
        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
        .build()?;
    Ok(TransactWriteItem::builder().update(update).build())
}

/// The `hold` ledger entry.
fn hold_entry(reservation: &Reservation<'_>) -> LedgerEntry {
    let mut entry = LedgerEntry::for_session(
        EntryKind::Hold,
        reservation.amount,
        reservation.session_id,
        reservation.model,
    );
    entry.d_available = -reservation.amount;
    entry.d_held = reservation.amount;
    entry
}

/// Reads the cancellation reasons of a refused attempt. The caller's items (from `own_items`
/// on) speak first: an idempotent replay wins over a short balance. A lot past its expiry is
/// expired once (`may_expire`); after that the balance decides.
async fn refusal(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    reservation: &Reservation<'_>,
    reasons: &[CancellationReason],
    own_items: usize,
    now_ms: i64,
    may_expire: bool,
) -> Result<Refusal, Fault> {
    for (index, reason) in reasons.iter().enumerate().skip(own_items) {
        if table::is_condition_failure(reason) {
            return Ok(Refusal::Final(ReserveError::ItemConflict {
                index: index - own_items,
                item: reason.item().cloned(),
            }));
        }
    }
    if !reasons.first().is_some_and(table::is_condition_failure) {
        return Ok(Refusal::Conflict);
    }
    let account = match reasons[0].item() {
        Some(item) => Some(serde_dynamo::from_item::<_, Account>(item.clone())?),
        // Not every endpoint returns the item with the reason: read it.
        None => get_account(ddb, table, reservation.user_id).await?,
    };
    let Some(account) = account else {
        return Ok(Refusal::Final(ReserveError::Insufficient { available: 0 }));
    };
    Ok(
        if may_expire && account.next_expiry_secs <= clock::ms_to_secs(now_ms) {
            Refusal::ExpireFirst
        } else if account.inflight >= i64::from(reservation.inflight_cap) {
            Refusal::Final(ReserveError::TooManyInflight)
        } else if account.available < reservation.amount {
            Refusal::Final(ReserveError::Insufficient {
                available: account.available,
            })
        } else {
            Refusal::Conflict
        },
    )
}
