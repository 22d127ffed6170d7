//! The demo `local up` runs once ready: one image and one video generation for the demo user,
//! end to end through the gateway, with the sessions (presigned URLs that open) and the
//! credits before and after.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::client::Client;
use crate::jwt::JwtConfig;
use crate::log::Logger;
use crate::template::{Function, Template};

/// The demo user, seeded with credits when the stack starts.
pub const DEMO_USER: &str = "demo-user";
/// Credits granted to the demo user.
pub const DEMO_CREDITS: i64 = 500;
/// Route key of image generation.
pub const IMAGE_ROUTE: &str = "POST /api/images/seedream4/generate";
/// Route key of video generation.
pub const VIDEO_ROUTE: &str = "POST /api/videos/seedance/generate";

/// What the demo needs that is not there: routes, a generator fed by SQS, a schedule.
pub fn missing_for_demo(template: &Template, present: &[Function]) -> Vec<String> {
    let present_bin = |b: &str| present.iter().any(|f| f.binary == b);
    let routes = template.routes();
    let mut missing = Vec::new();
    for key in [
        IMAGE_ROUTE,
        VIDEO_ROUTE,
        "GET /api/sessions/{id}",
        "GET /api/credits/balance",
    ] {
        match routes.iter().find(|r| r.key() == key) {
            None => missing.push(format!("route {key} in template.yaml")),
            Some(r) if !present_bin(&r.binary) => {
                missing.push(format!("function `{}` (serves {key})", r.binary))
            }
            Some(_) => {}
        }
    }
    let sources = template.sqs_sources();
    if sources.is_empty() {
        missing.push("an SQS event source (the generator) in template.yaml".into());
    }
    for s in &sources {
        if !present_bin(&s.binary) {
            missing.push(format!("function `{}` (SQS source {})", s.binary, s.queue));
        }
    }
    let schedules = template.schedules();
    if schedules.is_empty() {
        missing.push(
            "a ScheduleV2 event (the sweeper, which finishes videos) in template.yaml".into(),
        );
    }
    for s in &schedules {
        if !present_bin(&s.binary) {
            missing.push(format!("function `{}` (schedule {})", s.binary, s.event));
        }
    }
    missing
}

/// Polls a session until it is `completed` or `failed`, or `timeout` passes.
pub async fn wait_final(
    client: &Client,
    token: &str,
    session_id: &str,
    timeout: Duration,
) -> Result<Value, String> {
    let deadline = Instant::now() + timeout;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        let r = client
            .get(&format!("/api/sessions/{session_id}"), Some(token))
            .await?;
        if r.status != 200 {
            return Err(format!(
                "GET /api/sessions/{session_id}: {} {}",
                r.status, r.body
            ));
        }
        if matches!(r.body["status"].as_str(), Some("completed" | "failed")) {
            return Ok(r.body);
        }
        last = r.body;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!(
        "session {session_id} still {} after {}s",
        last["status"],
        timeout.as_secs()
    ))
}

fn credits(balance: &Value) -> String {
    format!(
        "available {}, held {}, captured {}",
        balance["available"], balance["held"], balance["captured"]
    )
}

/// Runs the demo; prints as it goes. Never fails the stack: problems are printed.
pub async fn run(
    client: &Client,
    jwt: &JwtConfig,
    template: &Template,
    present: &[Function],
    log: &Logger,
) {
    let missing = missing_for_demo(template, present);
    if !missing.is_empty() {
        log.line(
            "demo",
            &format!(
                "skipped: the pipeline is not complete yet; missing: {}",
                missing.join("; ")
            ),
        );
        return;
    }
    if let Err(e) = demo(client, jwt, log).await {
        log.line("demo", &format!("FAILED: {e}"));
    }
}

async fn demo(client: &Client, jwt: &JwtConfig, log: &Logger) -> Result<(), String> {
    let token = jwt.issue(DEMO_USER, None, &[], 3600);
    let before = client.get("/api/credits/balance", Some(&token)).await?.body;
    log.line("demo", &format!("{DEMO_USER} before: {}", credits(&before)));
    let image = json!({
        "prompt": "A lighthouse on a cliff at dawn, watercolor",
        "size": "2K", "n": 4, "client_key": "demo-image",
    });
    let video = json!({
        "prompt": "A paper boat drifting down a rainy street at night",
        "resolution": "720p", "duration": 5, "client_key": "demo-video",
    });
    let mut sessions = Vec::new();
    for (path, body) in [
        ("/api/images/seedream4/generate", &image),
        ("/api/videos/seedance/generate", &video),
    ] {
        let started = Instant::now();
        let r = client.post(path, Some(&token), body).await?;
        if r.status != 202 {
            return Err(format!("POST {path}: {} {}", r.status, r.body));
        }
        log.line(
            "demo",
            &format!(
                "POST {path} -> 202 in {} ms: session {} reserved {} credits",
                started.elapsed().as_millis(),
                r.body["session_id"].as_str().unwrap_or("?"),
                r.body["credits_reserved"]
            ),
        );
        sessions.push((
            r.body["session_id"].as_str().unwrap_or_default().to_owned(),
            Instant::now(),
        ));
    }
    let mut report = String::new();
    for (id, accepted) in &sessions {
        let session = wait_final(client, &token, id, Duration::from_secs(180)).await?;
        report.push_str(&format!(
            "\n {} session {id}: {} in {:.1} s, reserved {}, captured {}\n",
            session["kind"].as_str().unwrap_or("?"),
            session["status"].as_str().unwrap_or("?"),
            accepted.elapsed().as_secs_f64(),
            session["credits_reserved"],
            session["credits_captured"],
        ));
        if let Some(t) = session.get("timing").filter(|t| !t.is_null()) {
            report.push_str(&format!("   timing {t}\n"));
        }
        if let Some(e) = session.get("error").filter(|e| !e.is_null()) {
            report.push_str(&format!("   error {e}\n"));
        }
        for output in session["outputs"].as_array().into_iter().flatten() {
            let url = output["url"].as_str().unwrap_or_default();
            let check = match client.fetch(url).await {
                Ok((status, ct, bytes)) => format!("GET -> {status} {ct}, {bytes} bytes"),
                Err(e) => format!("GET failed: {e}"),
            };
            report.push_str(&format!("   [{}] {check}\n       {url}\n", output["index"]));
        }
    }
    let after = client.get("/api/credits/balance", Some(&token)).await?.body;
    report.push_str(&format!(
        "\n credits of {DEMO_USER}: before {}\n                        after  {}\n",
        credits(&before),
        credits(&after)
    ));
    log.plain(&format!(
        "\n================================ demo results ================================{report}=============================================================================="
    ));
    Ok(())
}
