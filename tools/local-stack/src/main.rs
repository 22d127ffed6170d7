//! `local`: the local stack's command line. `local up` runs the whole pipeline; the other
//! commands talk to the running stack found through its state file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use local_stack::client::{Client, Method};
use local_stack::stack::{UpOptions, ADMIN_USER};
use local_stack::state::State;
use serde_json::{json, Value};

const USAGE: &str = "\
Usage: local <COMMAND> [OPTIONS]

The whole pipeline on this machine: moto (DynamoDB, SQS, S3), the mock provider, every function
under `cargo lambda watch`, and a gateway, SQS pollers and schedules read from template.yaml.

Commands:
  up                      start everything, seed demo-user, run the demo, serve until Ctrl-C
  token --user U          print a JWT for U (--admin: in the admin group; --email E; --ttl SECS)
  grant --user U --amount N
                          grant credits through the admin route (--source S; --expires-at EPOCH)
  session --user U [ID]   show one of U's sessions, or list them
  balance --user U        show U's credits
  dlq                     list dead letters (admin route when the template has it, else the DLQ
                          messages); --raw: always the DLQ messages; --follow: keep watching
  status                  show the running stack
  down                    stop the running stack

Options of `up`:
  --port N                  gateway port (default: a free one)
  --no-demo                 skip the demo generations
  --sweep-every SECS        interval of the template's schedules (default 10)
  --visibility-timeout SECS override the queues' VisibilityTimeout (default: template.yaml's)
  --no-reload               do not rebuild and restart functions when sources change
  --dev-key KEY             fixed HS256 key for tokens (default: random per run)
  --env KEY=VALUE           extra environment variable for every function (repeatable)
  --concurrency N           instances per function in cargo lambda watch (default 1)
  --verbose                 also show moto's access log
Global options:
  --root DIR                repository root (default: found from the current directory)
  --state-dir DIR           state and log directory (default: target/local-stack or $LOCAL_STACK_DIR)
";

#[derive(Default)]
struct Args {
    command: String,
    root: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    port: u16,
    no_demo: bool,
    sweep_every: u64,
    visibility_timeout: Option<u32>,
    no_reload: bool,
    dev_key: Option<String>,
    env: Vec<(String, String)>,
    concurrency: u32,
    verbose: bool,
    user: Option<String>,
    admin: bool,
    email: Option<String>,
    ttl: i64,
    amount: Option<i64>,
    source: String,
    expires_at: Option<i64>,
    raw: bool,
    follow: bool,
    positional: Vec<String>,
}

