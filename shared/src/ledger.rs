//! The credit ledger on DynamoDB.
//!
//! Each user has one account item (`USER#<id>` / `ACCOUNT`) holding the balances
//! (`available`, `held`, `captured`, `expired`, `granted`), the lots (grants with optional
//! expiry) and the open holds, keyed by session id. Every change also writes an immutable ledger
//! entry carrying its deltas, in the same transaction, so the balance can be rebuilt from the
//! ledger at any time and `granted = available + held + captured + expired` always holds.
//!
//! The hot path, [`reserve`], reads nothing first: one conditional update
//! (`available >= cost AND inflight < cap AND next_expiry > now`) records the hold, in one
//! transaction with the caller's items (session, idempotency record). Holds are not tied to lots
//! when they are made; a lot's share of the holds is worked out when it expires (earliest
//! expiring lots back holds first, the older holds first) and kept on each hold as
//! `expired_part`. Reserves are refused while a lot is past its expiry but not yet expired, and
//! the refusal makes the reserving caller expire it, so an expired lot is never spent.
//!
//! The rarer steps ([`grant`], [`settle`], [`expire_due`]) read the account and write it back
//! under an optimistic `version` check; a reserve does not bump the version, so reserves never
//! make them retry, and they only ever write lots and holds they have read.

use std::collections::HashMap;

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, CancellationReason, Put, ReturnValuesOnConditionCheckFailure,
    TransactWriteItem, Update,
};
use serde::{Deserialize, Serialize};

use crate::clock;
use crate::error::ApiError;
use crate::keys;

/// `next_expiry` of an account whose lots never expire (epoch seconds, year 2286).
pub const NO_EXPIRY: i64 = 9_999_999_999;
/// `due` index partition of accounts with a lot that can expire.
pub const EXPIRY_PK: &str = "EXPIRY";
/// Attempts of an optimistic read-modify-write before giving up.
const MAX_ATTEMPTS: u32 = 12;

/// A grant of credits, spent earliest expiry first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lot {
    /// Credits granted.
    pub amount: i64,
    /// Credits not yet captured or expired (some may back holds).
    pub remaining: i64,
    /// Expiry in epoch seconds; `None` never expires.
    pub expires_at: Option<i64>,
    /// Where the credits came from (purchase, promo, ...).
    pub source: String,
    /// When it was granted (epoch ms).
    pub granted_at: i64,
    /// Whether its expiry has been processed; what remains then only backs older holds.
    #[serde(default)]
    pub expired: bool,
}

/// Credits reserved for one session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// Credits held.
    pub amount: i64,
    /// When it was made (epoch ms).
    pub created_at: i64,
    /// The part backed by lots that have expired since: captured first, never released.
    #[serde(default)]
    pub expired_part: i64,
    /// Model of the session, for usage summaries.
    #[serde(default)]
    pub model: String,
}

/// A user's account item.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Credits that can be reserved.
    pub available: i64,
    /// Credits reserved by open holds.
    pub held: i64,
    /// Credits spent.
    pub captured: i64,
    /// Credits lost to lot expiry.
    pub expired: i64,
    /// Credits ever granted.
    pub granted: i64,
    /// Open holds (sessions in flight).
    pub inflight: i64,
    /// Optimistic-concurrency version, bumped by every step but reserve.
    pub version: i64,
    /// Earliest expiry (epoch seconds) of a lot not yet expired.
    pub next_expiry: i64,
    /// `due` index partition ([`EXPIRY_PK`]) while a lot can expire, so the sweeper finds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_pk: Option<String>,
    /// `due` index sort key: `next_expiry` in epoch ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<i64>,
    /// Lots by id.
    #[serde(default)]
    pub lots: HashMap<String, Lot>,
    /// Holds by session id.
    #[serde(default)]
    pub holds: HashMap<String, Hold>,
}

impl Account {
    /// Whether `granted = available + held + captured + expired` and nothing is negative.
    pub fn is_conserved(&self) -> bool {
        self.available >= 0
            && self.held >= 0
            && self.granted == self.available + self.held + self.captured + self.expired
            && self.held == self.holds.values().map(|h| h.amount).sum::<i64>()
            && self.available + self.held == self.lots.values().map(|l| l.remaining).sum::<i64>()
    }
}

