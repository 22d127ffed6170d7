//! Wall-clock helpers: the system stores instants as Unix epoch milliseconds (sessions, ledger)
//! or seconds (lot expiry, DynamoDB TTL); fields and variables say which in their name
//! (`_ms`, `_secs`), and the conversions between the two live here.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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

/// The deadline of an invocation, as an [`Instant`], from the Lambda context's deadline: epoch
/// milliseconds in AWS. `cargo lambda watch` sends the milliseconds left instead (a value no
/// epoch time since 2001 can have), so such a value is read as a duration.
pub fn deadline_from_epoch_ms(deadline_ms: u64) -> Instant {
    const EPOCH_MS_2001: u64 = 1_000_000_000_000;
    let left = if deadline_ms < EPOCH_MS_2001 {
        deadline_ms as i64
    } else {
        deadline_ms as i64 - now_ms()
    };
    Instant::now() + Duration::from_millis(left.max(0) as u64)
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
    fn deadlines_are_read_as_epoch_times_or_as_time_left() {
        let in_aws = deadline_from_epoch_ms((now_ms() + 30_000) as u64);
        let left = in_aws - Instant::now();
        assert!(
            left > Duration::from_secs(29) && left <= Duration::from_secs(30),
            "{left:?}"
        );
        let local = deadline_from_epoch_ms(600_000) - Instant::now();
        assert!(local > Duration::from_secs(599), "{local:?}");
        assert!(
            deadline_from_epoch_ms(1_700_000_000_000) <= Instant::now(),
            "a past epoch time is due"
        );
    }

    #[test]
    fn parse_day_rejects_garbage() {
        assert!(parse_day("2026-13-01").is_none());
        assert!(parse_day("yesterday").is_none());
    }
}
