//! DynamoDB plumbing that belongs to no item: attribute values, conditional puts, strongly
//! consistent reads, write transactions and their failure, and the backoff between the
//! attempts of an optimistic read-modify-write. The items themselves (accounts, sessions, dead
//! letters) are written by the modules that own them.
//!
//! - [`keys`]: the single table's key layout and time-ordered ids.
//! - [`page`]: opaque cursors over a partition's items.

pub mod keys;
pub mod page;

use std::collections::HashMap;

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, CancellationReason, Put, ReturnValuesOnConditionCheckFailure, TransactWriteItem,
};

use crate::fault::{Fault, Result};

/// An item as DynamoDB stores it.
pub type Item = HashMap<String, AttributeValue>;

/// Attempts of an optimistic read-modify-write before giving up.
pub const MAX_ATTEMPTS: u32 = 12;

/// A string attribute value.
pub fn string(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

/// A number attribute value.
pub fn number(value: i64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// The string attribute `name` of an item.
pub fn string_of<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

/// The key of the item in partition `pk` with sort key `sk`.
pub fn key(pk: impl Into<String>, sk: impl Into<String>) -> Item {
    HashMap::from([("pk".to_owned(), string(pk)), ("sk".to_owned(), string(sk))])
}

/// A transactional put that must not overwrite anything.
pub fn put_new(table: &str, item: Item) -> Result<TransactWriteItem> {
    let put = Put::builder()
        .table_name(table)
        .set_item(Some(item))
        .condition_expression("attribute_not_exists(pk)")
        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
        .build()?;
    Ok(TransactWriteItem::builder().put(put).build())
}

/// Reads one item (strongly consistent) as `T`.
pub async fn get_item<T: serde::de::DeserializeOwned>(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    key: Item,
) -> Result<Option<T>> {
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

/// Why a transaction did not commit.
#[derive(Debug)]
pub enum TxFailure {
    /// Cancelled, with one reason per item (none when another transaction was in progress).
    Cancelled(Vec<CancellationReason>),
    /// Any other failure.
    Other(Fault),
}

/// Runs a write transaction.
pub async fn transact(
    ddb: &aws_sdk_dynamodb::Client,
    items: Vec<TransactWriteItem>,
) -> std::result::Result<(), TxFailure> {
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
            other => Err(TxFailure::Other(Fault::caused("transaction failed", other))),
        },
        Err(other) => Err(TxFailure::Other(other.into())),
    }
}

/// Whether a cancellation reason is a failed condition.
pub fn is_condition_failure(reason: &CancellationReason) -> bool {
    reason.code() == Some("ConditionalCheckFailed")
}

/// Whether an `UpdateItem` / `PutItem` / `DeleteItem` was refused by its condition.
pub fn is_conditional_check_failed<E, R>(error: &SdkError<E, R>) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    error.as_service_error().and_then(|e| e.code()) == Some("ConditionalCheckFailedException")
}

/// Waits before attempt `attempt + 1` of a conflicting write: exponential, with jitter.
pub async fn backoff(attempt: u32) {
    let jitter = u64::from(ulid::Ulid::new().random() as u8 % 16);
    let ms = (5u64 << attempt.min(6)) + jitter;
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
}