/// What a ledger entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Credits granted (a new lot).
    Grant,
    /// Credits reserved for a session.
    Hold,
    /// Held credits spent.
    Capture,
    /// Held credits returned.
    Release,
    /// Credits lost to a lot's expiry.
    Expire,
}

/// An immutable ledger entry with the change it made to each balance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Time-ordered id.
    pub entry_id: String,
    /// What happened.
    pub kind: EntryKind,
    /// Credits moved (positive).
    pub amount: i64,
    /// Session concerned, if any.
    pub session_id: Option<String>,
    /// Lot concerned, if any.
    pub lot_id: Option<String>,
    /// Model of the session, if any.
    pub model: Option<String>,
    /// When (epoch ms).
    pub at: i64,
    /// Change to `available`.
    pub d_available: i64,
    /// Change to `held`.
    pub d_held: i64,
    /// Change to `captured`.
    pub d_captured: i64,
    /// Change to `expired`.
    pub d_expired: i64,
    /// Change to `granted`.
    pub d_granted: i64,
}

impl LedgerEntry {
    fn new(kind: EntryKind, amount: i64) -> Self {
        Self {
            entry_id: keys::new_id(),
            kind,
            amount,
            session_id: None,
            lot_id: None,
            model: None,
            at: clock::now_ms(),
            d_available: 0,
            d_held: 0,
            d_captured: 0,
            d_expired: 0,
            d_granted: 0,
        }
    }

    fn put(&self, table: &str, user_id: &str) -> Result<TransactWriteItem, ApiError> {
        let mut item = serde_dynamo::to_item::<_, HashMap<String, AttributeValue>>(self)?;
        item.insert("pk".into(), s(keys::user_pk(user_id)));
        item.insert("sk".into(), s(keys::ledger_sk(&self.entry_id)));
        put_new(table, item)
    }
}

/// Balances summed from ledger entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Balances {
    /// Sum of `d_available`.
    pub available: i64,
    /// Sum of `d_held`.
    pub held: i64,
    /// Sum of `d_captured`.
    pub captured: i64,
    /// Sum of `d_expired`.
    pub expired: i64,
    /// Sum of `d_granted`.
    pub granted: i64,
}

impl Balances {
    /// The balances an account item claims.
    pub fn of(account: &Account) -> Self {
        Self {
            available: account.available,
            held: account.held,
            captured: account.captured,
            expired: account.expired,
            granted: account.granted,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reserve

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
        item: Option<HashMap<String, AttributeValue>>,
    },
    /// Anything else.
    Failed(ApiError),
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
            Self::Failed(e) => e,
        }
    }
}

