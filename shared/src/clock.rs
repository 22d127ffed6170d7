//! Wall-clock helpers: the system stores instants as Unix epoch milliseconds (sessions, ledger)
//! or seconds (lot expiry, DynamoDB TTL); fields and variables say which in their name
//! (`_ms`, `_secs`), and the conversions between the two live here.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    ms_to_secs(now_ms())
}

/// An instant in epoch seconds as epoch milliseconds.
pub fn secs_to_ms(secs: i64) -> i64 {
    secs * 1000
}

/// An instant in epoch milliseconds as epoch seconds (rounded down).
pub fn ms_to_secs(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

/// The UTC calendar day (`YYYY-MM-DD`) of an instant in epoch milliseconds.
pub fn day_of(ms: i64) -> String {
    let date = time::OffsetDateTime::from_unix_timestamp(ms_to_secs(ms))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .date();
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// Parses a `YYYY-MM-DD` day into the epoch milliseconds of its first instant (UTC).
pub fn parse_day(day: &str) -> Option<i64> {
    let format = time::macros::format_description!("[year]-[month]-[day]");
    let date = time::Date::parse(day, &format).ok()?;
    Some(secs_to_ms(date.midnight().assume_utc().unix_timestamp()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_round_trips_through_parse() {
        let ms = parse_day("2026-11-22").unwrap();
        assert_eq!(day_of(ms), "2026-11-22");
        assert_eq!(day_of(ms + 86_399_999), "2026-11-22");
        assert_eq!(day_of(ms + 86_400_000), "2026-11-23");
    }

    #[test]
    fn parse_day_rejects_garbage() {
        assert!(parse_day("2026-13-01").is_none());
        assert!(parse_day("yesterday").is_none());
    }
}
