//! The sweeper against moto and the mock provider: renders, stuck sessions, stale holds, lots.

use std::time::{Duration, Instant};

use mock_provider::{Knobs, Latency};
use serde_json::json;
use shared::ledger::EntryKind;
use shared::routes::enqueue::{handle, IMAGE_ROUTE, VIDEO_ROUTE};
use shared::sessions::{self, Session, Status};
use shared::sweeper::{sweep, Settings};
use testkit::{
    deliver_once, entry_count, generator_for, long_deadline, objects, parts, rendering_sessions,
    sweeper_for, user, Event, World,
};

fn instant_renders() -> Knobs {
    Knobs {
        queued_ms: 0,
        running_ms: 0,
        ..Knobs::default()
    }
}

/// For the runs of many tasks, which are about counts and deadlines: the smallest videos, so
/// moto is not asked to store gigabytes (sizes are proven in `streaming.rs` and the benches).
fn many_instant_renders() -> Knobs {
    Knobs {
        output_sizes: mock_provider::OutputSizes::minimal(),
        ..instant_renders()
    }
}

async fn enqueue(world: &World, sub: &str, route: &'static str, body: serde_json::Value) -> String {
    let event = Event::new(route, user(sub)).body(body.to_string());
    let (status, accepted) = parts(handle(&world.state, event.build()).await);
    assert_eq!(status, 202, "{accepted}");
    accepted["session_id"].as_str().unwrap().to_owned()
}