impl From<ApiError> for ReserveError {
    fn from(e: ApiError) -> Self {
        Self::Failed(e)
    }
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
        let now = clock::now_ms();
        let mut entry = LedgerEntry::new(EntryKind::Hold, reservation.amount);
        entry.session_id = Some(reservation.session_id.to_owned());
        entry.model = Some(reservation.model.to_owned());
        entry.d_available = -reservation.amount;
        entry.d_held = reservation.amount;
        let hold = Hold {
            amount: reservation.amount,
            created_at: now,
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
            .expression_attribute_values(
                ":hold",
                serde_dynamo::to_attribute_value(&hold).map_err(ApiError::from)?,
            )
            .expression_attribute_values(":minus", n(-reservation.amount))
            .expression_attribute_values(":amount", n(reservation.amount))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":cap", n(i64::from(reservation.inflight_cap)))
            .expression_attribute_values(":now", n(now / 1000))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .build()
            .map_err(ApiError::internal)?;
        let mut all = vec![
            TransactWriteItem::builder().update(update).build(),
            entry.put(table, reservation.user_id)?,
        ];
        let extra_start = all.len();
        all.extend(items.iter().cloned());
        let reasons = match transact(ddb, all).await {
            Ok(()) => return Ok(()),
            Err(TxFailure::Cancelled(reasons)) => reasons,
            Err(TxFailure::Other(e)) => return Err(ReserveError::Failed(e)),
        };
        // The caller's items speak first: an idempotent replay wins over a short balance.
        for (index, reason) in reasons.iter().enumerate().skip(extra_start) {
            if is_condition_failure(reason) {
                return Err(ReserveError::ItemConflict {
                    index: index - extra_start,
                    item: reason.item().cloned(),
                });
            }
        }
        if reasons.first().is_some_and(is_condition_failure) {
            let account = match reasons[0].item() {
                Some(item) => Some(
                    serde_dynamo::from_item::<_, Account>(item.clone()).map_err(ApiError::from)?,
                ),
                // Not every endpoint returns the item with the reason: read it.
                None => get_account(ddb, table, reservation.user_id).await?,
            };
            let Some(account) = account else {
                return Err(ReserveError::Insufficient { available: 0 });
            };
            if account.next_expiry <= now / 1000 && !expired_once {
                expired_once = true;
                expire_due(ddb, table, reservation.user_id, now / 1000).await?;
                continue;
            }
            if account.inflight >= i64::from(reservation.inflight_cap) {
                return Err(ReserveError::TooManyInflight);
            }
            if account.available < reservation.amount {
                return Err(ReserveError::Insufficient {
                    available: account.available,
                });
            }
        }
        // A conflict with a concurrent transaction on the same item: try again shortly.
        if attempt >= MAX_ATTEMPTS {
            return Err(ReserveError::Failed(ApiError::internal(format!(
                "reserve gave up after {attempt} conflicting attempts: {reasons:?}"
            ))));
        }
        backoff(attempt).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Grant

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
    pub expires_at: Option<i64>,
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

/// Adds a lot to a user's account, creating the account if needed.
pub async fn grant(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    grant: &Grant<'_>,
) -> Result<Granted, ApiError> {
    for attempt in 1..=MAX_ATTEMPTS {
        let account = get_account(ddb, table, grant.user_id).await?;
        if let Some(existing) = &account {
            if existing.lots.contains_key(grant.lot_id) {
                return Ok(Granted {
                    available: existing.available,
                    created: false,
                });
            }
        }
        let now = clock::now_ms();
        let lot = Lot {
            amount: grant.amount,
            remaining: grant.amount,
            expires_at: grant.expires_at,
            source: grant.source.to_owned(),
            granted_at: now,
            expired: false,
        };
        let lot_expiry = grant.expires_at.unwrap_or(NO_EXPIRY);
        let mut entry = LedgerEntry::new(EntryKind::Grant, grant.amount);
        entry.lot_id = Some(grant.lot_id.to_owned());
        entry.d_available = grant.amount;
        entry.d_granted = grant.amount;
        let (write, available) = match &account {
            None => {
                let mut fresh = Account {
                    available: grant.amount,
                    granted: grant.amount,
                    version: 1,
                    next_expiry: lot_expiry,
                    due_pk: (lot_expiry != NO_EXPIRY).then(|| EXPIRY_PK.to_owned()),
                    due_at: (lot_expiry != NO_EXPIRY).then_some(lot_expiry * 1000),
                    ..Account::default()
                };
                fresh.lots.insert(grant.lot_id.to_owned(), lot);
                let mut item = serde_dynamo::to_item::<_, HashMap<String, AttributeValue>>(&fresh)?;
                item.extend(account_key(grant.user_id));
                (put_new(table, item)?, fresh.available)
            }
            Some(existing) => {
                let next = existing.next_expiry.min(lot_expiry);
                let update = Update::builder()
                    .table_name(table)
                    .set_key(Some(account_key(grant.user_id)))
                    .update_expression(format!(
                        "SET lots.#lot = :lot, next_expiry = :next{} \
                         ADD available :amount, granted :amount, version :one",
                        if next == NO_EXPIRY {
                            ""
                        } else {
                            ", due_pk = :due_pk, due_at = :due_at"
                        }
                    ))
                    .condition_expression("version = :version")
                    .expression_attribute_names("#lot", grant.lot_id)
                    .set_expression_attribute_values(Some(due_values(next)))
                    .expression_attribute_values(":lot", serde_dynamo::to_attribute_value(&lot)?)
                    .expression_attribute_values(":next", n(next))
                    .expression_attribute_values(":amount", n(grant.amount))
                    .expression_attribute_values(":one", n(1))
                    .expression_attribute_values(":version", n(existing.version))
                    .build()
                    .map_err(ApiError::internal)?;
                (
                    TransactWriteItem::builder().update(update).build(),
                    existing.available + grant.amount,
                )
            }
        };
        match transact(ddb, vec![write, entry.put(table, grant.user_id)?]).await {
            Ok(()) => {
                return Ok(Granted {
                    available,
                    created: true,
                })
            }
            Err(TxFailure::Cancelled(_)) => backoff(attempt).await,
            Err(TxFailure::Other(e)) => return Err(e),
        }
    }
    Err(ApiError::internal("grant gave up after repeated conflicts"))
}

// ---------------------------------------------------------------------------------------------
// Settle: capture all or part of a hold, release the rest

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
    },
    /// The hold had already ended (a duplicate or a retry): nothing changed.
    AlreadySettled,
}

