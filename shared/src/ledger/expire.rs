//! Lot expiry: every lot past its expiry is expired, its credits that back older holds kept
//! with those holds, in as few transactions as DynamoDB's limits allow (100 items, 4 KB
//! expressions): many lots expiring together take several.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};

use super::plan::{plan_expiry, ExpiryPlan};
use super::{
    account_key, due_index_values, get_account, Account, EntryKind, LedgerEntry, EXPIRY_PK,
    NO_EXPIRY,
};
use crate::fault::{Fault, Result};
use crate::table::{self, number, string, TxFailure, MAX_ATTEMPTS};

/// Lots one expiry transaction takes at most: one ledger entry each beside the account's
/// update, within the 100 items of a transaction. Fewer when the update's expression would
/// pass 4 KB.
const MAX_LOTS_PER_TRANSACTION: usize = 99;
/// DynamoDB's limit on the length of one expression.
const MAX_EXPRESSION_BYTES: usize = 4096;

/// Expires every lot of `user_id` past its expiry; returns the credits lost.
pub async fn expire_due(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    user_id: &str,
    now_secs: i64,
) -> Result<i64> {
    let (mut lost, mut conflicts) = (0, 0);
    loop {
        let Some(account) = get_account(ddb, table, user_id).await? else {
            return Ok(lost);
        };
        if account.next_expiry_secs > now_secs {
            return Ok(lost);
        }
        match expire_as_read(ddb, table, user_id, &account, now_secs).await? {
            Some(chunk) => lost += chunk,
            None if conflicts + 1 < MAX_ATTEMPTS => {
                conflicts += 1;
                table::backoff(conflicts).await;
            }
            None => return Err(Fault::new("expiry gave up after repeated conflicts")),
        }
    }
}

/// One attempt: expires what is due in `account` as it was read, as much as one transaction
/// takes; returns the credits lost, or `None` when the account changed since the read
/// (nothing written: read it again). Lots still due after it leave the next expiry due.
pub async fn expire_as_read(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    user_id: &str,
    account: &Account,
    now_secs: i64,
) -> Result<Option<i64>> {
    if account.next_expiry_secs > now_secs {
        return Ok(Some(0));
    }
    let (plan, update) = largest_chunk(table, user_id, account, now_secs)?;
    let mut writes = vec![update];
    for entry in expiry_entries(&plan) {
        writes.push(entry.put(table, user_id)?);
    }
    match table::transact(ddb, writes).await {
        Ok(()) => Ok(Some(plan.expired())),
        Err(TxFailure::Cancelled(_)) => Ok(None),
        Err(TxFailure::Other(e)) => Err(e),
    }
}

/// The plan of the most due lots one transaction takes, and its account update: halved until
/// the update's expressions fit DynamoDB's 4 KB (holds each add to them too).
fn largest_chunk(
    table: &str,
    user_id: &str,
    account: &Account,
    now_secs: i64,
) -> Result<(ExpiryPlan, TransactWriteItem)> {
    let mut max_lots = MAX_LOTS_PER_TRANSACTION;
    loop {
        let plan = plan_expiry(account, now_secs, max_lots);
        let update = expiry_update(table, user_id, account, &plan)?;
        if max_lots == 1 || fits(&update) {
            return Ok((plan, update));
        }
        max_lots /= 2;
    }
}

/// Whether an update's expressions are within DynamoDB's length limit.
fn fits(item: &TransactWriteItem) -> bool {
    item.update().is_none_or(|u| {
        u.update_expression().len() <= MAX_EXPRESSION_BYTES
            && u.condition_expression().unwrap_or_default().len() <= MAX_EXPRESSION_BYTES
    })
}

