//! Opaque cursors over a user's items. A cursor is the base64 of the last sort key returned;
//! it is checked against the prefix being listed, so a forged cursor cannot read elsewhere
//! (and the partition is always the caller's own).

use base64::Engine;
use serde::de::DeserializeOwned;

use super::{string, string_of, Item};
use crate::error::ApiError;
use crate::fault::Fault;

/// Default and largest page sizes.
pub const DEFAULT_LIMIT: i32 = 20;
/// Largest page size.
pub const MAX_LIMIT: i32 = 100;

/// A validated page request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageRequest {
    /// Sort key to continue after.
    pub after: Option<String>,
    /// Page size.
    pub limit: i32,
}

impl PageRequest {
    /// Validates `cursor` and `limit` query parameters for a listing of `prefix`.
    pub fn parse(
        cursor: Option<&str>,
        limit: Option<&str>,
        prefix: &str,
    ) -> Result<Self, ApiError> {
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(raw) => raw
                .parse::<i32>()
                .ok()
                .filter(|l| (1..=MAX_LIMIT).contains(l))
                .ok_or_else(|| {
                    ApiError::invalid("invalid_limit", format!("limit must be 1..{MAX_LIMIT}"))
                })?,
        };
        let after = match cursor.filter(|c| !c.is_empty()) {
            None => None,
            Some(raw) => Some(
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(raw)
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .filter(|sk| sk.starts_with(prefix) && sk.len() <= 256)
                    .ok_or_else(|| ApiError::invalid("invalid_cursor", "cursor is not valid"))?,
            ),
        };
        Ok(Self { after, limit })
    }
}

/// The cursor that continues after `sk`.
pub fn cursor_after(sk: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sk)
}

/// One page of the items of partition `pk` whose sort key starts with `prefix`, newest first,
/// with the cursor of the next page when there is one. `lower` bounds the sort key from below.
pub async fn query_prefix<T: DeserializeOwned>(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    pk: &str,
    prefix: &str,
    page: &PageRequest,
    lower: Option<&str>,
) -> Result<(Vec<T>, Option<String>), Fault> {
    let upper = page.after.clone().unwrap_or_else(|| format!("{prefix}~"));
    let lower = lower
        .map(str::to_owned)
        .unwrap_or_else(|| prefix.to_owned());
    let output = ddb
        .query()
        .table_name(table)
        .key_condition_expression("pk = :pk AND sk BETWEEN :lower AND :upper")
        .expression_attribute_values(":pk", string(pk))
        .expression_attribute_values(":lower", string(lower))
        .expression_attribute_values(":upper", string(upper.clone()))
        .scan_index_forward(false)
        // One more than asked: tells whether a next page exists without another call.
        .limit(page.limit + 1)
        .send()
        .await?;
    let mut items: Vec<Item> = output
        .items
        .unwrap_or_default()
        .into_iter()
        // BETWEEN is inclusive: the cursor's own item was on the previous page.
        .filter(|item| string_of(item, "sk") != Some(upper.as_str()))
        .collect();
    let more = items.len() > page.limit as usize;
    items.truncate(page.limit as usize);
    let next = more
        .then(|| {
            items
                .last()
                .and_then(|item| string_of(item, "sk"))
                .map(cursor_after)
        })
        .flatten();
    let parsed = items
        .into_iter()
        .map(serde_dynamo::from_item)
        .collect::<Result<Vec<T>, _>>()?;
    Ok((parsed, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_stay_in_their_prefix() {
        let cursor = cursor_after("SESSION#01ABC");
        let page = PageRequest::parse(Some(&cursor), Some("5"), "SESSION#").unwrap();
        assert_eq!(page.after.as_deref(), Some("SESSION#01ABC"));
        assert_eq!(page.limit, 5);
        let err = PageRequest::parse(Some(&cursor), None, "LEDGER#").unwrap_err();
        assert_eq!(err.code(), "invalid_cursor");
        assert_eq!(
            PageRequest::parse(Some("%%%"), None, "SESSION#")
                .unwrap_err()
                .code(),
            "invalid_cursor"
        );
    }

    #[test]
    fn limits_are_bounded() {
        for bad in ["0", "101", "-1", "ten"] {
            let err = PageRequest::parse(None, Some(bad), "X").unwrap_err();
            assert_eq!(err.code(), "invalid_limit");
        }
        assert_eq!(
            PageRequest::parse(None, None, "X").unwrap().limit,
            DEFAULT_LIMIT
        );
    }
}