/// What a settle will write, worked out from the account as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettlePlan {
    /// New `remaining` of each lot touched.
    pub lots: Vec<(String, i64)>,
    /// Credits spent.
    pub captured: i64,
    /// Credits returned.
    pub released: i64,
    /// Credits expired.
    pub expired: i64,
}

/// Works out the end of `session_id`'s hold, capturing `capture` credits (at most the hold).
/// Spending draws earliest expiry first: the hold's expired part, then live lots by expiry.
pub fn plan_settle(account: &Account, session_id: &str, capture: i64) -> Option<SettlePlan> {
    let hold = account.holds.get(session_id)?;
    let captured = capture.clamp(0, hold.amount);
    let from_expired = captured.min(hold.expired_part);
    let expired = hold.expired_part - from_expired;
    let mut lots = HashMap::new();
    draw(account, &mut lots, true, hold.expired_part);
    draw(account, &mut lots, false, captured - from_expired);
    let mut lots: Vec<(String, i64)> = lots.into_iter().collect();
    lots.sort();
    Some(SettlePlan {
        lots,
        captured,
        released: hold.amount - captured - expired,
        expired,
    })
}

/// Takes `amount` from the lots of one state (expired or live), earliest expiry first.
fn draw(account: &Account, out: &mut HashMap<String, i64>, expired: bool, mut amount: i64) {
    for (id, lot) in lots_by_expiry(account) {
        if amount == 0 {
            break;
        }
        if lot.expired != expired {
            continue;
        }
        let remaining = out.get(id).copied().unwrap_or(lot.remaining);
        let take = remaining.min(amount);
        if take > 0 {
            out.insert(id.clone(), remaining - take);
            amount -= take;
        }
    }
}

fn lots_by_expiry(account: &Account) -> Vec<(&String, &Lot)> {
    let mut lots: Vec<_> = account.lots.iter().collect();
    lots.sort_by_key(|(id, lot)| (lot.expires_at.unwrap_or(NO_EXPIRY), lot.granted_at, *id));
    lots
}

/// Ends the hold of a session: `capture` credits are spent, the rest released. Exactly once:
/// when the hold has already ended, nothing changes and [`Settlement::AlreadySettled`] says so.
/// `items` (the session's final state) are written in the same transaction; if one of them
/// fails its condition, nothing is written and the error says so.
pub async fn settle(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    user_id: &str,
    session_id: &str,
    capture: i64,
    items: Vec<TransactWriteItem>,
) -> Result<Settlement, ApiError> {
    for attempt in 1..=MAX_ATTEMPTS {
        let Some(account) = get_account(ddb, table, user_id).await? else {
            return Ok(Settlement::AlreadySettled);
        };
        let Some(plan) = plan_settle(&account, session_id, capture) else {
            return Ok(Settlement::AlreadySettled);
        };
        let hold = &account.holds[session_id];
        let mut names = HashMap::from([("#sid".to_owned(), session_id.to_owned())]);
        let mut values = HashMap::from([
            (":held".to_owned(), n(-hold.amount)),
            (":available".to_owned(), n(plan.released)),
            (":captured".to_owned(), n(plan.captured)),
            (":expired".to_owned(), n(plan.expired)),
            (":minus_one".to_owned(), n(-1)),
            (":one".to_owned(), n(1)),
            (":version".to_owned(), n(account.version)),
        ]);
        let (sets, removes) = lot_writes(&plan.lots, &mut names, &mut values);
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
            .build()
            .map_err(ApiError::internal)?;
        let mut writes = vec![TransactWriteItem::builder().update(update).build()];
        let with_session = |mut e: LedgerEntry| {
            e.session_id = Some(session_id.to_owned());
            e.model = Some(hold.model.clone());
            e
        };
        if plan.captured > 0 {
            let mut e = with_session(LedgerEntry::new(EntryKind::Capture, plan.captured));
            e.d_held = -plan.captured;
            e.d_captured = plan.captured;
            writes.push(e.put(table, user_id)?);
        }
        if plan.released > 0 || plan.captured == 0 && plan.expired == 0 {
            let mut e = with_session(LedgerEntry::new(EntryKind::Release, plan.released));
            e.d_held = -plan.released;
            e.d_available = plan.released;
            writes.push(e.put(table, user_id)?);
        }
        if plan.expired > 0 {
            let mut e = with_session(LedgerEntry::new(EntryKind::Expire, plan.expired));
            e.d_held = -plan.expired;
            e.d_expired = plan.expired;
            writes.push(e.put(table, user_id)?);
        }
        let extra_start = writes.len();
        writes.extend(items.iter().cloned());
        match transact(ddb, writes).await {
            Ok(()) => {
                return Ok(Settlement::Settled {
                    captured: plan.captured,
                    released: plan.released,
                    expired: plan.expired,
                })
            }
            Err(TxFailure::Cancelled(reasons)) => {
                if let Some(i) = reasons
                    .iter()
                    .skip(extra_start)
                    .position(is_condition_failure)
                {
                    return Err(ApiError::internal(format!(
                        "settle of {session_id}: item {i} failed its condition"
                    )));
                }
                backoff(attempt).await;
            }
            Err(TxFailure::Other(e)) => return Err(e),
        }
    }
    Err(ApiError::internal(
        "settle gave up after repeated conflicts",
    ))
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
            values.insert(format!(":lot{i}"), n(*remaining));
            sets.push(format!("lots.#lot{i}.remaining = :lot{i}"));
        }
    }
    (sets, removes)
}

