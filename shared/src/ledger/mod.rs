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
//!
//! One file per step: [`plan`] works out what settling and expiring write (pure, unit tested),
//! `reserve`, `grant`, `settle` and `expire` write it, `history` reads the entries back.
//!
//! Times carry their unit in their name: lot expiries are epoch seconds (what an admin grants
//! with), everything else epoch milliseconds.

mod expire;
mod grant;
mod history;
pub mod plan;
mod reserve;
mod settle;

use std::collections::HashMap;

use aws_sdk_dynamodb::types::TransactWriteItem;
use serde::{Deserialize, Serialize};

pub use expire::{expire_as_read, expire_due, users_with_expired_lots};
pub use grant::{grant, Grant, GrantError, Granted};
pub use history::{entries_between, list_entries, rebuild_from_ledger};
pub use plan::ExpiredShare;
pub use reserve::{reserve, Reservation, ReserveError};
pub use settle::{grace_lot_id, settle, SettleError, Settlement};

use crate::clock;
use crate::fault::Result;
use crate::table::{self, keys, Item};

/// `next_expiry_secs` of an account whose lots never expire (epoch seconds, year 2286).
pub const NO_EXPIRY: i64 = 9_999_999_999;
/// How long a grace lot lasts (7 days): the credits a release caused by our failure gives back
/// although their lot expired while they were held, time enough to use them again.
pub const GRACE_LOT_SECS: i64 = 7 * 24 * 3600;
/// `due` index partition of accounts with a lot that can expire (sessions use `DUE`).
pub const EXPIRY_PK: &str = "EXPIRY";

/// A grant of credits, spent earliest expiry first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lot {
    /// Credits granted.
    pub amount: i64,
    /// Credits not yet captured or expired (some may back holds).
    pub remaining: i64,
    /// Expiry in epoch seconds; `None` never expires.
    #[serde(rename = "expires_at")]
    pub expires_at_secs: Option<i64>,
    /// Where the credits came from (purchase, promo, ...).
    pub source: String,
    /// When it was granted (epoch ms).
    #[serde(rename = "granted_at")]
    pub granted_at_ms: i64,
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
    #[serde(rename = "created_at")]
    pub created_at_ms: i64,
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
    #[serde(rename = "next_expiry")]
    pub next_expiry_secs: i64,
    /// `due` index partition ([`EXPIRY_PK`]) while a lot can expire, so the sweeper finds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_pk: Option<String>,
    /// `due` index sort key: the next expiry in epoch ms (the index sorts sessions in ms too).
    #[serde(default, rename = "due_at", skip_serializing_if = "Option::is_none")]
    pub due_at_ms: Option<i64>,
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
    /// Held credits of an expired lot given back in a grace lot, after a failure of ours.
    Refund,
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
    #[serde(rename = "at")]
    pub at_ms: i64,
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
    /// An entry of `kind` moving `amount`, with every delta still zero.
    fn new(kind: EntryKind, amount: i64) -> Self {
        Self {
            entry_id: keys::new_id(),
            kind,
            amount,
            session_id: None,
            lot_id: None,
            model: None,
            at_ms: clock::now_ms(),
            d_available: 0,
            d_held: 0,
            d_captured: 0,
            d_expired: 0,
            d_granted: 0,
        }
    }

    /// The entry of a session's hold (`model` is the session's).
    fn for_session(kind: EntryKind, amount: i64, session_id: &str, model: &str) -> Self {
        let mut entry = Self::new(kind, amount);
        entry.session_id = Some(session_id.to_owned());
        entry.model = Some(model.to_owned());
        entry
    }

    /// The transactional put that records the entry in the user's partition.
    fn put(&self, table: &str, user_id: &str) -> Result<TransactWriteItem> {
        let mut item: Item = serde_dynamo::to_item(self)?;
        item.extend(table::key(
            keys::user_pk(user_id),
            keys::ledger_sk(&self.entry_id),
        ));
        table::put_new(table, item)
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

/// Key of a user's account item.
pub fn account_key(user_id: &str) -> Item {
    table::key(keys::user_pk(user_id), keys::ACCOUNT_SK)
}

/// Reads a user's account item (strongly consistent).
pub async fn get_account(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    user_id: &str,
) -> Result<Option<Account>> {
    table::get_item(ddb, table, account_key(user_id)).await
}

/// Values of the `due` index attributes of an account whose next expiry is `next_secs` (none
/// when nothing can expire).
fn due_index_values(next_secs: i64) -> HashMap<String, aws_sdk_dynamodb::types::AttributeValue> {
    if next_secs == NO_EXPIRY {
        return HashMap::new();
    }
    HashMap::from([
        (":due_pk".to_owned(), table::string(EXPIRY_PK)),
        (
            ":due_at".to_owned(),
            table::number(clock::secs_to_ms(next_secs)),
        ),
    ])
}
