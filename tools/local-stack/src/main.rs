//! `local`: the local stack's command line. `local up` runs the whole pipeline; the other
//! commands talk to the running stack found through its state file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use local_stack::client::{Client, Method};
use local_stack::stack::{UpOptions, ADMIN_USER};
use local_stack::state::State;
use serde_json::{json, Value};

/// The whole pipeline on this machine: moto (DynamoDB, SQS, S3), the mock provider, every
/// function under `cargo lambda watch`, and a gateway, SQS pollers and schedules read from
/// template.yaml.
#[derive(Parser, Debug)]
#[command(name = "local")]
struct Cli {
    /// Repository root (default: found from the current directory).
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    /// State and log directory (default: target/local-stack or $LOCAL_STACK_DIR).
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start everything, seed demo-user, run the demo, serve until Ctrl-C.
    Up(UpArgs),
    /// Print a JWT for a user.
    Token {
        #[command(flatten)]
        user: UserArg,
        /// In the admin group.
        #[arg(long)]
        admin: bool,
        /// The `email` claim.
        #[arg(long, value_name = "E")]
        email: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, value_name = "SECS", default_value_t = 12 * 3600)]
        ttl: i64,
    },
    /// Grant credits through the admin route.
    Grant {
        #[command(flatten)]
        user: UserArg,
        /// Credits to grant.
        #[arg(long, value_name = "N")]
        amount: Option<i64>,
        /// The grant's source.
        #[arg(long, value_name = "S", default_value = "local-cli")]
        source: String,
        /// When the credits expire (epoch seconds).
        #[arg(long, value_name = "EPOCH")]
        expires_at: Option<i64>,
    },
    /// Show one of a user's sessions, or list them.
    Session {
        #[command(flatten)]
        user: UserArg,
        /// The session id (default: list them).
        id: Option<String>,
    },
    /// Show a user's credits.
    Balance {
        #[command(flatten)]
        user: UserArg,
    },
    /// List dead letters (the admin route when the template has it, else the DLQ messages).
    Dlq {
        /// Always the DLQ messages themselves.
        #[arg(long)]
        raw: bool,
        /// Keep watching.
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Show the running stack.
    Status,
    /// Stop the running stack.
    Down,
    /// Anything else is refused after start-up checks, as `run` says (exit 1, not clap's 2).
    #[command(external_subcommand)]
    Other(Vec<String>),
}

/// `--user U`: required by the command, checked when it runs (exit 1, like the other checks).
#[derive(clap::Args, Debug)]
struct UserArg {
    /// The user (the JWT's `sub`).
    #[arg(long, short = 'u', value_name = "U")]
    user: Option<String>,
}

impl UserArg {
    fn get(&self) -> Result<String, String> {
        self.user
            .clone()
            .ok_or_else(|| "--user U is required".into())
    }
}

#[derive(clap::Args, Debug)]
struct UpArgs {
    /// Gateway port (default: a free one).
    #[arg(long, value_name = "N", default_value_t = 0, hide_default_value = true)]
    port: u16,
    /// Skip the demo generations.
    #[arg(long)]
    no_demo: bool,
    /// Interval of the template's schedules.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    sweep_every: u64,
    /// Override the queues' VisibilityTimeout (default: template.yaml's).
    #[arg(long, value_name = "SECS")]
    visibility_timeout: Option<u32>,
    /// Do not rebuild and restart functions when sources change.
    #[arg(long)]
    no_reload: bool,
    /// Fixed HS256 key for tokens (default: random per run).
    #[arg(long, value_name = "KEY")]
    dev_key: Option<String>,
    /// Extra environment variable for every function (repeatable).
    #[arg(long, value_name = "KEY=VALUE", value_parser = key_value)]
    env: Vec<(String, String)>,
    /// Instances per function in cargo lambda watch.
    #[arg(long, value_name = "N", default_value_t = 1)]
    concurrency: u32,
    /// Also show moto's access log.
    #[arg(long, short = 'v')]
    verbose: bool,
}