// ---------------------------------------------------------------------------------------------
// Expire

/// What an expiry run will write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExpiryPlan {
    /// Each lot expired now: its id, the credits lost, and what remains to back older holds.
    pub lots: Vec<(String, i64, i64)>,
    /// New `expired_part` of each hold that an expired lot now backs.
    pub holds: Vec<(String, i64)>,
    /// Earliest expiry among the lots left.
    pub next_expiry: i64,
}

impl ExpiryPlan {
    /// Credits lost in all.
    pub fn expired(&self) -> i64 {
        self.lots.iter().map(|(_, lost, _)| lost).sum()
    }
}

/// Works out the expiry of every lot past its time. Credits of a lot that back holds made
/// before the expiry stay with those holds; the rest are lost.
pub fn plan_expiry(account: &Account, now_secs: i64) -> ExpiryPlan {
    let mut holds: Vec<(&String, &Hold)> = account.holds.iter().collect();
    holds.sort_by_key(|(id, h)| (h.created_at, *id));
    let mut parts: HashMap<&String, i64> =
        holds.iter().map(|(id, h)| (*id, h.expired_part)).collect();
    let mut plan = ExpiryPlan {
        next_expiry: NO_EXPIRY,
        ..ExpiryPlan::default()
    };
    for (id, lot) in lots_by_expiry(account) {
        if lot.expired {
            continue;
        }
        let Some(expires_at) = lot.expires_at.filter(|t| *t <= now_secs) else {
            plan.next_expiry = plan.next_expiry.min(lot.expires_at.unwrap_or(NO_EXPIRY));
            continue;
        };
        let mut free = lot.remaining;
        for (hold_id, hold) in &holds {
            if hold.created_at >= expires_at * 1000 {
                continue;
            }
            let part = parts.get_mut(hold_id).expect("every hold has a part");
            let take = (hold.amount - *part).min(free);
            *part += take;
            free -= take;
        }
        plan.lots.push((id.clone(), free, lot.remaining - free));
    }
    plan.holds = holds
        .iter()
        .filter(|(id, h)| parts[id] != h.expired_part)
        .map(|(id, _)| ((*id).clone(), parts[id]))
        .collect();
    plan
}

