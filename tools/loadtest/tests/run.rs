//! Short real runs (about 2 s each) of the tool's library entry point against the in-process
//! fake API, comparing the summary's numbers with what the fake served.

mod support;

use std::time::Duration;

use loadtest::stages::{Profile, Think};
use loadtest::threshold::Threshold;
use loadtest::users::Minter;
use loadtest::{Identity, Load, Plan, PollPolicy, RunError, Scenario, Summary};
use support::{FakeApi, Knobs, ACCEPTED_WITHOUT_SESSION};

fn minter() -> Minter {
    Minter {
        key: "test-key".into(),
        issuer: Some("https://issuer/test".into()),
        audience: Some("web".into()),
    }
}

fn plan(url: &str, load: Load) -> Plan {
    Plan {
        base_url: url.into(),
        load,
        preset: None,
        identity: Identity::Mint {
            minter: minter(),
            users: 3,
            prefix: "lt-test-".into(),
        },
        hot_user: false,
        admin_token: Some(minter().token("lt-test-admin", true, Duration::from_secs(600))),
        seed_credits: Some(1000),
        scenario: Scenario {
            video_ratio: 0.25,
            images: 4,
            idempotency_keys: true,
            e2e: Some(PollPolicy {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(50),
                timeout: Duration::from_secs(5),
            }),
        },
        thresholds: Vec::new(),
        http_timeout: Duration::from_secs(5),
        graceful_stop: Duration::from_secs(5),
        progress: false,
        seed: 42,
        run_id: "test".into(),
        allow_long: false,
    }
}

fn closed(stages: &str, think: &str) -> Load {
    Load::Closed {
        profile: Profile::parse_vus(stages).unwrap(),
        think: Think::parse(think).unwrap(),
    }
}

fn count(s: &Summary, metric: &str) -> u64 {
    s.value(metric, "count").unwrap_or(-1.0) as u64
}

