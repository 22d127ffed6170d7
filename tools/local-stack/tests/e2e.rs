//! End to end: starts the stack as `make demo` does (`local up`, here with `--no-demo`), drives
//! it over HTTP only, and stops it leaving no process behind.
//!
//! Over HTTP: health; 401 without a token; an admin grant; an image and a video generated and
//! polled to `completed` with presigned URLs that open; the balance; a poisoned request (the
//! mock provider answers 503 to its prompt) retried through SQS until it reaches the DLQ, the
//! deadletter function failing the session and releasing its credits, and an admin retry that
//! completes it once the provider is healed (`POST /__mock/reset`). Every wait is bounded.
//!
//! The first run builds every function in debug (minutes on 2 cores); later runs start in
//! seconds.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use local_stack::client::{Client, Method};
use local_stack::demo::wait_final;
use local_stack::jwt::JwtConfig;
use local_stack::procs;
use serde_json::{json, Value};

const READY_TIMEOUT: Duration = Duration::from_secs(25 * 60);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

struct Stack {
    child: Child,
    run_id: String,
    dir: PathBuf,
    output: Arc<Mutex<Vec<String>>>,
}

impl Stack {
    fn start() -> (Self, Result<Value, String>) {
        let run_id = format!("e2e-{}", ulid::Ulid::new().to_string().to_lowercase());
        let dir = root().join("target").join("local-stack").join(&run_id);
        std::fs::create_dir_all(&dir).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_local"));
        command
            .args(["up", "--no-demo", "--no-reload", "--sweep-every", "1"])
            .args(["--visibility-timeout", "2", "--state-dir"])
            .arg(&dir)
            .current_dir(root())
            .env(procs::RUN_MARKER, &run_id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: prctl only; the stack stops (SIGTERM) if this test process dies.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
                Ok(())
            });
        }
        let mut child = command.spawn().expect("local up starts");
        let output = Arc::new(Mutex::new(Vec::new()));
        let log = dir.join("e2e-output.log");
        let file = Arc::new(Mutex::new(std::fs::File::create(&log).unwrap()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = output.clone();
            let file = file.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = writeln!(file.lock().unwrap(), "{line}");
                    output.lock().unwrap().push(line);
                }
            });
        }
        let mut stack = Self {
            child,
            run_id,
            dir,
            output,
        };
        let state = stack.wait_ready();
        (stack, state)
    }

    fn wait_ready(&mut self) -> Result<Value, String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let path = self.dir.join("state.json");
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("`local up` exited before it was ready ({status})"));
            }
            if let Ok(text) = std::fs::read_to_string(&path) {
                let state: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
                if state["pid"] == self.child.id() {
                    return Ok(state);
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(format!(
            "`local up` was not ready within {}s",
            READY_TIMEOUT.as_secs()
        ))
    }

    fn tail(&self, n: usize) -> String {
        let lines = self.output.lock().unwrap();
        let start = lines.len().saturating_sub(n);
        lines[start..].join("\n")
    }

    /// SIGTERM, as Ctrl-C would; then checks that no process of the run is left.
    fn stop(&mut self) -> Result<(), String> {
        procs::signal_pid(self.child.id() as i32, libc::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut problems = Vec::new();
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            problems.push(format!(
                "`local up` did not stop within {}s of SIGTERM",
                STOP_TIMEOUT.as_secs()
            ));
        }
        // Zombies are reaped by their parents within moments.
        let mut left = procs::marked(&self.run_id);
        let settle = Instant::now() + Duration::from_secs(5);
        while !left.is_empty() && Instant::now() < settle {
            std::thread::sleep(Duration::from_millis(200));
            left = procs::marked(&self.run_id);
        }
        if !left.is_empty() {
            procs::sweep(&self.run_id);
            problems.push(format!("processes left behind: {left:?}"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

/// What the scenario needs beyond the enqueue and api functions.
fn missing_parts(state: &Value) -> Vec<String> {
    let mut missing = Vec::new();
    let functions = state["functions"].as_array().cloned().unwrap_or_default();
    for binary in ["generator", "sweeper", "deadletter"] {
        let present = functions
            .iter()
            .any(|f| f["binary"] == binary && f["present"] == true);
        if !present {
            missing.push(format!(
                "function `{binary}` (functions/{binary} in the workspace and a template.yaml function with Metadata.BuildProperties.Binary: {binary})"
            ));
        }
    }
    let routes: Vec<String> = state["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect();
    for key in [
        "GET /api/admin/dlq/messages",
        "POST /api/admin/dlq/messages/{id}/retry",
    ] {
        if !routes.iter().any(|r| r.starts_with(&format!("{key} -> "))) {
            missing.push(format!("route {key} in template.yaml"));
        }
    }
    missing
}

async fn balance(gw: &Client, token: &str) -> Value {
    let r = gw.get("/api/credits/balance", Some(token)).await.unwrap();
    assert_eq!(r.status, 200, "balance: {}", r.body);
    r.body
}

fn assert_credits(b: &Value, available: i64, held: i64, captured: i64, what: &str) {
    assert_eq!(
        (&b["available"], &b["held"], &b["captured"]),
        (&json!(available), &json!(held), &json!(captured)),
        "credits {what}: {b}"
    );
}

async fn generate(gw: &Client, token: &str, path: &str, body: Value) -> Value {
    let r = gw.post(path, Some(token), &body).await.unwrap();
    assert_eq!(r.status, 202, "POST {path} {body}: {}", r.body);
    assert_eq!(r.body["status"], "queued");
    r.body
}

async fn completed(gw: &Client, token: &str, id: &str, timeout: Duration, hint: &str) -> Value {
    let session = wait_final(gw, token, id, timeout)
        .await
        .unwrap_or_else(|e| panic!("{e}; {hint}"));
    assert_eq!(session["status"], "completed", "{session}; {hint}");
    for output in session["outputs"].as_array().unwrap() {
        let url = output["url"].as_str().unwrap();
        assert!(url.starts_with("http://127.0.0.1:"), "a local URL: {url}");
        let (status, _, bytes) = gw.fetch(url).await.unwrap();
        assert_eq!(status, 200, "presigned URL opens: {url}");
        assert!(bytes > 0, "output has bytes: {url}");
    }
    session
}

async fn scenario(state: Value, _dir: PathBuf) {
    let gw = Client::new(state["gateway_url"].as_str().unwrap());
    let mock = state["mock_url"].as_str().unwrap().to_owned();
    let jwt = JwtConfig {
        key: state["dev_key"].as_str().unwrap().into(),
        issuer: state["issuer"].as_str().unwrap().into(),
        audience: state["audience"].as_str().unwrap().into(),
    };
    let user = format!("e2e-{}", ulid::Ulid::new().to_string().to_lowercase());
    let token = jwt.issue(&user, None, &[], 3600);
    let admin = jwt.issue("e2e-admin", None, &["admin".into()], 3600);

    // Through the gateway, as API Gateway serves it.
    let r = gw.get("/health", None).await.unwrap();
    assert_eq!((r.status, &r.body), (200, &json!({"status": "ok"})));
    let r = gw.get("/api/credits/balance", None).await.unwrap();
    assert_eq!(
        (r.status, &r.body),
        (401, &json!({"message": "Unauthorized"}))
    );
    let r = gw
        .post(
            "/api/admin/credits/grant",
            Some(&token),
            &json!({"user_id": user, "amount": 100, "source": "e2e"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 403, "a user is not an admin: {}", r.body);
    let r = gw
        .post(
            "/api/admin/credits/grant",
            Some(&admin),
            &json!({"user_id": user, "amount": 100, "source": "e2e"}),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 201, "grant: {}", r.body);
    assert_credits(&balance(&gw, &token).await, 100, 0, 0, "after the grant");

    let image = generate(
        &gw,
        &token,
        "/api/images/seedream4/generate",
        json!({"prompt": "e2e: a lighthouse at dawn", "n": 2, "size": "1K"}),
    )
    .await;
    assert_eq!(image["credits_reserved"], 2);

    let missing = missing_parts(&state);
    assert!(
        missing.is_empty(),
        "the end-to-end pipeline is not complete; missing: {}",
        missing.join("; ")
    );

    // Image: generator (SQS batch) → provider → S3 → captured.
    let id = image["session_id"].as_str().unwrap();
    let session = completed(
        &gw,
        &token,
        id,
        Duration::from_secs(90),
        "the generator should complete an image session",
    )
    .await;
    assert_eq!(session["outputs"].as_array().unwrap().len(), 2);
    assert_eq!(session["credits_captured"], 2);
    assert_credits(&balance(&gw, &token).await, 98, 0, 2, "after the image");

    // Poison: the provider is down (every image request answers 503), so the generator reports
    // the record failed on every delivery and SQS moves it to the DLQ after maxReceiveCount.
    let knobs = |patch: Value| {
        let gw = gw.clone();
        let url = format!("{mock}/__mock/knobs");
        async move {
            let r = gw
                .call(Method::POST, &url, None, Some(&patch), &[])
                .await
                .unwrap();
            assert!(
                r.status < 300,
                "mock knobs {patch}: {} {}",
                r.status,
                r.body
            );
        }
    };
    knobs(json!({"failure_rates": {"ServiceUnavailable": 1.0}})).await;
    let poison = generate(
        &gw,
        &token,
        "/api/images/seedream4/generate",
        json!({"prompt": "e2e: poisoned by a provider outage", "n": 1, "size": "1K"}),
    )
    .await;
    let poison_id = poison["session_id"].as_str().unwrap().to_owned();
    let failed = wait_final(&gw, &token, &poison_id, Duration::from_secs(180))
        .await
        .unwrap_or_else(|e| panic!("the poisoned session should be dead-lettered: {e}"));
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["error"]["code"], "dead_lettered", "{failed}");
    assert_credits(
        &balance(&gw, &token).await,
        98,
        0,
        2,
        "after the dead letter (hold released)",
    );
    let r = gw
        .call(
            Method::GET,
            "/api/admin/dlq/messages",
            Some(&admin),
            None,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "list dead letters: {}", r.body);
    let letter = r.body["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["session_id"] == poison_id.as_str())
        .unwrap_or_else(|| panic!("no dead letter for {poison_id}: {}", r.body))
        .clone();
    assert!(letter["receive_count"].as_u64() >= Some(1), "{letter}");

    // Heal the provider, then retry as an admin: the session completes and is charged once.
    knobs(json!({"failure_rates": {"ServiceUnavailable": null}})).await;
    let letter_id = letter["dead_letter_id"].as_str().unwrap();
    let r = gw
        .call(
            Method::POST,
            &format!("/api/admin/dlq/messages/{letter_id}/retry"),
            Some(&admin),
            None,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 202, "retry: {}", r.body);
    assert_eq!(r.body["session_id"], poison_id.as_str());
    let session = completed(
        &gw,
        &token,
        &poison_id,
        Duration::from_secs(90),
        "the retried session should complete",
    )
    .await;
    assert_eq!(session["credits_captured"], 1);
    assert_credits(&balance(&gw, &token).await, 97, 0, 3, "after the retry");

    // Video: generator creates the task, the sweeper (on its timer) settles it.
    let video = generate(
        &gw,
        &token,
        "/api/videos/seedance/generate",
        json!({"prompt": "e2e: a paper boat in the rain", "resolution": "480p", "duration": 3}),
    )
    .await;
    assert_eq!(video["credits_reserved"], 6);
    let session = completed(
        &gw,
        &token,
        video["session_id"].as_str().unwrap(),
        Duration::from_secs(150),
        "the sweeper should settle the rendered video (it runs every second here; if its report \
         says stopped_early, it took cargo lambda watch's deadline header, a relative 600000 ms, \
         for an epoch time)",
    )
    .await;
    // The video and its last frame.
    let types: Vec<&str> = session["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["content_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["video/mp4", "image/png"], "{session}");
    assert_eq!(session["credits_captured"], 6);

    let b = balance(&gw, &token).await;
    assert_credits(&b, 91, 0, 9, "at the end");
    assert_eq!(b["granted"], 100, "conservation: {b}");
}

// A plain test: the stack is spawned from the test's own thread, which lives as long as the
// test (the child's parent-death signal is tied to the spawning thread).
#[test]
fn the_local_stack_runs_the_pipeline_end_to_end_and_stops_cleanly() {
    let (mut stack, ready) = Stack::start();
    let state = match ready {
        Ok(state) => state,
        Err(e) => {
            let stopped = stack.stop();
            panic!(
                "{e} (stop: {stopped:?})\n--- last lines of `local up` ---\n{}",
                stack.tail(80)
            );
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = stack.dir.clone();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(scenario(state, dir))
    }));
    drop(runtime);
    let stopped = stack.stop();
    if let Err(panic) = outcome {
        eprintln!(
            "--- last lines of `local up` (all in {}) ---\n{}",
            relative(&stack.dir),
            stack.tail(120)
        );
        if let Err(e) = &stopped {
            eprintln!("and stopping failed too: {e}");
        }
        std::panic::resume_unwind(panic);
    }
    stopped.expect("the stack stops and leaves no process behind");
    let _ = std::fs::remove_dir_all(&stack.dir);
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}
