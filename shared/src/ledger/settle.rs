//! Settling a hold: capture all or part of it, release the rest, in one transaction with the
//! session's final state.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};

use super::plan::{plan_settle, ExpiredShare, SettlePlan};
use super::{
    account_key, due_index_values, get_account, Account, EntryKind, LedgerEntry, Lot,
    GRACE_LOT_SECS,
};
use crate::clock;
use crate::fault::{Fault, Result};
use crate::table::{self, number, TxFailure, MAX_ATTEMPTS};

/// How a hold ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settlement {
    /// This call ended the hold.
    Settled {
        /// Credits spent.
        captured: i64,
        /// Credits returned to `available`.
        released: i64,
        /// Credits of the hold whose lot expired meanwhile and that were not spent.
        expired: i64,
        /// Credits of that expired share given back in a grace lot instead.
        refunded: i64,
    },
    /// The hold had already ended (a duplicate or a retry): nothing changed.
    AlreadySettled,
}

/// Why a settle did not happen; nothing was written either way.
#[derive(Debug)]
pub enum SettleError {
    /// One of the caller's items failed its condition: the session is no longer where the
    /// caller found it (another delivery or run moved or ended it).
    ItemConflict,
    /// Our own failure (throttling, a transport error, a timeout, repeated conflicts): the
    /// caller must try again later, never take it for an end. A commit whose answer was lost
    /// is found on the next try: its hold is gone, and the session final.
    Failed(Fault),
}

impl From<Fault> for SettleError {
    fn from(e: Fault) -> Self {
        Self::Failed(e)
    }
}

/// Ends the hold of a session: `capture` credits are spent, the rest released; `share` says
/// whether the unspent part backed by lots that expired meanwhile expires too or comes back in
/// a grace lot (the lot `grace-<session>`, [`GRACE_LOT_SECS`] long). Exactly once:
/// when the hold has already ended, nothing changes and [`Settlement::AlreadySettled`] says so.
/// `items` (the session's final state) are written in the same transaction; if one of them
/// fails its condition, nothing is written and [`SettleError::ItemConflict`] says so.
pub async fn settle(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    user_id: &str,
    session_id: &str,
    capture: i64,
    share: ExpiredShare,
    items: Vec<TransactWriteItem>,
) -> std::result::Result<Settlement, SettleError> {
    for attempt in 1..=MAX_ATTEMPTS {
        let Some(account) = get_account(ddb, table, user_id).await? else {
            return Ok(Settlement::AlreadySettled);
        };
        let Some(plan) = plan_settle(&account, session_id, capture, share) else {
            return Ok(Settlement::AlreadySettled);
        };
        let mut writes = vec![hold_end(table, user_id, session_id, &account, &plan)?];
        for entry in settle_entries(&account, session_id, &plan) {
            writes.push(entry.put(table, user_id)?);
        }
        let own_items = writes.len();
        writes.extend(items.iter().cloned());
        match table::transact(ddb, writes).await {
            Ok(()) => {
                return Ok(Settlement::Settled {
                    captured: plan.captured,
                    released: plan.released,
                    expired: plan.expired,
                    refunded: plan.refunded,
                })
            }
            Err(TxFailure::Cancelled(reasons)) => {
                if reasons
                    .iter()
                    .skip(own_items)
                    .any(table::is_condition_failure)
                {
                    return Err(SettleError::ItemConflict);
                }
                table::backoff(attempt).await;
            }
            Err(TxFailure::Other(e)) => return Err(e.into()),
        }
    }
    Err(Fault::new(format!(
        "settle of {session_id} gave up after repeated conflicts"
    ))
    .into())
}