/// Expires every lot of `user_id` past its expiry; returns the credits lost.
pub async fn expire_due(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    user_id: &str,
    now_secs: i64,
) -> Result<i64, ApiError> {
    for attempt in 1..=MAX_ATTEMPTS {
        let Some(account) = get_account(ddb, table, user_id).await? else {
            return Ok(0);
        };
        if account.next_expiry > now_secs {
            return Ok(0);
        }
        let plan = plan_expiry(&account, now_secs);
        let lost = plan.expired();
        let mut names = HashMap::new();
        let mut values = HashMap::from([
            (":lost".to_owned(), n(lost)),
            (":minus_lost".to_owned(), n(-lost)),
            (":next".to_owned(), n(plan.next_expiry)),
            (":one".to_owned(), n(1)),
            (":version".to_owned(), n(account.version)),
            (":true".to_owned(), AttributeValue::Bool(true)),
        ]);
        let mut sets = vec!["next_expiry = :next".to_owned()];
        let mut removes = Vec::new();
        if plan.next_expiry == NO_EXPIRY {
            removes.extend(["due_pk".to_owned(), "due_at".to_owned()]);
        } else {
            values.extend(due_values(plan.next_expiry));
            sets.push("due_pk = :due_pk, due_at = :due_at".to_owned());
        }
        let mut conditions = vec!["version = :version".to_owned()];
        let mut writes = Vec::new();
        for (i, (id, lost, backing)) in plan.lots.iter().enumerate() {
            names.insert(format!("#lot{i}"), id.clone());
            if *backing == 0 {
                removes.push(format!("lots.#lot{i}"));
            } else {
                values.insert(format!(":lot{i}"), n(*backing));
                sets.push(format!("lots.#lot{i}.remaining = :lot{i}"));
                sets.push(format!("lots.#lot{i}.expired = :true"));
            }
            if *lost > 0 {
                let mut e = LedgerEntry::new(EntryKind::Expire, *lost);
                e.lot_id = Some(id.clone());
                e.d_available = -lost;
                e.d_expired = *lost;
                writes.push(e.put(table, user_id)?);
            }
        }
        for (i, (session_id, part)) in plan.holds.iter().enumerate() {
            names.insert(format!("#hold{i}"), session_id.clone());
            values.insert(format!(":hold{i}"), n(*part));
            sets.push(format!("holds.#hold{i}.expired_part = :hold{i}"));
            conditions.push(format!("attribute_exists(holds.#hold{i})"));
        }
        let mut expression = format!(
            "SET {} ADD available :minus_lost, expired :lost, version :one",
            sets.join(", ")
        );
        if !removes.is_empty() {
            expression.push_str(&format!(" REMOVE {}", removes.join(", ")));
        }
        let update = Update::builder()
            .table_name(table)
            .set_key(Some(account_key(user_id)))
            .update_expression(expression)
            .condition_expression(conditions.join(" AND "))
            .set_expression_attribute_names((!names.is_empty()).then_some(names))
            .set_expression_attribute_values(Some(values))
            .build()
            .map_err(ApiError::internal)?;
        writes.insert(0, TransactWriteItem::builder().update(update).build());
        match transact(ddb, writes).await {
            Ok(()) => return Ok(lost),
            Err(TxFailure::Cancelled(_)) => backoff(attempt).await,
            Err(TxFailure::Other(e)) => return Err(e),
        }
    }
    Err(ApiError::internal(
        "expiry gave up after repeated conflicts",
    ))
}

/// Values of the `due` index attributes of an account whose next expiry is `next` (none when
/// nothing can expire).
fn due_values(next: i64) -> HashMap<String, AttributeValue> {
    if next == NO_EXPIRY {
        return HashMap::new();
    }
    HashMap::from([
        (":due_pk".to_owned(), s(EXPIRY_PK)),
        (":due_at".to_owned(), n(next * 1000)),
    ])
}