async fn run(plan: Plan) -> Summary {
    loadtest::run(plan, std::future::pending()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_run_counts_every_answer_by_class_and_follows_sessions_to_the_end() {
    let fake = FakeApi::start(Knobs {
        statuses: vec![202, 202, 402, 202, 429, 202, 500, ACCEPTED_WITHOUT_SESSION],
        delay: Duration::from_millis(5),
        polls_to_finish: 2,
        fail_every: 4,
    })
    .await;
    let mut plan = plan(&fake.url, closed("500ms:4,1500ms:4", "0..20ms"));
    plan.thresholds = vec![
        Threshold::parse("errors:rate<0.01").unwrap(),
        Threshold::parse("http_req_duration:p(95)<5000").unwrap(),
        Threshold::parse("session_e2e:p(99.9)<5000").unwrap(),
    ];
    let s = run(plan).await;

    let served = |status: u16| fake.served(|f| f.by_status.get(&status).copied().unwrap_or(0));
    let generated = fake.served(|f| f.generate);
    assert!(
        generated > 40,
        "4 VUs with ~10 ms iterations for 2 s: {generated}"
    );
    assert_eq!(count(&s, "http_req_duration"), generated);
    assert_eq!(count(&s, "iterations"), generated);
    assert_eq!(count(&s, "credit_errors"), served(402));
    assert_eq!(count(&s, "rate_limited"), served(429));
    assert_eq!(count(&s, "provider_errors"), served(500));
    assert_eq!(count(&s, "other_errors"), served(ACCEPTED_WITHOUT_SESSION));
    assert_eq!(s.errors.credit_errors, served(402));
    let failed = served(402) + served(429) + served(500) + served(ACCEPTED_WITHOUT_SESSION);
    let error_rate = s.value("errors", "rate").unwrap();
    assert!((error_rate - failed as f64 / generated as f64).abs() < 1e-9);
    assert!((s.errors.success_rate + s.errors.error_rate - 1.0).abs() < 1e-9);

    // Checks, as the old script named them.
    let check = |name: &str| {
        let c = s.checks.iter().find(|c| c.name == name).unwrap();
        (c.passes, c.fails)
    };
    let refused = served(402) + served(429) + served(500);
    assert_eq!(check("status is 202").1, refused);
    assert_eq!(
        check("has session_id").1,
        refused + served(ACCEPTED_WITHOUT_SESSION)
    );
    assert_eq!(check("has client_key").1, refused);

    // Both routes were used, per-endpoint figures add up.
    let images = fake.served(|f| f.images);
    let videos = fake.served(|f| f.videos);
    assert!(images > 0 && videos > 0, "images {images}, videos {videos}");
    let route = |name: &str| s.endpoints.iter().find(|e| e.name == name).unwrap();
    assert_eq!(
        route("POST /api/images/seedream4/generate").requests,
        images
    );
    assert_eq!(route("POST /api/videos/seedance/generate").requests, videos);
    assert_eq!(
        route("POST /api/images/seedream4/generate")
            .statuses
            .values()
            .sum::<u64>(),
        images
    );

    // Every accepted session was polled to its end; e2e counts only the completed ones.
    let (finished, failed_sessions, polls) = fake.served(|f| (f.finished, f.failed, f.polls));
    assert_eq!(count(&s, "sessions_completed"), finished);
    assert_eq!(count(&s, "sessions_failed"), failed_sessions);
    assert_eq!(count(&s, "sessions_timed_out"), 0);
    assert_eq!(count(&s, "session_e2e"), finished);
    assert_eq!(count(&s, "session_processing"), finished);
    assert!((s.value("session_processing", "max").unwrap() - 250.0).abs() < 1.0);
    assert_eq!(finished + failed_sessions, served(202));
    assert_eq!(route("GET /api/sessions/{id}").requests, polls);
    assert!(polls >= 2 * served(202));
    let e2e_min = s.value("session_e2e", "min").unwrap();
    assert!(
        e2e_min >= 20.0 + 20.0,
        "two polls, 20 ms then 30 ms apart: {e2e_min}"
    );

    // Users: 3 minted, each seeded once by the admin, all used.
    let (users, grants) = fake.served(|f| (f.users.len(), f.grants.clone()));
    assert_eq!(users, 3);
    assert_eq!(grants.len(), 3);
    assert!(grants
        .iter()
        .all(|(_, amount, keyed)| *amount == 1000 && *keyed));
    assert_eq!(s.config.seeded_users, 3);

    // Thresholds: the error rate breaches, latency holds.
    let ok: Vec<bool> = s.thresholds.iter().map(|t| t.ok).collect();
    assert_eq!(ok, [false, true, true]);
    assert!(!s.passed);
    assert!(s.value("session_e2e", "p(99.9)").is_some());

    // The timeline and the report.
    assert!(s.timeline.len() >= 2, "{:?}", s.timeline);
    assert_eq!(
        s.timeline.iter().map(|t| t.generate).sum::<u64>(),
        generated
    );
    assert!(s.timeline.iter().any(|t| t.vus == 4));
    let html = loadtest::report::render(&s);
    assert!(html.matches("<svg").count() >= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_model_measures_from_the_intended_time_so_queueing_is_not_hidden() {
    // 40/s against a server that takes 100 ms, but only 1 iteration in flight: the client can
    // send 10/s, so arrivals queue. Latency from the intended time shows it.
    let fake = FakeApi::start(Knobs {
        delay: Duration::from_millis(100),
        ..Knobs::default()
    })
    .await;
    let mut p = plan(
        &fake.url,
        Load::Open {
            profile: Profile::constant(40.0, Duration::from_secs(2)),
            max_inflight: 1,
        },
    );
    p.scenario.e2e = None;
    let s = run(p).await;
    let sent = count(&s, "iterations");
    let dropped = count(&s, "dropped_iterations");
    assert_eq!(
        sent + dropped,
        80,
        "every scheduled arrival is sent or dropped"
    );
    assert!(dropped > 40, "dropped {dropped}");
    assert_eq!(fake.served(|f| f.max_concurrent), 1);
    let p95 = s.value("http_req_duration", "p(95)").unwrap();
    assert!(
        p95 > 1000.0,
        "queueing must show in the latency: p95 {p95} ms"
    );
    let lag = s.value("schedule_lag", "p(95)").unwrap();
    assert!(lag > 800.0, "lag p95 {lag}");
    assert!(
        s.notes.iter().any(|n| n.contains("never sent")),
        "{:?}",
        s.notes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_model_with_room_keeps_the_schedule() {
    let fake = FakeApi::start(Knobs {
        delay: Duration::from_millis(100),
        ..Knobs::default()
    })
    .await;
    let mut p = plan(
        &fake.url,
        Load::Open {
            profile: Profile::parse_rates("1s:40/s,1s:40/s", 0.0).unwrap(),
            max_inflight: 100,
        },
    );
    p.scenario.e2e = None;
    let s = run(p).await;
    // Ramp 0 → 40/s over 1 s (20 arrivals) then 40/s for 1 s (40 arrivals).
    assert_eq!(count(&s, "iterations"), 60);
    assert_eq!(count(&s, "dropped_iterations"), 0);
    assert_eq!(fake.served(|f| f.generate), 60);
    let p95 = s.value("http_req_duration", "p(95)").unwrap();
    assert!((100.0..400.0).contains(&p95), "p95 {p95} ms");
    assert!(s.value("schedule_lag", "p(95)").unwrap() < 50.0);
    assert!(fake.served(|f| f.max_concurrent) >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_user_sends_all_load_as_one_user() {
    let fake = FakeApi::start(Knobs::default()).await;
    let mut p = plan(&fake.url, closed("1s:3", "0..10ms"));
    p.hot_user = true;
    p.identity = Identity::Mint {
        minter: minter(),
        users: 5,
        prefix: "lt-hot-".into(),
    };
    let s = run(p).await;
    assert_eq!(fake.served(|f| f.users.len()), 1);
    assert_eq!(fake.served(|f| f.grants.len()), 1);
    assert_eq!(s.config.users, 1);
    assert!(s.config.hot_user);
    assert!(count(&s, "iterations") > 0);
}

#[tokio::test]
async fn an_unreachable_api_or_a_refused_token_fails_before_the_load() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let err = loadtest::run(plan(&url, closed("1s:1", "0")), std::future::pending())
        .await
        .unwrap_err();
    assert!(matches!(err, RunError::Unreachable { .. }), "{err}");

    let fake = FakeApi::start(Knobs::default()).await;
    let mut p = plan(&fake.url, closed("1s:1", "0"));
    p.identity = Identity::Tokens(vec![loadtest::users::TestUser::from_token("bad")]);
    let err = loadtest::run(p, std::future::pending()).await.unwrap_err();
    assert!(matches!(err, RunError::Auth(_)), "{err}");
    assert_eq!(fake.served(|f| f.generate), 0, "nothing was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_writes_json_and_html_compares_with_a_baseline_and_exits_99() {
    let fake = FakeApi::start(Knobs {
        statuses: vec![202, 202, 202, 500],
        ..Knobs::default()
    })
    .await;
    let dir = std::env::temp_dir().join(format!("loadtest-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json, html, second) = (
        dir.join("run.json"),
        dir.join("report.html"),
        dir.join("second.json"),
    );
    let token = minter().token("lt-cli-user", false, Duration::from_secs(600));
    let common = |extra: &[&str]| {
        let mut argv: Vec<String> = [
            "loadtest",
            "--base-url",
            &fake.url,
            "--token",
            &token,
            "--stages",
            "1s:2",
            "--think",
            "0..10ms",
            "--poll-initial",
            "20ms",
            "--poll-max",
            "50ms",
            "--e2e-timeout",
            "5s",
            "--quiet",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        argv.extend(extra.iter().map(|s| s.to_string()));
        <loadtest::cli::Args as clap::Parser>::try_parse_from(argv).unwrap()
    };
    let code = loadtest::cli::main(common(&[
        "--threshold",
        "errors:rate<0.5",
        "--summary-json",
        json.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
    ]))
    .await
    .unwrap();
    assert_eq!(code, 0);
    let first: Summary = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(first.passed);
    assert!(first.value("http_req_duration", "p(95)").is_some());
    assert!(first.metrics["http_req_duration"]
        .values
        .contains_key("p(99)"));
    let report = std::fs::read_to_string(&html).unwrap();
    assert!(report.contains("<svg") && report.contains("Throughput"));

    let code = loadtest::cli::main(common(&[
        "--threshold",
        "provider_errors:count==0",
        "--baseline",
        json.to_str().unwrap(),
        "--summary-json",
        second.to_str().unwrap(),
    ]))
    .await
    .unwrap();
    assert_eq!(code, loadtest::EXIT_THRESHOLDS);
    let again: Summary = serde_json::from_str(&std::fs::read_to_string(&second).unwrap()).unwrap();
    assert!(!again.passed);
    assert!(again
        .comparison
        .iter()
        .any(|c| c.metric == "http_req_duration" && c.stat == "p(95)"));
    std::fs::remove_dir_all(dir).unwrap();
}
