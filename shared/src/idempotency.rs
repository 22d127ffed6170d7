//! Idempotency records: the first answer to a request that carried an `Idempotency-Key`, kept
//! in the caller's partition for `IDEMPOTENCY_TTL_SECS` and written in the same transaction as
//! the work it answers for, so the record exists exactly when the work happened. A retry with
//! the same key and the same request gets that answer again; with another request, a refusal.
//!
//! The record stands on its own: it does not depend on what the work created still existing
//! (a granted lot is removed once spent or expired, and a replay must still grant nothing).

use aws_sdk_dynamodb::types::TransactWriteItem;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::clock;
use crate::fault::{Fault, Result};
use crate::table::{self, keys, number, string, Item};

/// A request's claim on its `Idempotency-Key`.
#[derive(Clone, Debug)]
pub struct Claim {
    caller: String,
    route: String,
    key: String,
    fingerprint: String,
}

impl Claim {
    /// The claim of `caller` on `key` for `route`; `canonical` is what makes two requests the
    /// same (the route and the validated request, not the raw bytes).
    pub fn new(caller: &str, route: &str, key: &str, canonical: &Value) -> Self {
        Self {
            caller: caller.to_owned(),
            route: route.to_owned(),
            key: key.to_owned(),
            fingerprint: hex::encode(Sha256::digest(canonical.to_string())),
        }
    }

    /// The record's key: the caller's partition, the route and the key hashed.
    fn record_key(&self) -> Item {
        table::key(
            keys::user_pk(&self.caller),
            keys::idempotency_sk(&self.route, &self.key),
        )
    }

    /// The put that records `answer` as this request's, refused if the key is taken; to go in
    /// the work's own transaction.
    pub fn record(
        &self,
        table: &str,
        answer: &Value,
        ttl_secs: i64,
        extra: impl IntoIterator<Item = (&'static str, String)>,
    ) -> Result<TransactWriteItem> {
        let mut item = self.record_key();
        item.extend([
            ("fingerprint".to_owned(), string(&self.fingerprint)),
            ("response".to_owned(), string(answer.to_string())),
            ("ttl".to_owned(), number(clock::now_secs() + ttl_secs)),
        ]);
        item.extend(extra.into_iter().map(|(k, v)| (k.to_owned(), string(v))));
        table::put_new(table, item)
    }

    /// What the key was used for before, as `stored` (the record a refused put returned) or
    /// as read now.
    pub async fn prior(
        &self,
        ddb: &aws_sdk_dynamodb::Client,
        table: &str,
        stored: Option<Item>,
    ) -> Result<Prior> {
        let item = match stored {
            Some(item) => item,
            None => match ddb
                .get_item()
                .table_name(table)
                .set_key(Some(self.record_key()))
                .consistent_read(true)
                .send()
                .await?
                .item
            {
                Some(item) => item,
                None => return Ok(Prior::Unused),
            },
        };
        if table::string_of(&item, "fingerprint") != Some(self.fingerprint.as_str()) {
            return Ok(Prior::OtherRequest);
        }
        let answer = table::string_of(&item, "response")
            .ok_or_else(|| Fault::new("idempotency record without a response"))?;
        Ok(Prior::SameRequest(serde_json::from_str(answer)?))
    }
}

/// What an `Idempotency-Key` was used for before.
#[derive(Clone, Debug, PartialEq)]
pub enum Prior {
    /// Nothing: the key is free.
    Unused,
    /// This same request, which was answered so.
    SameRequest(Value),
    /// Another request: the key cannot be reused.
    OtherRequest,
}
