//! Plays the template's schedules: invokes the function every `--sweep-every` seconds (instead
//! of the template's rate) with the event EventBridge delivers: the schedule's `Input` when it
//! has one, else a "Scheduled Event".

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::watch;

use crate::invoke::Invoker;
use crate::log::Logger;
use crate::template::{Schedule, ACCOUNT_ID, REGION};

/// The event a schedule delivers.
pub fn scheduled_event(schedule: &Schedule) -> Value {
    if let Some(input) = &schedule.input {
        return serde_json::from_str(input).unwrap_or_else(|_| Value::String(input.clone()));
    }
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    let time = now
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let id = uuid_like(ulid::Ulid::new().0);
    let (source, resource) = if schedule.v2 {
        (
            "aws.scheduler",
            format!(
                "arn:aws:scheduler:{REGION}:{ACCOUNT_ID}:schedule/default/local-{}-{}",
                schedule.binary, schedule.event
            ),
        )
    } else {
        (
            "aws.events",
            format!(
                "arn:aws:events:{REGION}:{ACCOUNT_ID}:rule/local-{}-{}",
                schedule.binary, schedule.event
            ),
        )
    };
    json!({
        "version": "0",
        "id": id,
        "detail-type": "Scheduled Event",
        "source": source,
        "account": ACCOUNT_ID,
        "time": time,
        "region": REGION,
        "resources": [resource],
        "detail": {},
    })
}

fn uuid_like(n: u128) -> String {
    let h = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Whether a result says something happened (a non-zero count, a non-empty list).
fn eventful(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => o.values().any(eventful),
        _ => false,
    }
}

/// Invokes the schedule's function every `every` until `shutdown` turns true.
pub async fn run(
    schedule: Schedule,
    invoker: Invoker,
    every: Duration,
    timeout: Duration,
    log: Logger,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = ticks.tick() => {}
        }
        let started = Instant::now();
        let result = invoker
            .invoke(&schedule.binary, &scheduled_event(&schedule), timeout)
            .await;
        let ms = started.elapsed().as_millis();
        let name = format!("{} ({})", schedule.binary, schedule.event);
        match result {
            Ok(value) if eventful(&value) => {
                log.line("schedule", &format!("{name}: {value} ({ms} ms)"))
            }
            Ok(value) => log.file_only("schedule", &format!("{name}: {value} ({ms} ms)")),
            Err(e @ crate::invoke::InvokeError::Missing { .. }) => {
                log.line("schedule", &format!("{name}: stopped: {e}"));
                return;
            }
            Err(e) => log.line("schedule", &format!("{name}: {e} ({ms} ms)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(input: Option<&str>) -> Schedule {
        Schedule {
            event: "Sweep".into(),
            binary: "sweeper".into(),
            expression: "rate(1 minute)".into(),
            input: input.map(str::to_owned),
            v2: true,
            enabled: true,
        }
    }

    #[test]
    fn the_event_is_a_scheduled_event_unless_the_template_gives_an_input() {
        let e = scheduled_event(&schedule(None));
        assert_eq!(e["detail-type"], "Scheduled Event");
        assert_eq!(e["source"], "aws.scheduler");
        assert_eq!(e["detail"], json!({}));
        assert!(e["time"].as_str().unwrap().ends_with('Z'));
        assert_eq!(e["id"].as_str().unwrap().len(), 36);
        let e = scheduled_event(&schedule(Some(r#"{"task":"sweep"}"#)));
        assert_eq!(e, json!({"task": "sweep"}));
    }

    #[test]
    fn only_eventful_results_are_shown() {
        assert!(!eventful(&json!({"checked": 0, "expired": 0})));
        assert!(eventful(&json!({"checked": 2})));
        assert!(!eventful(&Value::Null));
    }
}
