//! Grants: a new lot on a user's account, creating the account if needed.

use aws_sdk_dynamodb::types::{TransactWriteItem, Update};

use super::{
    account_key, due_index_values, get_account, Account, EntryKind, LedgerEntry, Lot, EXPIRY_PK,
    NO_EXPIRY,
};
use crate::clock;
use crate::fault::{Fault, Result};
use crate::table::{self, number, Item, TxFailure, MAX_ATTEMPTS};

/// A grant to record.
#[derive(Clone, Debug)]
pub struct Grant<'a> {
    /// To whom.
    pub user_id: &'a str,
    /// The lot's id; the same id granted twice grants once.
    pub lot_id: &'a str,
    /// Credits.
    pub amount: i64,
    /// Expiry in epoch seconds.
    pub expires_at_secs: Option<i64>,
    /// Where the credits came from.
    pub source: &'a str,
}

/// The result of a grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Granted {
    /// Credits available after it.
    pub available: i64,
    /// False when the lot already existed (a replay granted nothing).
    pub created: bool,
}

/// Why a grant did not happen.
#[derive(Debug)]
pub enum GrantError {
    /// One of the caller's own items failed its condition (an idempotency record already
    /// there): nothing was granted; carries the item as it was, when DynamoDB returned it.
    ItemConflict(Option<Item>),
    /// Our own failure.
    Failed(Fault),
}

impl From<Fault> for GrantError {
    fn from(e: Fault) -> Self {
        Self::Failed(e)
    }
}

/// Adds a lot to a user's account, creating the account if needed, atomically with the
/// caller's `items` (an idempotency record).
pub async fn grant(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    grant: &Grant<'_>,
    items: Vec<TransactWriteItem>,
) -> std::result::Result<Granted, GrantError> {
    for attempt in 1..=MAX_ATTEMPTS {
        let account = get_account(ddb, table, grant.user_id).await?;
        if let Some(existing) = account
            .as_ref()
            .filter(|a| a.lots.contains_key(grant.lot_id))
        {
            return Ok(Granted {
                available: existing.available,
                created: false,
            });
        }
        let lot = Lot {
            amount: grant.amount,
            remaining: grant.amount,
            expires_at_secs: grant.expires_at_secs,
            source: grant.source.to_owned(),
            granted_at_ms: clock::now_ms(),
            expired: false,
        };
        let (write, available) = match &account {
            None => (new_account(table, grant, lot)?, grant.amount),
            Some(existing) => (
                add_lot(table, grant, lot, existing)?,
                existing.available + grant.amount,
            ),
        };
        let mut writes = vec![write, grant_entry(grant).put(table, grant.user_id)?];
        let own_items = writes.len();
        writes.extend(items.iter().cloned());
        match table::transact(ddb, writes).await {
            Ok(()) => {
                return Ok(Granted {
                    available,
                    created: true,
                })
            }
            Err(TxFailure::Cancelled(reasons)) => {
                if let Some(reason) = reasons
                    .iter()
                    .skip(own_items)
                    .find(|r| table::is_condition_failure(r))
                {
                    return Err(GrantError::ItemConflict(reason.item().cloned()));
                }
                table::backoff(attempt).await
            }
            Err(TxFailure::Other(e)) => return Err(e.into()),
        }
    }
    Err(Fault::new("grant gave up after repeated conflicts").into())
}

/// The put of a first account holding only `lot` (refused if an account appeared meanwhile).
fn new_account(table: &str, grant: &Grant<'_>, lot: Lot) -> Result<TransactWriteItem> {
    let lot_expiry = grant.expires_at_secs.unwrap_or(NO_EXPIRY);
    let mut fresh = Account {
        available: grant.amount,
        granted: grant.amount,
        version: 1,
        next_expiry_secs: lot_expiry,
        due_pk: (lot_expiry != NO_EXPIRY).then(|| EXPIRY_PK.to_owned()),
        due_at_ms: (lot_expiry != NO_EXPIRY).then(|| clock::secs_to_ms(lot_expiry)),
        ..Account::default()
    };
    fresh.lots.insert(grant.lot_id.to_owned(), lot);
    let mut item: Item = serde_dynamo::to_item(&fresh)?;
    item.extend(account_key(grant.user_id));
    table::put_new(table, item)
}

/// The update that adds `lot` to the account as read (refused if it changed meanwhile).
fn add_lot(
    table: &str,
    grant: &Grant<'_>,
    lot: Lot,
    existing: &Account,
) -> Result<TransactWriteItem> {
    let next = existing
        .next_expiry_secs
        .min(grant.expires_at_secs.unwrap_or(NO_EXPIRY));
    let due_index = if next == NO_EXPIRY {
        ""
    } else {
        ", due_pk = :due_pk, due_at = :due_at"
    };
    let update = Update::builder()
        .table_name(table)
        .set_key(Some(account_key(grant.user_id)))
        .update_expression(format!(
            "SET lots.#lot = :lot, next_expiry = :next{due_index} \
             ADD available :amount, granted :amount, version :one"
        ))
        .condition_expression("version = :version")
        .expression_attribute_names("#lot", grant.lot_id)
        .set_expression_attribute_values(Some(due_index_values(next)))
        .expression_attribute_values(":lot", serde_dynamo::to_attribute_value(&lot)?)
        .expression_attribute_values(":next", number(next))
        .expression_attribute_values(":amount", number(grant.amount))
        .expression_attribute_values(":one", number(1))
        .expression_attribute_values(":version", number(existing.version))
        .build()?;
    Ok(TransactWriteItem::builder().update(update).build())
}

/// The `grant` ledger entry.
fn grant_entry(grant: &Grant<'_>) -> LedgerEntry {
    let mut entry = LedgerEntry::new(EntryKind::Grant, grant.amount);
    entry.lot_id = Some(grant.lot_id.to_owned());
    entry.d_available = grant.amount;
    entry.d_granted = grant.amount;
    entry
}