/// Users with a lot past its expiry (`due` index), oldest first, at most `limit`.
pub async fn users_with_expired_lots(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    now_ms: i64,
    limit: i32,
) -> Result<Vec<String>, ApiError> {
    let output = ddb
        .query()
        .table_name(table)
        .index_name("due")
        .key_condition_expression("due_pk = :pk AND due_at <= :now")
        .expression_attribute_values(":pk", s(EXPIRY_PK))
        .expression_attribute_values(":now", n(now_ms))
        .limit(limit)
        .send()
        .await?;
    Ok(output
        .items
        .unwrap_or_default()
        .iter()
        .filter_map(|item| {
            item.get("pk")?
                .as_s()
                .ok()?
                .strip_prefix("USER#")
                .map(str::to_owned)
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Reads

/// Reads a user's account item (strongly consistent).
pub async fn get_account(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    user_id: &str,
) -> Result<Option<Account>, ApiError> {
    get_item(ddb, table, account_key(user_id)).await
}

/// Reads one item (strongly consistent) as `T`.
pub async fn get_item<T: serde::de::DeserializeOwned>(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    key: HashMap<String, AttributeValue>,
) -> Result<Option<T>, ApiError> {
    let output = ddb
        .get_item()
        .table_name(table)
        .set_key(Some(key))
        .consistent_read(true)
        .send()
        .await?;
    Ok(match output.item {
        Some(item) => Some(serde_dynamo::from_item(item)?),
        None => None,
    })
}

/// One page of a user's ledger entries, newest first.
pub async fn list_entries(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    user_id: &str,
    page: &crate::pagination::PageRequest,
) -> Result<(Vec<LedgerEntry>, Option<String>), ApiError> {
    crate::pagination::query_prefix(
        ddb,
        table,
        &keys::user_pk(user_id),
        keys::LEDGER_PREFIX,
        page,
        None,
    )
    .await
}

/// Every ledger entry of a user with an id in `[from_id, to_id)`, oldest first.
pub async fn entries_between(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    user_id: &str,
    from_id: &str,
    to_id: &str,
) -> Result<Vec<LedgerEntry>, ApiError> {
    let mut entries = Vec::new();
    let mut start = None;
    loop {
        let output = ddb
            .query()
            .table_name(table)
            .key_condition_expression("pk = :pk AND sk BETWEEN :from AND :to")
            .expression_attribute_values(":pk", s(keys::user_pk(user_id)))
            .expression_attribute_values(":from", s(keys::ledger_sk(from_id)))
            .expression_attribute_values(":to", s(keys::ledger_sk(to_id)))
            .set_exclusive_start_key(start)
            .send()
            .await?;
        for item in output.items.unwrap_or_default() {
            let entry: LedgerEntry = serde_dynamo::from_item(item)?;
            if entry.entry_id.as_str() < to_id {
                entries.push(entry);
            }
        }
        match output.last_evaluated_key {
            Some(key) => start = Some(key),
            None => return Ok(entries),
        }
    }
}

/// Sums every ledger entry of a user: what the account item must say.
pub async fn rebuild_from_ledger(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    user_id: &str,
) -> Result<Balances, ApiError> {
    let entries = entries_between(ddb, table, user_id, "0", "~").await?;
    Ok(entries.iter().fold(Balances::default(), |b, e| Balances {
        available: b.available + e.d_available,
        held: b.held + e.d_held,
        captured: b.captured + e.d_captured,
        expired: b.expired + e.d_expired,
        granted: b.granted + e.d_granted,
    }))
}

// ---------------------------------------------------------------------------------------------
// DynamoDB plumbing shared by the ledger and its callers

/// Key of a user's account item.
pub fn account_key(user_id: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".to_owned(), s(keys::user_pk(user_id))),
        ("sk".to_owned(), s(keys::ACCOUNT_SK)),
    ])
}

/// A string attribute.
pub fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

/// A number attribute.
pub fn n(value: i64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// A transactional put that must not overwrite anything.
pub fn put_new(
    table: &str,
    item: HashMap<String, AttributeValue>,
) -> Result<TransactWriteItem, ApiError> {
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(item))
        .condition_expression("attribute_not_exists(pk)")
        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
        .build()
        .map_err(ApiError::internal)?;
    Ok(TransactWriteItem::builder().put(put).build())
}

/// Why a transaction did not commit.
#[derive(Debug)]
pub enum TxFailure {
    /// Cancelled, with one reason per item.
    Cancelled(Vec<CancellationReason>),
    /// Any other failure.
    Other(ApiError),
}

/// Runs a write transaction.
pub async fn transact(
    ddb: &aws_sdk_dynamodb::Client,
    items: Vec<TransactWriteItem>,
) -> Result<(), TxFailure> {
    match ddb
        .transact_write_items()
        .set_transact_items(Some(items))
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(SdkError::ServiceError(e)) => match e.into_err() {
            TransactWriteItemsError::TransactionCanceledException(c) => Err(TxFailure::Cancelled(
                c.cancellation_reasons.unwrap_or_default(),
            )),
            TransactWriteItemsError::TransactionInProgressException(_) => {
                Err(TxFailure::Cancelled(Vec::new()))
            }
            other => Err(TxFailure::Other(ApiError::internal(format!("{other:?}")))),
        },
        Err(other) => Err(TxFailure::Other(ApiError::internal(format!("{other:?}")))),
    }
}

/// Whether a cancellation reason is a failed condition.
pub fn is_condition_failure(reason: &CancellationReason) -> bool {
    reason.code() == Some("ConditionalCheckFailed")
}

async fn backoff(attempt: u32) {
    let jitter = u64::from(ulid::Ulid::new().random() as u8 % 16);
    let ms = (5u64 << attempt.min(6)) + jitter;
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lot(amount: i64, remaining: i64, expires_at: Option<i64>) -> Lot {
        Lot {
            amount,
            remaining,
            expires_at,
            source: "test".into(),
            granted_at: 0,
            expired: false,
        }
    }

    fn hold(amount: i64, created_at: i64) -> Hold {
        Hold {
            amount,
            created_at,
            expired_part: 0,
            model: "m".into(),
        }
    }

    fn account(lots: &[(&str, Lot)], holds: &[(&str, Hold)]) -> Account {
        let held: i64 = holds.iter().map(|(_, h)| h.amount).sum();
        let total: i64 = lots.iter().map(|(_, l)| l.remaining).sum();
        Account {
            available: total - held,
            held,
            granted: total,
            inflight: holds.len() as i64,
            lots: lots
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            holds: holds
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            next_expiry: NO_EXPIRY,
            ..Account::default()
        }
    }

    #[test]
    fn capture_draws_the_earliest_expiring_lot_first() {
        let a = account(
            &[
                ("forever", lot(10, 10, None)),
                ("late", lot(10, 10, Some(2000))),
                ("soon", lot(5, 5, Some(1000))),
            ],
            &[("s", hold(8, 0))],
        );
        let plan = plan_settle(&a, "s", 8).unwrap();
        assert_eq!(plan.lots, vec![("late".into(), 7), ("soon".into(), 0)]);
        assert_eq!((plan.captured, plan.released, plan.expired), (8, 0, 0));
    }

    #[test]
    fn partial_capture_releases_the_rest() {
        let a = account(&[("l", lot(10, 10, None))], &[("s", hold(8, 0))]);
        let plan = plan_settle(&a, "s", 6).unwrap();
        assert_eq!((plan.captured, plan.released, plan.expired), (6, 2, 0));
        assert_eq!(plan.lots, vec![("l".into(), 4)]);
        assert!(plan_settle(&a, "other", 6).is_none());
    }

    #[test]
    fn an_expiring_lot_keeps_what_backs_older_holds() {
        // 10 credits expire at t=100 s; a hold of 4 was made at t=50 s.
        let a = account(
            &[("soon", lot(10, 10, Some(100))), ("later", lot(5, 5, None))],
            &[("old", hold(4, 50_000))],
        );
        let plan = plan_expiry(&a, 100);
        assert_eq!(plan.lots, vec![("soon".into(), 6, 4)]);
        assert_eq!(plan.holds, vec![("old".into(), 4)]);
        assert_eq!(plan.next_expiry, NO_EXPIRY);
        assert_eq!(plan.expired(), 6);
    }

    #[test]
    fn holds_made_after_the_expiry_are_not_backed_by_the_lot() {
        let a = account(
            &[("soon", lot(10, 10, Some(100))), ("later", lot(5, 5, None))],
            &[("new", hold(4, 150_000))],
        );
        let plan = plan_expiry(&a, 200);
        assert_eq!(plan.lots, vec![("soon".into(), 10, 0)]);
        assert!(plan.holds.is_empty());
    }

    #[test]
    fn a_released_hold_gives_back_nothing_of_an_expired_lot() {
        let mut a = account(
            &[("soon", lot(10, 4, Some(100)))],
            &[("old", hold(4, 50_000))],
        );
        a.lots.get_mut("soon").unwrap().expired = true;
        a.holds.get_mut("old").unwrap().expired_part = 4;
        let release = plan_settle(&a, "old", 0).unwrap();
        assert_eq!(
            (release.captured, release.released, release.expired),
            (0, 0, 4)
        );
        let capture = plan_settle(&a, "old", 3).unwrap();
        assert_eq!(
            (capture.captured, capture.released, capture.expired),
            (3, 0, 1)
        );
        assert_eq!(capture.lots, vec![("soon".into(), 0)]);
    }

    #[test]
    fn lots_not_yet_due_set_the_next_expiry() {
        let a = account(
            &[("a", lot(1, 1, Some(100))), ("b", lot(1, 1, Some(300)))],
            &[],
        );
        let plan = plan_expiry(&a, 150);
        assert_eq!(plan.next_expiry, 300);
        assert_eq!(plan.expired(), 1);
    }
}
