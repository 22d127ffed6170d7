//! The old k6 script's scenario, one iteration: pick one of 8 prompts, POST a generation (an
//! image, or a video for `--video-ratio` of iterations), check 202 + `session_id` +
//! `client_key`; then, beside the load, poll the accepted session with backoff until it is
//! completed or failed, for the end-to-end latency.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::api::Api;
use crate::classify::{Answer, ErrorClass};
use crate::metrics::{Endpoint, Recorder, SessionEnd};
use crate::users::TestUser;

/// The 8 prompts of the old script (plain text, no `--flags`, valid for both routes).
pub const PROMPTS: [&str; 8] = [
    "A lighthouse on a cliff at dawn, watercolor",
    "A red fox in fresh snow, golden hour, shallow depth of field",
    "A futuristic city skyline at night with neon reflections on wet streets",
    "A bowl of ramen on a wooden table, steam rising, overhead shot",
    "An astronaut tending a vegetable garden on the moon, digital art",
    "A paper boat drifting down a rainy street, cinematic",
    "A cozy reading nook with a cat asleep on a pile of books, warm light",
    "Mountain lake reflecting autumn trees, early morning mist",
];

/// The checks of one iteration, as the old script named them.
pub const CHECK_STATUS: &str = "status is 202";
/// The answer carries a session id.
pub const CHECK_SESSION_ID: &str = "has session_id";
/// The answer echoes the request's `client_key`.
pub const CHECK_CLIENT_KEY: &str = "has client_key";

/// How sessions are polled to the end.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PollPolicy {
    /// First wait after the 202.
    pub initial: Duration,
    /// Longest wait between polls (each wait is 1.5× the last).
    pub max: Duration,
    /// A session not finished this long after its request counts as timed out.
    pub timeout: Duration,
}

/// What each iteration sends.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    /// Share of iterations that request a video (0-1).
    pub video_ratio: f64,
    /// Images per image request (`n`).
    pub images: u8,
    /// Send a unique `Idempotency-Key` with every generate request.
    pub idempotency_keys: bool,
    /// Poll accepted sessions to the end (`None`: do not).
    pub e2e: Option<PollPolicy>,
}

/// What every iteration shares.
pub(crate) struct World {
    pub api: Api,
    pub recorder: Arc<Recorder>,
    pub scenario: Scenario,
    pub users: Vec<TestUser>,
    pub run_id: String,
    /// Flips to true when pollers must give up (the drain's deadline).
    pub hard_stop: watch::Receiver<bool>,
    pub sequence: AtomicU64,
}

impl World {
    /// The user of VU or arrival `n`.
    pub fn user(&self, n: u64) -> usize {
        (n % self.users.len() as u64) as usize
    }
}

/// Runs one iteration for `user`, due at `intended`.
pub(crate) async fn iteration(
    world: &Arc<World>,
    user: usize,
    intended: Instant,
    rng: &mut fastrand::Rng,
) {
    let seq = world.sequence.fetch_add(1, Ordering::Relaxed);
    let client_key = format!("lt-{}-{seq}", world.run_id);
    let prompt = PROMPTS[rng.usize(..PROMPTS.len())];
    let video = rng.f64() < world.scenario.video_ratio;
    let (endpoint, path, body) = if video {
        (
            Endpoint::GenerateVideo,
            "/api/videos/seedance/generate",
            json!({
                "prompt": prompt,
                "resolution": "720p",
                "ratio": "16:9",
                "duration": 5,
                "client_key": client_key,
            }),
        )
    } else {
        (
            Endpoint::GenerateImage,
            "/api/images/seedream4/generate",
            json!({
                "prompt": prompt,
                "size": "2K",
                "n": world.scenario.images,
                "client_key": client_key,
            }),
        )
    };
    let headers: Vec<(&str, &str)> = if world.scenario.idempotency_keys {
        vec![("Idempotency-Key", client_key.as_str())]
    } else {
        Vec::new()
    };
    let token = &world.users[user].token;
    let reply = world.api.post(path, token, &body, &headers).await;
    let class = world.recorder.record_request(
        endpoint,
        intended.into_std(),
        reply.sent,
        reply.done,
        &reply.answer,
    );

    let accepted = reply.answer == Answer::Status(202);
    let session_id = reply
        .body
        .as_ref()
        .and_then(|b| b.get("session_id"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let echoed = reply
        .body
        .as_ref()
        .and_then(|b| b.get("client_key"))
        .and_then(Value::as_str)
        == Some(client_key.as_str());
    let recorder = &world.recorder;
    recorder.record_check(CHECK_STATUS, accepted);
    recorder.record_check(CHECK_SESSION_ID, session_id.is_some());
    recorder.record_check(CHECK_CLIENT_KEY, echoed);
    let ok = accepted && session_id.is_some() && echoed;
    // A 202 whose body fails the checks is an error of its own kind.
    let failure = class.or((!ok).then_some(ErrorClass::OtherErrors));
    recorder.record_iteration(
        failure,
        Instant::from_std(reply.done).saturating_duration_since(intended),
    );

    if let (true, Some(session_id), Some(policy)) = (accepted, session_id, world.scenario.e2e) {
        recorder.session_polling();
        let world = world.clone();
        tokio::spawn(async move {
            let (end, processing) = poll_session(&world, user, &session_id, intended, policy).await;
            let e2e = Instant::now().saturating_duration_since(intended);
            world.recorder.record_session(end, e2e, processing);
        });
    }
}

/// Polls `GET /api/sessions/{id}` with backoff until the session is completed or failed, its
/// timeout passes, or the run's drain ends. Also returns the server's own measure of a
/// completed session, `updated_at - created_at`, free of poll granularity.
async fn poll_session(
    world: &World,
    user: usize,
    session_id: &str,
    intended: Instant,
    policy: PollPolicy,
) -> (SessionEnd, Option<Duration>) {
    let deadline = intended + policy.timeout;
    let path = format!("/api/sessions/{session_id}");
    let token = world.users[user].token.as_str();
    let mut hard_stop = world.hard_stop.clone();
    let mut delay = policy.initial;
    loop {
        let due = Instant::now() + delay;
        if due > deadline || *hard_stop.borrow_and_update() {
            return (SessionEnd::TimedOut, None);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(due) => {}
            _ = hard_stop.changed() => return (SessionEnd::TimedOut, None),
        }
        let reply = world.api.get(&path, Some(token)).await;
        world.recorder.record_request(
            Endpoint::GetSession,
            due.into_std(),
            reply.sent,
            reply.done,
            &reply.answer,
        );
        if let (Answer::Status(200), Some(body)) = (&reply.answer, &reply.body) {
            match body.get("status").and_then(Value::as_str) {
                Some("completed") => {
                    let at = |k: &str| body.get(k).and_then(Value::as_u64);
                    let processing = match (at("created_at"), at("updated_at")) {
                        (Some(created), Some(updated)) if updated >= created => {
                            Some(Duration::from_millis(updated - created))
                        }
                        _ => None,
                    };
                    return (SessionEnd::Completed, processing);
                }
                Some("failed") => return (SessionEnd::Failed, None),
                _ => {}
            }
        }
        delay = delay.mul_f64(1.5).min(policy.max);
    }
}