fn parse(argv: &[String]) -> Result<Args, String> {
    let mut a = Args {
        sweep_every: 10,
        concurrency: 1,
        ttl: 12 * 3600,
        source: "local-cli".into(),
        ..Default::default()
    };
    let mut it = argv.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        fn num<T: std::str::FromStr>(flag: &str, v: String) -> Result<T, String> {
            v.parse()
                .map_err(|_| format!("{flag}: not a number: {v:?}"))
        }
        match flag {
            "-h" | "--help" | "help" => return Err(String::new()),
            "--root" => a.root = Some(PathBuf::from(value()?)),
            "--state-dir" => a.state_dir = Some(PathBuf::from(value()?)),
            "--port" => a.port = num(flag, value()?)?,
            "--no-demo" => a.no_demo = true,
            "--sweep-every" => a.sweep_every = num(flag, value()?)?,
            "--visibility-timeout" => a.visibility_timeout = Some(num(flag, value()?)?),
            "--no-reload" => a.no_reload = true,
            "--dev-key" => a.dev_key = Some(value()?),
            "--env" => {
                let v = value()?;
                let (k, v) = v
                    .split_once('=')
                    .ok_or_else(|| format!("--env wants KEY=VALUE, got {v:?}"))?;
                a.env.push((k.to_owned(), v.to_owned()));
            }
            "--concurrency" => a.concurrency = num(flag, value()?)?,
            "--verbose" | "-v" => a.verbose = true,
            "--user" | "-u" => a.user = Some(value()?),
            "--admin" => a.admin = true,
            "--email" => a.email = Some(value()?),
            "--ttl" => a.ttl = num(flag, value()?)?,
            "--amount" => a.amount = Some(num(flag, value()?)?),
            "--source" => a.source = value()?,
            "--expires-at" => a.expires_at = Some(num(flag, value()?)?),
            "--raw" => a.raw = true,
            "--follow" | "-f" => a.follow = true,
            f if f.starts_with('-') => return Err(format!("unknown option {f}")),
            _ if a.command.is_empty() => a.command = arg.clone(),
            _ => a.positional.push(arg.clone()),
        }
    }
    if a.command.is_empty() {
        return Err(String::new());
    }
    Ok(a)
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse(&argv) {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("local: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("local: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<u8, String> {
    let root = match &args.root {
        Some(r) => r.clone(),
        None => {
            let cwd = std::env::current_dir().map_err(|e| e.to_string())?;
            local_stack::find_root(&cwd)
                .or_else(|| {
                    option_env!("CARGO_MANIFEST_DIR")
                        .and_then(|d| local_stack::find_root(std::path::Path::new(d)))
                })
                .ok_or("cannot find the repository root (a directory with template.yaml and Cargo.toml); use --root")?
        }
    };
    let root = root.canonicalize().map_err(|e| e.to_string())?;
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| local_stack::default_state_dir(&root));
    let state_dir = if state_dir.is_relative() {
        std::env::current_dir()
            .map_err(|e| e.to_string())?
            .join(state_dir)
    } else {
        state_dir
    };
    if args.command == "up" {
        let code = local_stack::stack::up(UpOptions {
            root,
            state_dir,
            port: args.port,
            demo: !args.no_demo,
            sweep_every: Duration::from_secs(args.sweep_every.max(1)),
            visibility_timeout: args.visibility_timeout,
            reload: !args.no_reload,
            dev_key: args.dev_key,
            env: args.env,
            verbose: args.verbose,
            concurrency: args.concurrency,
        })
        .await;
        return Ok(code.clamp(0, 255) as u8);
    }
    let state = State::load(&state_dir)?;
    let jwt = state.jwt();
    let client = Client::new(&state.gateway_url);
    let user = || args.user.clone().ok_or("--user U is required");
    let admin_token = || jwt.issue(ADMIN_USER, None, &["admin".into()], 3600);
    let print = |v: &Value| println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    match args.command.as_str() {
        "token" => {
            let groups = if args.admin {
                vec!["admin".to_owned()]
            } else {
                vec![]
            };
            println!(
                "{}",
                jwt.issue(&user()?, args.email.as_deref(), &groups, args.ttl)
            );
        }
        "grant" => {
            let amount = args.amount.ok_or("--amount N is required")?;
            let mut body = json!({"user_id": user()?, "amount": amount, "source": args.source});
            if let Some(t) = args.expires_at {
                body["expires_at"] = json!(t);
            }
            let r = client
                .post("/api/admin/credits/grant", Some(&admin_token()), &body)
                .await?;
            print(&json!({"status": r.status, "body": r.body}));
            if r.status >= 300 {
                return Ok(1);
            }
        }
        "session" => {
            let token = jwt.issue(&user()?, None, &[], 600);
            let path = match args.positional.first() {
                Some(id) => format!("/api/sessions/{id}"),
                None => "/api/sessions".to_owned(),
            };
            let r = client.get(&path, Some(&token)).await?;
            print(&r.body);
            if r.status >= 300 {
                eprintln!("status {}", r.status);
                return Ok(1);
            }
        }
        "balance" => {
            let token = jwt.issue(&user()?, None, &[], 600);
            let r = client.get("/api/credits/balance", Some(&token)).await?;
            print(&r.body);
        }
        "dlq" => {
            let template = local_stack::template::Template::load(&root.join("template.yaml"))
                .map_err(|e| e.to_string())?;
            let dead_letter_queues: Vec<String> = template
                .queues()
                .into_iter()
                .filter_map(|q| q.dead_letter_target)
                .collect();
            dlq(
                &state,
                &client,
                &admin_token(),
                &dead_letter_queues,
                args.raw,
                args.follow,
            )
            .await?
        }
        "status" => {
            print(&serde_json::to_value(&state).map_err(|e| e.to_string())?);
            let health = client.get("/health", None).await;
            match health {
                Ok(r) => eprintln!("GET /health -> {} {}", r.status, r.body),
                Err(e) => eprintln!("GET /health failed: {e}"),
            }
        }
        "down" => {
            local_stack::procs::signal_pid(state.pid as i32, libc::SIGTERM);
            let deadline = std::time::Instant::now() + Duration::from_secs(40);
            while local_stack::procs::signal_pid(state.pid as i32, 0) {
                if std::time::Instant::now() > deadline {
                    return Err(format!("pid {} did not stop within 40s", state.pid));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            eprintln!("stopped the local stack (pid {})", state.pid);
        }
        other => return Err(format!("unknown command {other:?}; see `local --help`")),
    }
    Ok(0)
}

async fn dlq(
    state: &State,
    client: &Client,
    admin: &str,
    dead_letter_queues: &[String],
    raw: bool,
    follow: bool,
) -> Result<(), String> {
    let has_route = state
        .routes
        .iter()
        .any(|r| r.starts_with("GET /api/admin/dlq/messages "));
    if has_route && !raw {
        loop {
            let r = client
                .call(
                    Method::GET,
                    "/api/admin/dlq/messages",
                    Some(admin),
                    None,
                    &[],
                )
                .await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&r.body).unwrap_or_default()
            );
            if !follow {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(&state.moto_url)
        .region(aws_config::Region::new(local_stack::template::REGION))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "local-stack",
        ))
        .load()
        .await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let dlqs: Vec<(&String, &String)> = state
        .resources
        .queues
        .iter()
        .filter(|(id, _)| dead_letter_queues.contains(id))
        .collect();
    if dlqs.is_empty() {
        return Err("no dead-letter queue in the state file".into());
    }
    if !has_route {
        eprintln!("(template.yaml has no GET /api/admin/dlq/messages yet: peeking at the queue)");
    }
    let mut seen = std::collections::HashSet::new();
    loop {
        for (id, url) in &dlqs {
            let out = sqs
                .receive_message()
                .queue_url(*url)
                .max_number_of_messages(10)
                .visibility_timeout(0)
                .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
                .send()
                .await
                .map_err(|e| format!("{}", aws_sdk_sqs::error::DisplayErrorContext(e)))?;
            for m in out.messages.unwrap_or_default() {
                let mid = m.message_id().unwrap_or_default().to_owned();
                if !seen.insert(mid.clone()) {
                    continue;
                }
                let attrs: serde_json::Map<String, Value> = m
                    .attributes()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.as_str().to_owned(), json!(v)))
                    .collect();
                let body: Value = serde_json::from_str(m.body().unwrap_or_default())
                    .unwrap_or_else(|_| json!(m.body()));
                println!(
                    "{}",
                    json!({"queue": id, "message_id": mid, "body": body, "attributes": attrs})
                );
            }
        }
        if !follow {
            if seen.is_empty() {
                eprintln!(
                    "(no message on {})",
                    dlqs.iter()
                        .map(|(id, _)| id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