/// The update of the account that applies an expiry plan, under the balances read: the plan
/// is only right for them. Reserves do not bump `version` (so that they do not conflict with
/// one another) but change `available` and `held`: a reserve that committed after the read
/// would otherwise be overdrawn by the expiry, its credits counted as expired and held.
fn expiry_update(
    table: &str,
    user_id: &str,
    account: &Account,
    plan: &ExpiryPlan,
) -> Result<TransactWriteItem> {
    let lost = plan.expired();
    let mut names = HashMap::new();
    let mut values = HashMap::from([
        (":lost".to_owned(), number(lost)),
        (":minus_lost".to_owned(), number(-lost)),
        (":next".to_owned(), number(plan.next_expiry_secs)),
        (":one".to_owned(), number(1)),
        (":version".to_owned(), number(account.version)),
        (":available".to_owned(), number(account.available)),
        (":held".to_owned(), number(account.held)),
    ]);
    let mut sets = vec!["next_expiry = :next".to_owned()];
    let mut removes = Vec::new();
    if plan.next_expiry_secs == NO_EXPIRY {
        removes.extend(["due_pk".to_owned(), "due_at".to_owned()]);
    } else {
        values.extend(due_index_values(plan.next_expiry_secs));
        sets.push("due_pk = :due_pk, due_at = :due_at".to_owned());
    }
    let mut conditions =
        vec!["version = :version AND available = :available AND held = :held".to_owned()];
    for (i, (id, _, backing)) in plan.lots.iter().enumerate() {
        names.insert(format!("#lot{i}"), id.clone());
        if *backing == 0 {
            removes.push(format!("lots.#lot{i}"));
        } else {
            values.insert(format!(":lot{i}"), number(*backing));
            // DynamoDB refuses a value no expression uses: `:true` only goes with its use.
            values.insert(":true".to_owned(), AttributeValue::Bool(true));
            sets.push(format!("lots.#lot{i}.remaining = :lot{i}"));
            sets.push(format!("lots.#lot{i}.expired = :true"));
        }
    }
    for (i, (session_id, part)) in plan.holds.iter().enumerate() {
        names.insert(format!("#hold{i}"), session_id.clone());
        values.insert(format!(":hold{i}"), number(*part));
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
        .build()?;
    Ok(TransactWriteItem::builder().update(update).build())
}

/// One `expire` ledger entry per lot that lost credits.
fn expiry_entries(plan: &ExpiryPlan) -> Vec<LedgerEntry> {
    plan.lots
        .iter()
        .filter(|(_, lost, _)| *lost > 0)
        .map(|(id, lost, _)| {
            let mut e = LedgerEntry::new(EntryKind::Expire, *lost);
            e.lot_id = Some(id.clone());
            e.d_available = -lost;
            e.d_expired = *lost;
            e
        })
        .collect()
}

/// Users with a lot past its expiry (`due` index), oldest first, at most `limit`.
pub async fn users_with_expired_lots(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    now_ms: i64,
    limit: i32,
) -> Result<Vec<String>> {
    let output = ddb
        .query()
        .table_name(table)
        .index_name("due")
        .key_condition_expression("due_pk = :pk AND due_at <= :now")
        .expression_attribute_values(":pk", string(EXPIRY_PK))
        .expression_attribute_values(":now", number(now_ms))
        .limit(limit)
        .send()
        .await?;
    Ok(output
        .items
        .unwrap_or_default()
        .iter()
        .filter_map(|item| {
            table::string_of(item, "pk")?
                .strip_prefix(table::keys::USER_PREFIX)
                .map(str::to_owned)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Hold, Lot};

    /// An account with `lots` due lots of `credits` each and 100 holds of one credit (the
    /// template's largest `InflightCap`), all made before the expiry.
    fn crowded(lots: usize, credits: i64) -> Account {
        let mut account = Account {
            next_expiry_secs: 100,
            ..Account::default()
        };
        for i in 0..lots {
            let lot = Lot {
                amount: credits,
                remaining: credits,
                expires_at_secs: Some(100),
                source: "t".into(),
                granted_at_ms: 0,
                expired: false,
            };
            account.lots.insert(format!("01J{i:023}"), lot);
        }
        for i in 0..100 {
            let hold = Hold {
                amount: 1,
                created_at_ms: 0,
                expired_part: 0,
                model: "m".into(),
            };
            account.holds.insert(format!("01K{i:023}"), hold);
        }
        account
    }

    #[test]
    fn an_expiry_at_the_inflight_cap_fits_dynamodbs_limits() {
        for (lots, credits) in [(150, 1), (1, 100), (3, 100)] {
            let account = crowded(lots, credits);
            let (plan, update) = largest_chunk("t", "u", &account, 200).unwrap();
            assert!(fits(&update), "{lots} lots of {credits}");
            assert!(!plan.lots.is_empty(), "{lots} lots of {credits}");
            assert!(expiry_entries(&plan).len() < 100);
        }
    }
}