async fn session(world: &World, sub: &str, id: &str) -> Session {
    sessions::get(world.ddb(), world.table(), sub, id)
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn a_video_goes_queued_rendering_completed_with_the_mp4_in_s3() {
    let world = World::new().await;
    world.grant("v", 100, None).await;
    let mock = mock_provider::start(instant_renders()).await.unwrap();
    let generator = generator_for(&world, &mock).await;
    let id = enqueue(
        &world,
        "v",
        VIDEO_ROUTE,
        json!({"prompt": "a kitten yawns", "duration": 5}),
    )
    .await;
    assert_eq!(session(&world, "v", &id).await.status, Status::Queued);
    deliver_once(&world, &generator).await;
    assert_eq!(session(&world, "v", &id).await.status, Status::Rendering);

    let sweeper = sweeper_for(&world, &mock, Settings::default());
    let report = sweep(&sweeper, long_deadline()).await;
    assert_eq!(
        (report.tasks_checked, report.completed, report.list_calls),
        (1, 1, 1)
    );
    let done = session(&world, "v", &id).await;
    assert_eq!(done.status, Status::Completed);
    assert_eq!(done.credits_captured, 20);
    assert!(done.due_pk.is_none() && done.open_pk.is_none());
    assert_eq!(
        objects(&world).await,
        vec![
            (format!("v/{id}/0.mp4"), "video/mp4".to_owned()),
            (format!("v/{id}/1.png"), "image/png".to_owned())
        ]
    );
    let again = sweep(&sweeper, long_deadline()).await;
    assert_eq!(again.tasks_checked, 0, "nothing is due any more");
    let account = world.assert_conserved("v").await;
    assert_eq!((account.captured, account.held), (20, 0));
    assert_eq!(entry_count(&world, "v", EntryKind::Capture).await, 1);
}

#[tokio::test]
async fn failed_and_expired_tasks_release_the_credits() {
    let world = World::new().await;
    world.grant("f", 100, None).await;
    let mock = mock_provider::start(instant_renders()).await.unwrap();
    let generator = generator_for(&world, &mock).await;
    let failing = enqueue(&world, "f", VIDEO_ROUTE, json!({"prompt": "x [task-fail]"})).await;
    let expiring = enqueue(
        &world,
        "f",
        VIDEO_ROUTE,
        json!({"prompt": "y [task-expire]"}),
    )
    .await;
    deliver_once(&world, &generator).await;
    let report = sweep(
        &sweeper_for(&world, &mock, Settings::default()),
        long_deadline(),
    )
    .await;
    assert_eq!(report.failed, 2);
    let failed = session(&world, "f", &failing).await;
    assert_eq!(
        (failed.status, failed.error.unwrap().code.as_str()),
        (Status::Failed, "content_policy")
    );
    let expired = session(&world, "f", &expiring).await;
    assert_eq!(
        (expired.status, expired.error.unwrap().code.as_str()),
        (Status::Failed, "render_expired")
    );
    let account = world.assert_conserved("f").await;
    assert_eq!(
        (account.available, account.captured, account.held),
        (100, 0, 0)
    );
    assert!(objects(&world).await.is_empty());
}

#[tokio::test]
async fn a_running_render_is_checked_later_and_cancelled_past_the_maximum() {
    let world = World::new().await;
    world.grant("slow", 100, None).await;
    let mock = mock_provider::start(instant_renders()).await.unwrap();
    let generator = generator_for(&world, &mock).await;
    let id = enqueue(
        &world,
        "slow",
        VIDEO_ROUTE,
        json!({"prompt": "x [task-slow]"}),
    )
    .await;
    deliver_once(&world, &generator).await;
    let before = clock_ms();
    let report = sweep(
        &sweeper_for(&world, &mock, Settings::default()),
        long_deadline(),
    )
    .await;
    assert_eq!(report.still_rendering, 1);
    let waiting = session(&world, "slow", &id).await;
    assert_eq!((waiting.status, waiting.checks), (Status::Rendering, 1));
    assert!(
        waiting.due_at_ms.unwrap() >= before + 10_000,
        "next check backs off"
    );

    // Make it due now, with a maximum render time already passed.
    force_due(&world, "slow", &id).await;
    let impatient = Settings {
        max_render_ms: 0,
        ..Settings::default()
    };
    let report = sweep(&sweeper_for(&world, &mock, impatient), long_deadline()).await;
    assert_eq!((report.failed, report.cancel_calls), (1, 1));
    assert_eq!(mock.stats().requests.task_delete, 1);
    let failed = session(&world, "slow", &id).await;
    assert_eq!(failed.error.unwrap().code, "render_timeout");
    assert_eq!(world.assert_conserved("slow").await.available, 100);
}

fn clock_ms() -> i64 {
    shared::clock::now_ms()
}

async fn force_due(world: &World, sub: &str, id: &str) {
    world
        .ddb()
        .update_item()
        .table_name(world.table())
        .set_key(Some(sessions::session_key(sub, id)))
        .update_expression("SET due_at = :past")
        .expression_attribute_values(":past", shared::table::number(0))
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_thousand_due_tasks_settle_with_two_list_calls() {
    let world = World::new().await;
    let mock = mock_provider::start(many_instant_renders()).await.unwrap();
    let started = Instant::now();
    let sessions = rendering_sessions(&world, &mock, 1000, "many").await;
    eprintln!("setup of 1000 rendering sessions: {:?}", started.elapsed());
    let started = Instant::now();
    let report = sweep(
        &sweeper_for(&world, &mock, Settings::default()),
        long_deadline(),
    )
    .await;
    eprintln!("sweep of 1000 due tasks: {:?}", started.elapsed());
    assert!(report.list_calls <= 2, "{report:?}");
    assert_eq!(mock.stats().requests.task_list, report.list_calls);
    assert_eq!((report.get_calls, mock.stats().requests.task_get), (0, 0));
    assert_eq!(
        (report.tasks_checked, report.completed),
        (1000, 1000),
        "{report:?}"
    );
    for (user, id) in sessions.iter().step_by(97) {
        assert_eq!(session(&world, user, id).await.status, Status::Completed);
        let account = world.assert_conserved(user).await;
        assert_eq!(account.captured, 20, "720p x 5 s");
    }
}

#[tokio::test]
async fn without_the_list_endpoint_gets_stay_within_their_bound() {
    let world = World::new().await;
    let mut knobs = many_instant_renders();
    knobs.list_enabled = false;
    knobs.latency.task_get = Latency::fixed(20);
    let mock = mock_provider::start(knobs).await.unwrap();
    rendering_sessions(&world, &mock, 120, "[task-slow]").await;
    let settings = Settings {
        get_concurrency: 6,
        ..Settings::default()
    };
    let report = sweep(&sweeper_for(&world, &mock, settings), long_deadline()).await;
    let stats = mock.stats();
    assert_eq!((report.list_calls, stats.requests.task_list), (1, 1));
    assert_eq!((report.get_calls, stats.requests.task_get), (120, 120));
    assert!(
        stats.max_in_flight <= 6,
        "at most 6 GETs at once, saw {}",
        stats.max_in_flight
    );
    assert!(stats.max_in_flight >= 2, "the GETs ran in parallel");
    assert_eq!(report.still_rendering, 120);
}

#[tokio::test]
async fn a_short_deadline_stops_cleanly_and_the_next_run_finishes() {
    let world = World::new().await;
    let mut knobs = many_instant_renders();
    knobs.list_enabled = false;
    knobs.latency.task_get = Latency::fixed(100);
    let mock = mock_provider::start(knobs).await.unwrap();
    let sessions = rendering_sessions(&world, &mock, 40, "short").await;
    let settings = Settings {
        get_concurrency: 2,
        safety_margin: Duration::from_millis(100),
        ..Settings::default()
    };
    let sweeper = sweeper_for(&world, &mock, settings);
    let first = sweep(&sweeper, Instant::now() + Duration::from_millis(700)).await;
    assert!(first.stopped_early, "{first:?}");
    assert!(first.completed < 40, "{first:?}");
    for (user, id) in &sessions {
        let s = session(&world, user, id).await;
        assert!(
            matches!(s.status, Status::Completed | Status::Rendering),
            "no half-finished state"
        );
        world.assert_conserved(user).await;
    }
    let second = sweep(&sweeper, long_deadline()).await;
    assert!(!second.stopped_early);
    assert_eq!(first.completed + second.completed, 40);
    for (user, id) in &sessions {
        assert_eq!(session(&world, user, id).await.status, Status::Completed);
        assert_eq!(entry_count(&world, user, EntryKind::Capture).await, 1);
    }
}

#[tokio::test]
async fn a_crash_between_reserve_and_send_is_redispatched_and_completes_once() {
    let broken = World::with(|c| {
        c.queue_url = format!("{}/000000000000/no-such-queue", testkit::endpoint())
    })
    .await;
    broken.grant("c", 100, None).await;
    let id = enqueue(&broken, "c", IMAGE_ROUTE, json!({"prompt": "lost", "n": 2})).await;
    // The same table, with the real queue: what the sweeper and generator see.
    let world = World {
        state: shared::AppState {
            config: std::sync::Arc::new(shared::config::Config {
                queue_url: broken.queue_url.clone(),
                ..(*broken.state.config).clone()
            }),
            aws: broken.state.aws.clone(),
        },
        calls: broken.calls.clone(),
        queue_url: broken.queue_url.clone(),
        dlq_url: broken.dlq_url.clone(),
    };
    assert!(
        world.drain_queue().await.is_empty(),
        "the send failed: no message"
    );
    assert_eq!(session(&world, "c", &id).await.status, Status::Queued);
    // Longer than the threshold passes without the session moving.
    let then = clock_ms() - Settings::default().stuck_queued_ms - 1;
    world
        .ddb()
        .update_item()
        .table_name(world.table())
        .set_key(Some(sessions::session_key("c", &id)))
        .update_expression("SET open_at = :then, updated_at = :then")
        .expression_attribute_values(":then", shared::table::number(then))
        .send()
        .await
        .unwrap();
    let mock = mock_provider::start(Knobs::default()).await.unwrap();
    let sweeper = sweeper_for(&world, &mock, Settings::default());
    let (a, b) = tokio::join!(
        sweep(&sweeper, long_deadline()),
        sweep(&sweeper, long_deadline())
    );
    assert_eq!(
        a.redispatched + b.redispatched,
        1,
        "overlapping runs send it once"
    );
    let generator = generator_for(&world, &mock).await;
    deliver_once(&world, &generator).await;
    let done = session(&world, "c", &id).await;
    assert_eq!((done.status, done.credits_captured), (Status::Completed, 4));
    assert_eq!(entry_count(&world, "c", EntryKind::Capture).await, 1);
    world.assert_conserved("c").await;
}

/// A sweep with the hold timeout at zero: every open hold is past it. Nothing is re-dispatched.
async fn sweep_releasing_holds(
    world: &World,
    mock: &mock_provider::MockHandle,
) -> shared::sweeper::Report {
    let settings = Settings {
        hold_timeout_ms: 0,
        stuck_queued_ms: i64::MAX / 2,
        ..Settings::default()
    };
    sweep(&sweeper_for(world, mock, settings), long_deadline()).await
}

#[tokio::test]
async fn a_hold_past_the_timeout_is_released() {
    let world = World::new().await;
    world.grant("h", 50, None).await;
    let id = enqueue(
        &world,
        "h",
        IMAGE_ROUTE,
        json!({"prompt": "forgotten", "n": 3}),
    )
    .await;
    assert_eq!(world.account("h").await.held, 6);
    let mock = mock_provider::start(Knobs::default()).await.unwrap();
    let patient = sweep(
        &sweeper_for(&world, &mock, Settings::default()),
        long_deadline(),
    )
    .await;
    assert_eq!(patient.holds_released, 0, "not yet past the timeout");
    let report = sweep_releasing_holds(&world, &mock).await;
    assert_eq!(report.holds_released, 1);
    let failed = session(&world, "h", &id).await;
    assert_eq!(
        (failed.status, failed.error.unwrap().code.as_str()),
        (Status::Failed, "timed_out")
    );
    let account = world.assert_conserved("h").await;
    assert_eq!(
        (account.available, account.held, account.inflight),
        (50, 0, 0)
    );
}

#[tokio::test]
async fn two_overlapping_runs_do_no_harm() {
    let world = World::new().await;
    let mock = mock_provider::start(instant_renders()).await.unwrap();
    let rendering = rendering_sessions(&world, &mock, 20, "both").await;
    world
        .grant("old", 30, Some(shared::clock::now_secs() - 1))
        .await;
    world.grant("stale", 40, None).await;
    let stale = enqueue(&world, "stale", IMAGE_ROUTE, json!({"prompt": "s", "n": 1})).await;
    let settings = Settings {
        hold_timeout_ms: 0,
        stuck_queued_ms: i64::MAX / 2,
        ..Settings::default()
    };
    let sweeper = sweeper_for(&world, &mock, settings);
    let (a, b) = tokio::join!(
        sweep(&sweeper, long_deadline()),
        sweep(&sweeper, long_deadline())
    );
    assert_eq!(a.completed + b.completed, 20, "{a:?} {b:?}");
    assert_eq!(a.holds_released + b.holds_released, 1);
    for (user, _) in &rendering {
        assert_eq!(entry_count(&world, user, EntryKind::Capture).await, 1);
        world.assert_conserved(user).await;
    }
    assert_eq!(entry_count(&world, "old", EntryKind::Expire).await, 1);
    assert_eq!(world.assert_conserved("old").await.expired, 30);
    assert_eq!(entry_count(&world, "stale", EntryKind::Release).await, 1);
    assert_eq!(
        session(&world, "stale", &stale).await.status,
        Status::Failed
    );
    world.assert_conserved("stale").await;
}

#[tokio::test]
async fn one_account_that_cannot_expire_does_not_stop_the_others() {
    let world = World::new().await;
    let now = shared::clock::now_secs();
    // Due first, so the run meets it first: its item no longer decodes.
    world.grant("broken", 10, Some(now - 20)).await;
    world
        .ddb()
        .update_item()
        .table_name(world.table())
        .set_key(Some(shared::ledger::account_key("broken")))
        .update_expression("SET available = :text")
        .expression_attribute_values(":text", shared::table::string("ten"))
        .send()
        .await
        .unwrap();
    world.grant("fine", 30, Some(now - 10)).await;
    world.grant("fine", 5, None).await;
    let mock = mock_provider::start(instant_renders()).await.unwrap();
    let report = sweep(
        &sweeper_for(&world, &mock, Settings::default()),
        long_deadline(),
    )
    .await;
    assert_eq!(
        (report.expiry_failures, report.lots_expired),
        (1, 1),
        "{report:?}"
    );
    assert_eq!(report.credits_expired, 30);
    let fine = world.assert_conserved("fine").await;
    assert_eq!((fine.available, fine.expired), (5, 30));
}

#[tokio::test]
async fn a_session_handed_back_recently_is_left_to_its_redelivery() {
    let world = World::new().await;
    world.grant("hb", 50, None).await;
    let id = enqueue(&world, "hb", IMAGE_ROUTE, json!({"prompt": "back", "n": 1})).await;
    // Its message waits out the visibility timeout after a hand-back (not visible to us).
    world.drain_queue().await;
    let threshold = Settings::default().stuck_queued_ms;
    let age = |attribute: &'static str| {
        let world = &world;
        let id = &id;
        async move {
            world
                .ddb()
                .update_item()
                .table_name(world.table())
                .set_key(Some(sessions::session_key("hb", id)))
                .update_expression(format!("SET {attribute} = :then"))
                .expression_attribute_values(
                    ":then",
                    shared::table::number(clock_ms() - threshold - 1),
                )
                .send()
                .await
                .unwrap();
        }
    };
    // Accepted long ago, handed back just now.
    age("open_at").await;
    let mock = mock_provider::start(Knobs::default()).await.unwrap();
    let sweeper = sweeper_for(&world, &mock, Settings::default());
    assert_eq!(sweep(&sweeper, long_deadline()).await.redispatched, 0);
    assert!(world.drain_queue().await.is_empty(), "no duplicate message");
    // Nothing has happened to it for longer than the threshold: now it is stuck.
    age("updated_at").await;
    assert_eq!(sweep(&sweeper, long_deadline()).await.redispatched, 1);
    let sent = world.drain_queue().await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["session_id"], id.as_str());
}

