//! Key layout of the single table. A user's partition (`USER#<id>`) holds the account item,
//! ledger entries, sessions and idempotency records; sort keys start with the item's type.
//! Sessions and ledger entries have ULID ids, so their sort keys sort by time.

use sha2::{Digest, Sha256};

/// Partition key prefix of a user.
pub const USER_PREFIX: &str = "USER#";

/// The partition key of a user.
pub fn user_pk(user_id: &str) -> String {
    format!("{USER_PREFIX}{user_id}")
}

/// Sort key of the account item (balances, lots, holds).
pub const ACCOUNT_SK: &str = "ACCOUNT";
/// Sort key prefix of sessions.
pub const SESSION_PREFIX: &str = "SESSION#";
/// Sort key prefix of ledger entries.
pub const LEDGER_PREFIX: &str = "LEDGER#";
/// Sort key prefix of idempotency records.
pub const IDEMPOTENCY_PREFIX: &str = "IDEM#";

/// Sort key of a session.
pub fn session_sk(session_id: &str) -> String {
    format!("{SESSION_PREFIX}{session_id}")
}

/// Sort key of a ledger entry.
pub fn ledger_sk(entry_id: &str) -> String {
    format!("{LEDGER_PREFIX}{entry_id}")
}

/// Sort key of an idempotency record; the client's key is hashed so any bytes are safe.
pub fn idempotency_sk(route: &str, key: &str) -> String {
    let digest = Sha256::digest(format!("{route}\n{key}"));
    format!("{IDEMPOTENCY_PREFIX}{}", hex::encode(digest))
}

/// A new time-ordered id, strictly increasing within the process (entries written in the
/// same millisecond keep their order).
pub fn new_id() -> String {
    static GENERATOR: std::sync::Mutex<ulid::Generator> =
        std::sync::Mutex::new(ulid::Generator::new());
    GENERATOR
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .generate()
        .unwrap_or_else(|_| ulid::Ulid::new())
        .to_string()
}

/// The smallest ULID whose time is at or after `ms`: a bound for time-range queries.
pub fn id_floor(ms: i64) -> String {
    ulid::Ulid::from_parts(ms.max(0) as u64, 0).to_string()
}