/// The update of the account that ends the hold as planned, under the version read.
fn hold_end(
    table: &str,
    user_id: &str,
    session_id: &str,
    account: &Account,
    plan: &SettlePlan,
) -> Result<TransactWriteItem> {
    let hold = &account.holds[session_id];
    let mut names = HashMap::from([("#sid".to_owned(), session_id.to_owned())]);
    let mut values = HashMap::from([
        (":held".to_owned(), number(-hold.amount)),
        (
            ":available".to_owned(),
            number(plan.released + plan.refunded),
        ),
        (":captured".to_owned(), number(plan.captured)),
        (":expired".to_owned(), number(plan.expired)),
        (":minus_one".to_owned(), number(-1)),
        (":one".to_owned(), number(1)),
        (":version".to_owned(), number(account.version)),
    ]);
    let (mut sets, removes) = lot_writes(&plan.lots, &mut names, &mut values);
    if plan.refunded > 0 {
        sets.push(grace_lot(
            session_id,
            plan.refunded,
            account,
            &mut names,
            &mut values,
        )?);
    }
    let mut expression = String::new();
    if !sets.is_empty() {
        expression.push_str(&format!("SET {} ", sets.join(", ")));
    }
    expression.push_str(
        "ADD held :held, available :available, captured :captured, expired :expired, \
         inflight :minus_one, version :one REMOVE holds.#sid",
    );
    for remove in removes {
        expression.push_str(&format!(", {remove}"));
    }
    let update = Update::builder()
        .table_name(table)
        .set_key(Some(account_key(user_id)))
        .update_expression(expression)
        .condition_expression("version = :version AND attribute_exists(holds.#sid)")
        .set_expression_attribute_names(Some(names))
        .set_expression_attribute_values(Some(values))
        .build()?;
    Ok(TransactWriteItem::builder().update(update).build())
}

/// The `SET` clause of the grace lot that gives back a refunded expired share, and the
/// account's next expiry (and `due` index) moved up to it if it is the earliest.
fn grace_lot(
    session_id: &str,
    refunded: i64,
    account: &Account,
    names: &mut HashMap<String, String>,
    values: &mut HashMap<String, AttributeValue>,
) -> Result<String> {
    let now = clock::now_ms();
    let expires_at = clock::ms_to_secs(now) + GRACE_LOT_SECS;
    let lot = Lot {
        amount: refunded,
        remaining: refunded,
        expires_at_secs: Some(expires_at),
        source: "grace".into(),
        granted_at_ms: now,
        expired: false,
    };
    let next = account.next_expiry_secs.min(expires_at);
    names.insert("#grace".into(), grace_lot_id(session_id));
    values.insert(":grace".into(), serde_dynamo::to_attribute_value(&lot)?);
    values.insert(":next".into(), number(next));
    values.extend(due_index_values(next));
    Ok("lots.#grace = :grace, next_expiry = :next, due_pk = :due_pk, due_at = :due_at".into())
}

/// The id of the grace lot of a session's refunded expired share.
pub fn grace_lot_id(session_id: &str) -> String {
    format!("grace-{session_id}")
}

/// The ledger entries of a settle: a capture, a release (also of nothing, so every hold has
/// an end in the ledger) and an expiry of the hold's unspent expired share, as they apply.
fn settle_entries(account: &Account, session_id: &str, plan: &SettlePlan) -> Vec<LedgerEntry> {
    let model = &account.holds[session_id].model;
    let entry = |kind, amount| LedgerEntry::for_session(kind, amount, session_id, model);
    let mut entries = Vec::new();
    if plan.captured > 0 {
        let mut e = entry(EntryKind::Capture, plan.captured);
        e.d_held = -plan.captured;
        e.d_captured = plan.captured;
        entries.push(e);
    }
    if plan.released > 0 || plan.captured == 0 && plan.expired == 0 && plan.refunded == 0 {
        let mut e = entry(EntryKind::Release, plan.released);
        e.d_held = -plan.released;
        e.d_available = plan.released;
        entries.push(e);
    }
    if plan.expired > 0 {
        let mut e = entry(EntryKind::Expire, plan.expired);
        e.d_held = -plan.expired;
        e.d_expired = plan.expired;
        entries.push(e);
    }
    if plan.refunded > 0 {
        let mut e = entry(EntryKind::Refund, plan.refunded);
        e.lot_id = Some(grace_lot_id(session_id));
        e.d_held = -plan.refunded;
        e.d_available = plan.refunded;
        entries.push(e);
    }
    entries
}

/// `SET` and `REMOVE` clauses for new lot remainders; spent-out lots are removed so the
/// account item stays small.
fn lot_writes(
    lots: &[(String, i64)],
    names: &mut HashMap<String, String>,
    values: &mut HashMap<String, AttributeValue>,
) -> (Vec<String>, Vec<String>) {
    let (mut sets, mut removes) = (Vec::new(), Vec::new());
    for (i, (id, remaining)) in lots.iter().enumerate() {
        names.insert(format!("#lot{i}"), id.clone());
        if *remaining == 0 {
            removes.push(format!("lots.#lot{i}"));
        } else {
            values.insert(format!(":lot{i}"), number(*remaining));
            sets.push(format!("lots.#lot{i}.remaining = :lot{i}"));
        }
    }
    (sets, removes)
}