#[tokio::test]
async fn a_hold_we_time_out_gives_back_credits_whose_lot_expired_meanwhile() {
    let world = World::new().await;
    let now = shared::clock::now_secs();
    world.grant("g", 10, Some(now + 3600)).await;
    let id = enqueue(&world, "g", IMAGE_ROUTE, json!({"prompt": "late", "n": 3})).await;
    // The lot expires while the session waits: the 6 held credits stay with the hold.
    let lost = shared::ledger::expire_due(world.ddb(), world.table(), "g", now + 3601)
        .await
        .unwrap();
    assert_eq!(lost, 4);
    let mock = mock_provider::start(Knobs::default()).await.unwrap();
    let report = sweep_releasing_holds(&world, &mock).await;
    assert_eq!(report.holds_released, 1);
    let failed = session(&world, "g", &id).await;
    assert_eq!(failed.error.unwrap().code, "timed_out");
    // Our timeout, not the user's doing: the 6 credits come back in full.
    let account = world.assert_conserved("g").await;
    assert_eq!(
        (account.available, account.held, account.expired),
        (6, 0, 4)
    );
    let grace = &account.lots[&shared::ledger::grace_lot_id(&id)];
    assert_eq!(grace.remaining, 6);
    assert_eq!(entry_count(&world, "g", EntryKind::Refund).await, 1);
    assert_eq!(entry_count(&world, "g", EntryKind::Release).await, 0);
}
