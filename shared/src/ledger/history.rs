//! Reading the ledger back: pages for the user, ranges for summaries, the full rebuild.

use super::{Balances, LedgerEntry};
use crate::fault::Result;
use crate::table::page::{self, PageRequest};
use crate::table::{keys, string};

/// One page of a user's ledger entries, newest first.
pub async fn list_entries(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    user_id: &str,
    page: &PageRequest,
) -> Result<(Vec<LedgerEntry>, Option<String>)> {
    page::query_prefix(
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
) -> Result<Vec<LedgerEntry>> {
    let mut entries = Vec::new();
    let mut start = None;
    loop {
        let output = ddb
            .query()
            .table_name(table)
            .key_condition_expression("pk = :pk AND sk BETWEEN :from AND :to")
            .expression_attribute_values(":pk", string(keys::user_pk(user_id)))
            .expression_attribute_values(":from", string(keys::ledger_sk(from_id)))
            .expression_attribute_values(":to", string(keys::ledger_sk(to_id)))
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
) -> Result<Balances> {
    let entries = entries_between(ddb, table, user_id, "0", "~").await?;
    Ok(entries.iter().fold(Balances::default(), |b, e| Balances {
        available: b.available + e.d_available,
        held: b.held + e.d_held,
        captured: b.captured + e.d_captured,
        expired: b.expired + e.d_expired,
        granted: b.granted + e.d_granted,
    }))
}