fn key_value(v: &str) -> Result<(String, String), String> {
    let (k, v) = v
        .split_once('=')
        .ok_or_else(|| format!("--env wants KEY=VALUE, got {v:?}"))?;
    Ok((k.to_owned(), v.to_owned()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(command) = cli.command else {
        // A bare `local` shows the help and succeeds, as it always has.
        use clap::CommandFactory;
        let _ = Cli::command().print_help();
        return ExitCode::SUCCESS;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let paths = cli
        .root
        .clone()
        .map_or_else(find_root, Ok)
        .and_then(|root| {
            let root = root.canonicalize().map_err(|e| e.to_string())?;
            let state_dir = state_dir(&root, cli.state_dir.clone())?;
            Ok((root, state_dir))
        });
    match paths.and_then(|(root, state_dir)| runtime.block_on(run(command, root, state_dir))) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("local: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The repository root found from the current directory, else from where this tool was built.
fn find_root() -> Result<PathBuf, String> {
    let cwd = std::env::current_dir().map_err(|e| e.to_string())?;
    local_stack::find_root(&cwd)
        .or_else(|| {
            option_env!("CARGO_MANIFEST_DIR").and_then(|d| local_stack::find_root(Path::new(d)))
        })
        .ok_or_else(|| {
            "cannot find the repository root (a directory with template.yaml and Cargo.toml); use --root".into()
        })
}

/// `--state-dir`, or the default one, made absolute.
fn state_dir(root: &Path, given: Option<PathBuf>) -> Result<PathBuf, String> {
    let state_dir = given.unwrap_or_else(|| local_stack::default_state_dir(root));
    if state_dir.is_relative() {
        Ok(std::env::current_dir()
            .map_err(|e| e.to_string())?
            .join(state_dir))
    } else {
        Ok(state_dir)
    }
}

async fn run(command: Command, root: PathBuf, state_dir: PathBuf) -> Result<u8, String> {
    if let Command::Up(args) = command {
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
    let client = Client::new(&state.gateway_url);
    match command {
        Command::Up(_) => unreachable!("handled above"),
        Command::Token {
            user,
            admin,
            email,
            ttl,
        } => {
            let groups = if admin {
                vec!["admin".to_owned()]
            } else {
                vec![]
            };
            println!(
                "{}",
                state
                    .jwt()
                    .issue(&user.get()?, email.as_deref(), &groups, ttl)
            );
            Ok(0)
        }
        Command::Grant {
            user,
            amount,
            source,
            expires_at,
        } => grant(&state, &client, user.get()?, amount, source, expires_at).await,
        Command::Session { user, id } => {
            let token = state.jwt().issue(&user.get()?, None, &[], 600);
            let path = match id {
                Some(id) => format!("/api/sessions/{id}"),
                None => "/api/sessions".to_owned(),
            };
            let r = client.get(&path, Some(&token)).await?;
            print(&r.body);
            if r.status >= 300 {
                eprintln!("status {}", r.status);
                return Ok(1);
            }
            Ok(0)
        }
        Command::Balance { user } => {
            let token = state.jwt().issue(&user.get()?, None, &[], 600);
            let r = client.get("/api/credits/balance", Some(&token)).await?;
            print(&r.body);
            Ok(0)
        }
        Command::Dlq { raw, follow } => {
            let template = local_stack::template::Template::load(&root.join("template.yaml"))
                .map_err(|e| e.to_string())?;
            let dead_letter_queues: Vec<String> = template
                .queues()
                .into_iter()
                .filter_map(|q| q.dead_letter_target)
                .collect();
            dlq(&state, &client, &dead_letter_queues, raw, follow).await?;
            Ok(0)
        }
        Command::Status => {
            print(&serde_json::to_value(&state).map_err(|e| e.to_string())?);
            match client.get("/health", None).await {
                Ok(r) => eprintln!("GET /health -> {} {}", r.status, r.body),
                Err(e) => eprintln!("GET /health failed: {e}"),
            }
            Ok(0)
        }
        Command::Down => down(&state).await.map(|()| 0),
        Command::Other(words) => Err(format!(
            "unknown command {:?}; see `local --help`",
            words.first().cloned().unwrap_or_default()
        )),
    }
}

fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn admin_token(state: &State) -> String {
    state.jwt().issue(ADMIN_USER, None, &["admin".into()], 3600)
}

async fn grant(
    state: &State,
    client: &Client,
    user: String,
    amount: Option<i64>,
    source: String,
    expires_at: Option<i64>,
) -> Result<u8, String> {
    let amount = amount.ok_or("--amount N is required")?;
    let mut body = json!({"user_id": user, "amount": amount, "source": source});
    if let Some(t) = expires_at {
        body["expires_at"] = json!(t);
    }
    let r = client
        .post("/api/admin/credits/grant", Some(&admin_token(state)), &body)
        .await?;
    print(&json!({"status": r.status, "body": r.body}));
    Ok(if r.status >= 300 { 1 } else { 0 })
}

/// SIGTERM to `local up`, then waits for it to have stopped everything.
async fn down(state: &State) -> Result<(), String> {
    local_stack::procs::signal_pid(state.pid as i32, libc::SIGTERM);
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while local_stack::procs::signal_pid(state.pid as i32, 0) {
        if std::time::Instant::now() > deadline {
            return Err(format!("pid {} did not stop within 40s", state.pid));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("stopped the local stack (pid {})", state.pid);
    Ok(())
}

async fn dlq(
    state: &State,
    client: &Client,
    dead_letter_queues: &[String],
    raw: bool,
    follow: bool,
) -> Result<(), String> {
    let has_route = state
        .routes
        .iter()
        .any(|r| r.starts_with("GET /api/admin/dlq/messages "));
    if has_route && !raw {
        return dlq_route(client, &admin_token(state), follow).await;
    }
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
    let sdk = local_stack::resources::sdk_config(&state.moto_url).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let mut seen = std::collections::HashSet::new();
    loop {
        for (id, url) in &dlqs {
            peek(&sqs, id, url, &mut seen).await?;
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

/// The dead letters through the admin route, as an operator sees them.
async fn dlq_route(client: &Client, admin: &str, follow: bool) -> Result<(), String> {
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
        print(&r.body);
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

/// Prints the messages of one DLQ not `seen` yet, leaving them visible (visibility 0).
async fn peek(
    sqs: &aws_sdk_sqs::Client,
    id: &str,
    url: &str,
    seen: &mut std::collections::HashSet<String>,
) -> Result<(), String> {
    let out = sqs
        .receive_message()
        .queue_url(url)
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
        let body: Value =
            serde_json::from_str(m.body().unwrap_or_default()).unwrap_or_else(|_| json!(m.body()));
        println!(
            "{}",
            json!({"queue": id, "message_id": mid, "body": body, "attributes": attrs})
        );
    }
    Ok(())
}
