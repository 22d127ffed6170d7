//! `local up`: the whole pipeline on this machine. Sets up the venv, starts moto, creates the
//! template's resources, starts the mock provider and `cargo lambda watch`, then runs the
//! gateway, the SQS pollers and the schedules, seeds the demo user, runs the demo, and serves
//! until Ctrl-C / SIGTERM, when it stops every process it started.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::process::Command;
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinHandle;

use crate::build;
use crate::client::Client;
use crate::demo::{DEMO_CREDITS, DEMO_USER};
use crate::gateway::{self, Gateway};
use crate::invoke::Invoker;
use crate::jwt::JwtConfig;
use crate::log::Logger;
use crate::poller::Poller;
use crate::procs::{self, Proc, Stop};
use crate::resources::{self, Created};
use crate::schedule;
use crate::state::{FunctionState, State};
use crate::template::{Function, Resolver, Template};
use crate::wiring::{cors, function_environment, jwt_config, warm_up_event, MOCK_KEY};

/// The admin identity the CLI uses for admin routes.
pub const ADMIN_USER: &str = "local-admin";
/// How long the first invocation of a function may take (it is built already: this is start-up).
pub const WARM_UP_TIMEOUT: Duration = Duration::from_secs(180);
/// Added to a function's timeout for local invocations: `cargo lambda watch` may be rebuilding.
pub const BUILD_SLACK: Duration = Duration::from_secs(60);

/// Options of `local up`.
#[derive(Clone, Debug)]
pub struct UpOptions {
    /// The repository root.
    pub root: PathBuf,
    /// Where the state and log files go.
    pub state_dir: PathBuf,
    /// Gateway port (0: a free one).
    pub port: u16,
    /// Run the demo once ready.
    pub demo: bool,
    /// Interval of the schedules.
    pub sweep_every: Duration,
    /// Overrides the queues' visibility timeout (seconds).
    pub visibility_timeout: Option<u32>,
    /// Let `cargo lambda watch` rebuild and restart functions when sources change.
    pub reload: bool,
    /// A fixed HS256 dev key (random otherwise).
    pub dev_key: Option<String>,
    /// Extra environment variables for the functions.
    pub env: Vec<(String, String)>,
    /// Show every line (moto's access log too).
    pub verbose: bool,
    /// Instances per function in `cargo lambda watch`.
    pub concurrency: u32,
}

struct Running {
    procs: Vec<Proc>,
    tasks: Vec<JoinHandle<()>>,
}

/// What `start` brings up.
struct Ready {
    state: State,
    client: Client,
    jwt: JwtConfig,
    template: Template,
    present: Vec<Function>,
}

/// Runs `local up`; returns the process exit code.
pub async fn up(options: UpOptions) -> i32 {
    let run_id = std::env::var(procs::RUN_MARKER)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| ulid::Ulid::new().to_string().to_lowercase());
    let log_path = options.state_dir.join("local-stack.log");
    let log = match Logger::new(Some(&log_path)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot write {}: {e}", log_path.display());
            return 1;
        }
    };
    log.line(
        "local",
        &format!(
            "starting the local stack (log: {})",
            relative(&options.root, &log_path)
        ),
    );
    if let Ok(other) = State::load(&options.state_dir) {
        log.line(
            "local",
            &format!(
                "another local stack (pid {}) is serving {}; this one takes over {} (stop the other with `local down` first to avoid confusion)",
                other.pid,
                other.gateway_url,
                relative(&options.root, &State::path(&options.state_dir))
            ),
        );
    }
    let started = Instant::now();
    let running = Arc::new(Mutex::new(Running {
        procs: Vec::new(),
        tasks: Vec::new(),
    }));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut signals = Box::pin(signal());
    let launch = Launch {
        options: &options,
        run_id: &run_id,
        log: &log,
        running: &running,
        shutdown: shutdown_rx,
    };

    let mut code = 0;
    tokio::select! {
        ready = start(&launch, started) => {
            match ready {
                Err(e) => {
                    log.end_progress();
                    log.line("local", &format!("could not start: {e}"));
                    code = 1;
                }
                Ok(ready) => {
                    let serve = async {
                        if options.demo {
                            crate::demo::run(&ready.client, &ready.jwt, &ready.template, &ready.present, &log).await;
                            log.line("local", "demo done; still serving (Ctrl-C stops everything)");
                        }
                        watch_children(&running, &log).await
                    };
                    tokio::select! {
                        name = &mut signals => log.line("local", &format!("{name}: stopping")),
                        failed = serve => {
                            log.line("local", &format!("{failed}: stopping"));
                            code = 1;
                        }
                    }
                    State::remove(&options.state_dir, ready.state.pid);
                }
            }
        }
        name = &mut signals => {
            log.end_progress();
            log.line("local", &format!("{name} during start-up: stopping"));
            code = 130;
        }
    }
    let _ = shutdown_tx.send(true);
    stop(&running, &run_id, &log).await;
    code
}

async fn signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    tokio::select! {
        _ = int.recv() => "interrupted (SIGINT)",
        _ = term.recv() => "terminated (SIGTERM)",
        _ = hup.recv() => "hung up (SIGHUP)",
    }
}

/// Returns when a process of the stack exits on its own.
async fn watch_children(running: &Arc<Mutex<Running>>, log: &Logger) -> String {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut r = running.lock().await;
        for p in r.procs.iter_mut() {
            if let Some(status) = p.exited() {
                let what = format!("{} exited unexpectedly ({status})", p.name);
                log.line(p.name, &what);
                return what;
            }
        }
    }
}

async fn stop(running: &Arc<Mutex<Running>>, run_id: &str, log: &Logger) {
    let started = Instant::now();
    let mut r = running.lock().await;
    for task in r.tasks.drain(..) {
        task.abort();
    }
    // The reverse order of start: cargo lambda (and its functions), the mock, moto.
    while let Some(mut p) = r.procs.pop() {
        p.stop().await;
    }
    let left = procs::sweep(run_id);
    for (pid, cmd) in &left {
        log.line("local", &format!("killed leftover process {pid}: {cmd}"));
    }
    log.line(
        "local",
        &format!(
            "stopped every process in {:.1} s",
            started.elapsed().as_secs_f64()
        ),
    );
}

fn relative(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Waits for a line starting with `prefix` on a child's stdout.
async fn ready_line(
    rx: &mut mpsc::UnboundedReceiver<String>,
    prefix: &str,
    what: &str,
    timeout: Duration,
) -> Result<String, String> {
    let wait = async {
        while let Some(line) = rx.recv().await {
            if let Some(rest) = line.trim().strip_prefix(prefix) {
                return Ok(rest.trim().to_owned());
            }
        }
        Err(format!(
            "{what} exited before it was ready (see its lines above)"
        ))
    };
    tokio::time::timeout(timeout, wait)
        .await
        .map_err(|_| format!("{what} was not ready within {}s", timeout.as_secs()))?
}

/// moto's lines: werkzeug's access log (`127.0.0.1 - - [date] "POST / HTTP/1.1" 200 -`) goes
/// to the log file only.
pub fn moto_line(line: &str) -> Option<String> {
    (!(line.contains(" - - [") && line.contains(" HTTP/1."))).then(|| line.to_owned())
}

fn show_all(line: &str) -> Option<String> {
    Some(line.to_owned())
}

/// `cargo lambda watch`'s lines: the functions' JSON logs rendered compactly, cargo's build
/// lines, and the watcher's warnings and errors; its chatter goes to the log file only.
pub fn lambda_line(line: &str) -> Option<String> {
    let trimmed = line.trim_start();
    if trimmed.starts_with('{') {
        let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(trimmed)
        else {
            return Some(line.to_owned());
        };
        if map.contains_key("_aws") {
            return None; // an embedded-metrics record
        }
        let message = map
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or_default();
        if message.contains("AWS_LAMBDA_MAX_CONCURRENCY") {
            return None;
        }
        let Some(level) = map.get("level").and_then(|l| l.as_str()) else {
            return Some(line.to_owned());
        };
        let mut out = format!("{level} {message}");
        let text = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        for (k, v) in &map {
            match k.as_str() {
                "timestamp" | "level" | "message" | "target" => {}
                "span" => {
                    for (sk, sv) in v.as_object().into_iter().flatten() {
                        if !matches!(sk.as_str(), "name" | "xrayTraceId") {
                            out.push_str(&format!(" {sk}={}", text(sv)));
                        }
                    }
                }
                _ => out.push_str(&format!(" {k}={}", text(v))),
            }
        }
        return Some(out);
    }
    if trimmed.starts_with("Blocking waiting for file lock") {
        return None;
    }
    if let Some(rest) = trimmed.strip_prefix("INFO ") {
        if rest.contains("outcome=Both(Stop, Start)") {
            return Some("sources changed: rebuilding and restarting the functions".into());
        }
        return None;
    }
    if let Some(rest) = trimmed.strip_prefix("ERROR ") {
        // Noise of a restart, which cargo lambda itself says can be ignored.
        if rest.contains("waiting on process group") || rest.contains("code=ForceStop") {
            return None;
        }
    }
    if trimmed.starts_with("DEBUG ") || trimmed.starts_with("TRACE ") {
        return None;
    }
    Some(line.chars().take(400).collect())
}

async fn venv(root: &Path, log: &Logger) -> Result<PathBuf, String> {
    let out = Command::new(root.join("scripts/venv.sh"))
        .current_dir(root)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .map_err(|e| format!("cannot run scripts/venv.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!("scripts/venv.sh failed ({})", out.status));
    }
    let bin = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    log.file_only("venv", &format!("venv ready: {bin}"));
    Ok(PathBuf::from(bin))
}

async fn free_port() -> Result<u16, String> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("no free port: {e}"))?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

async fn wait_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// What every start-up step shares: the options, the run, the log, and the processes and
/// tasks to stop at the end.
struct Launch<'a> {
    options: &'a UpOptions,
    run_id: &'a str,
    log: &'a Logger,
    running: &'a Arc<Mutex<Running>>,
    shutdown: watch::Receiver<bool>,
}

/// The local endpoints of a started stack.
struct Endpoints {
    gateway: String,
    lambda: String,
    moto: String,
    mock: String,
}

async fn start(launch: &Launch<'_>, started: Instant) -> Result<Ready, String> {
    let (options, log) = (launch.options, launch.log);
    let root = &options.root;
    let template = Template::load(&root.join("template.yaml")).map_err(|e| e.to_string())?;
    let (functions, without_binary) = template.functions();
    for id in &without_binary {
        log.line(
            "local",
            &format!("{id}: no Metadata.BuildProperties.Binary in template.yaml; not run locally"),
        );
    }
    for e in template.unsupported_events() {
        log.line("local", &format!("event not played locally: {e}"));
    }
    let workspace = build::workspace(root).await?;
    let (present, missing) = match_binaries(&functions, &workspace, log);
    let (venv_bin, moto_url) = launch.moto_while_building(&present).await?;
    let sdk = resources::sdk_config(&moto_url).await;
    let (created, resolver) = launch.create_resources(&template, &sdk).await?;
    let mock_url = launch.start_mock(&workspace).await?;
    let provider_api = format!("{mock_url}/api/v3");
    let (env, notes) = function_environment(
        &functions,
        &template.queues(),
        &resolver,
        &created,
        &moto_url,
        &provider_api,
        &options.env,
    );
    for note in notes {
        log.line("local", &note);
    }
    let lambda_url = launch.start_functions(&venv_bin, &env).await?;
    let invoker = Invoker::new(&lambda_url);
    let dev_key = options
        .dev_key
        .clone()
        .unwrap_or_else(crate::jwt::random_key);
    let jwt = jwt_config(&template, &resolver, dev_key);
    let timeouts = function_timeouts(&functions);
    let gateway = Gateway {
        routes: template.routes(),
        jwt: jwt.clone(),
        cors: cors(&template, &resolver),
        timeouts: timeouts.clone(),
        default_timeout: Duration::from_secs(30) + BUILD_SLACK,
        invoker: invoker.clone(),
        log: Some(log.clone()),
    };
    let routes = gateway.routes.clone();
    let gateway_url = launch.start_gateway(gateway).await?;

    // The first invocation of each function starts `cargo run --bin <name>`.
    warm_up(&template, &present, &invoker, log).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let sources = (&workspace, &invoker, &timeouts);
    launch
        .start_pollers(&template, sources, &created, &sqs)
        .await;
    launch.start_schedules(&template, sources).await;
    let client = Client::new(&gateway_url);
    seed_demo_user(&client, &jwt, log).await;

    let endpoints = Endpoints {
        gateway: gateway_url.clone(),
        lambda: lambda_url,
        moto: moto_url,
        mock: mock_url,
    };
    let state = launch.save_state(endpoints, &jwt, &created, &functions, &workspace, &routes)?;
    let token = jwt.issue(DEMO_USER, None, &[], 12 * 3600);
    log.plain(&banner(
        &state,
        &token,
        started.elapsed(),
        &relative(root, &options.state_dir),
        &missing,
    ));
    log.line("local", &format!("local stack ready at {gateway_url}"));
    Ok(Ready {
        state,
        client,
        jwt,
        template,
        present,
    })
}

/// Splits the template's functions into those the workspace builds and those it lacks, and
/// says which workspace binaries no event reaches.
fn match_binaries(
    functions: &[Function],
    workspace: &build::Workspace,
    log: &Logger,
) -> (Vec<Function>, Vec<Function>) {
    let (present, missing): (Vec<Function>, Vec<Function>) = functions
        .iter()
        .cloned()
        .partition(|f| workspace.binaries.contains(&f.binary));
    for f in &missing {
        log.line(
            "local",
            &format!(
                "MISSING FUNCTION: template.yaml's {} wants binary `{}`, which is not in the workspace (no functions/{} in Cargo.toml's members?): its routes answer 500 and its event sources are not polled",
                f.logical_id, f.binary, f.binary
            ),
        );
    }
    let template_binaries: Vec<&String> = functions.iter().map(|f| &f.binary).collect();
    for bin in &workspace.function_binaries {
        if !template_binaries.contains(&bin) {
            log.line(
                "local",
                &format!("binary `{bin}` is in the workspace but not in template.yaml: no events reach it"),
            );
        }
    }
    (present, missing)
}

/// Each function's local invocation timeout: its template timeout plus the build slack.
fn function_timeouts(functions: &[Function]) -> HashMap<String, Duration> {
    functions
        .iter()
        .map(|f| {
            (
                f.binary.clone(),
                Duration::from_secs(f.timeout_secs) + BUILD_SLACK,
            )
        })
        .collect()
}

/// The workspace, the invoker and the timeouts: what an event source needs to deliver.
type Delivery<'a> = (
    &'a build::Workspace,
    &'a Invoker,
    &'a HashMap<String, Duration>,
);

impl Launch<'_> {
    /// Spawns a process of the stack; it is stopped with the others at the end.
    async fn spawn(
        &self,
        command: Command,
        name: &'static str,
        stop: Stop,
        show: procs::LineFilter,
    ) -> std::io::Result<mpsc::UnboundedReceiver<String>> {
        let (proc, rx) = procs::spawn(command, name, self.run_id, stop, self.log, show)?;
        self.running.lock().await.procs.push(proc);
        Ok(rx)
    }

    /// Keeps a task of the stack; it is aborted at the end.
    async fn keep(&self, task: JoinHandle<()>) {
        self.running.lock().await.tasks.push(task);
    }

    /// The venv and moto, started while the binaries build (moto needs the venv, not them);
    /// returns the venv's bin directory and moto's URL.
    async fn moto_while_building(&self, present: &[Function]) -> Result<(PathBuf, String), String> {
        let root = &self.options.root;
        let mut to_build = vec!["mock-provider".to_owned()];
        to_build.extend(present.iter().map(|f| f.binary.clone()));
        to_build.dedup();
        let moto = async {
            let bin = venv(root, self.log).await?;
            let mut cmd = Command::new(bin.join("python"));
            cmd.args(["scripts/moto_server.py", "--port", "0"])
                .current_dir(root)
                .env("PYTHONUNBUFFERED", "1");
            let show: procs::LineFilter = if self.options.verbose {
                show_all
            } else {
                moto_line
            };
            let mut rx = self
                .spawn(cmd, "moto", Stop::Kill, show)
                .await
                .map_err(|e| format!("cannot start moto: {e}"))?;
            let url = ready_line(
                &mut rx,
                "moto listening on",
                "moto",
                Duration::from_secs(90),
            )
            .await?;
            Ok::<(PathBuf, String), String>((bin, url))
        };
        let (moto, built) = tokio::join!(moto, build::build(root, &to_build, self.log));
        built?;
        moto
    }

    /// The tables, queues and buckets, as template.yaml declares them.
    async fn create_resources(
        &self,
        template: &Template,
        sdk: &aws_config::SdkConfig,
    ) -> Result<(Created, Resolver), String> {
        let visibility_timeout = self.options.visibility_timeout;
        let (created, resolver) = resources::create(
            template,
            sdk,
            &resources::Options {
                visibility_timeout,
                ..Default::default()
            },
        )
        .await?;
        self.log.line(
            "moto",
            &format!(
                "created tables {:?}, queues {:?}, buckets {:?}{}",
                created.tables.values().collect::<Vec<_>>(),
                queue_names(&created),
                created.buckets.values().collect::<Vec<_>>(),
                visibility_timeout
                    .map(|v| format!(" (queue visibility timeout {v}s)"))
                    .unwrap_or_default()
            ),
        );
        self.log.file_only(
            "moto",
            &format!("not emulated: {}", created.not_emulated.join(", ")),
        );
        Ok((created, resolver))
    }

    /// The mock provider; returns its URL.
    async fn start_mock(&self, workspace: &build::Workspace) -> Result<String, String> {
        let mut cmd = Command::new(workspace.target_dir.join("debug/mock-provider"));
        cmd.args(["--addr", "127.0.0.1:0", "--api-key", MOCK_KEY])
            .current_dir(&self.options.root);
        let mut rx = self
            .spawn(cmd, "mock", Stop::Term(Duration::from_secs(3)), show_all)
            .await
            .map_err(|e| format!("cannot start the mock provider: {e}"))?;
        let mock_url = ready_line(
            &mut rx,
            "listening on",
            "the mock provider",
            Duration::from_secs(20),
        )
        .await?;
        self.log.line(
            "mock",
            &format!("ready at {mock_url}/api/v3 (key {MOCK_KEY})"),
        );
        Ok(mock_url)
    }

    /// Every function under `cargo lambda watch`, bound to 127.0.0.1; returns the URL of its
    /// Invoke API.
    async fn start_functions(
        &self,
        venv_bin: &Path,
        env: &BTreeMap<String, String>,
    ) -> Result<String, String> {
        let (options, root) = (self.options, &self.options.root);
        // The same environment, for a `cargo lambda watch --env-file` of one's own.
        let env_file: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        let _ = std::fs::create_dir_all(&options.state_dir);
        let _ = std::fs::write(options.state_dir.join("lambda.env"), env_file);
        let lambda_port = free_port().await?;
        let mut cmd = Command::new(venv_bin.join("cargo-lambda"));
        cmd.args(["lambda", "watch", "-A", "127.0.0.1", "-P"])
            .arg(lambda_port.to_string())
            .args(["--color", "never", "--concurrency"])
            .arg(options.concurrency.max(1).to_string());
        if !options.reload {
            cmd.arg("--ignore-changes");
        }
        cmd.current_dir(root)
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN")
            .env("CARGO_TERM_COLOR", "never")
            .env(
                "CARGO_LAMBDA_IGNORE_FILE",
                root.join("tools/local-stack/watch.ignore"),
            )
            .envs(env);
        let show: procs::LineFilter = if options.verbose {
            show_all
        } else {
            lambda_line
        };
        self.spawn(cmd, "lambda", Stop::Term(Duration::from_secs(8)), show)
            .await
            .map_err(|e| format!("cannot start cargo lambda watch: {e}"))?;
        let lambda_url = format!("http://127.0.0.1:{lambda_port}");
        if !wait_port(lambda_port, Duration::from_secs(60)).await {
            return Err("cargo lambda watch did not open its port within 60s".into());
        }
        self.log.line(
            "lambda",
            &format!("cargo lambda watch serves the Invoke API at {lambda_url}"),
        );
        Ok(lambda_url)
    }

    /// The gateway, serving until shutdown; returns its URL.
    async fn start_gateway(&self, gateway: Gateway) -> Result<String, String> {
        let port = self.options.port;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
        let gateway_url = format!(
            "http://127.0.0.1:{}",
            listener.local_addr().map_err(|e| e.to_string())?.port()
        );
        let routes = gateway.routes.len();
        let mut stop = self.shutdown.clone();
        let task = tokio::spawn(async move {
            let _ = gateway::serve(listener, Arc::new(gateway), async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        });
        self.keep(task).await;
        self.log.line(
            "gateway",
            &format!("serving {routes} routes of template.yaml at {gateway_url}"),
        );
        Ok(gateway_url)
    }

    /// A poller per SQS event source mapping of the template.
    async fn start_pollers(
        &self,
        template: &Template,
        (workspace, invoker, timeouts): Delivery<'_>,
        created: &Created,
        sqs: &aws_sdk_sqs::Client,
    ) {
        let log = self.log;
        for source in template.sqs_sources() {
            let name = format!("{} -> {}", source.queue, source.binary);
            if !source.enabled {
                log.line("poller", &format!("{name}: disabled in template.yaml"));
                continue;
            }
            if !workspace.binaries.contains(&source.binary) {
                log.line(
                    "poller",
                    &format!(
                        "{name}: NOT POLLED: function `{}` is missing; messages stay on the queue",
                        source.binary
                    ),
                );
                continue;
            }
            let (Some(url), Some(arn)) = (
                created.queues.get(&source.queue),
                created.queue_arns.get(&source.queue),
            ) else {
                log.line(
                    "poller",
                    &format!(
                        "{name}: queue {} is not a resource of the template",
                        source.queue
                    ),
                );
                continue;
            };
            log.line(
                "poller",
                &format!(
                    "{name}: batches of up to {}{}",
                    source.batch_size,
                    if source.report_batch_item_failures {
                        ", ReportBatchItemFailures"
                    } else {
                        ""
                    }
                ),
            );
            let poller = Poller {
                timeout: timeouts.get(&source.binary).copied().unwrap_or(BUILD_SLACK),
                source,
                queue_url: url.clone(),
                queue_arn: arn.clone(),
                sqs: sqs.clone(),
                invoker: invoker.clone(),
                wait_secs: 10,
                log: log.clone(),
            };
            self.keep(tokio::spawn(poller.run(self.shutdown.clone())))
                .await;
        }
    }

    /// The template's schedules, every `--sweep-every` locally.
    async fn start_schedules(
        &self,
        template: &Template,
        (workspace, invoker, timeouts): Delivery<'_>,
    ) {
        let (log, every) = (self.log, self.options.sweep_every);
        for s in template.schedules() {
            let name = format!("{} ({}, {})", s.binary, s.event, s.expression);
            if !s.enabled {
                log.line("schedule", &format!("{name}: disabled in template.yaml"));
                continue;
            }
            if !workspace.binaries.contains(&s.binary) {
                log.line(
                    "schedule",
                    &format!("{name}: NOT SCHEDULED: function `{}` is missing", s.binary),
                );
                continue;
            }
            log.line(
                "schedule",
                &format!("{name}: every {}s locally", every.as_secs()),
            );
            let timeout = timeouts.get(&s.binary).copied().unwrap_or(BUILD_SLACK);
            let task = tokio::spawn(schedule::run(
                s,
                invoker.clone(),
                every,
                timeout,
                log.clone(),
                self.shutdown.clone(),
            ));
            self.keep(task).await;
        }
    }

    /// Writes the state file through which the other commands find this stack.
    fn save_state(
        &self,
        endpoints: Endpoints,
        jwt: &JwtConfig,
        created: &Created,
        functions: &[Function],
        workspace: &build::Workspace,
        routes: &[crate::template::Route],
    ) -> Result<State, String> {
        let state_dir = &self.options.state_dir;
        let state = State {
            pid: std::process::id(),
            run_id: self.run_id.to_owned(),
            gateway_url: endpoints.gateway,
            lambda_url: endpoints.lambda,
            moto_url: endpoints.moto,
            mock_url: endpoints.mock,
            dev_key: jwt.key.clone(),
            issuer: jwt.issuer.clone(),
            audience: jwt.audience.clone(),
            resources: created.clone(),
            functions: functions
                .iter()
                .map(|f| FunctionState {
                    logical_id: f.logical_id.clone(),
                    binary: f.binary.clone(),
                    present: workspace.binaries.contains(&f.binary),
                })
                .collect(),
            routes: routes
                .iter()
                .map(|r| format!("{} -> {}", r.key(), r.binary))
                .collect(),
            log_file: relative(&self.options.root, &state_dir.join("local-stack.log")),
            started_at: crate::jwt::now_secs(),
        };
        state
            .save(state_dir)
            .map_err(|e| format!("cannot write the state file: {e}"))?;
        Ok(state)
    }
}

/// The demo user's credits, through the admin route as an operator would grant them.
async fn seed_demo_user(client: &Client, jwt: &JwtConfig, log: &Logger) {
    let admin = jwt.issue(ADMIN_USER, None, &["admin".into()], 12 * 3600);
    match client
        .call(
            crate::client::Method::POST,
            "/api/admin/credits/grant",
            Some(&admin),
            Some(&json!({"user_id": DEMO_USER, "amount": DEMO_CREDITS, "source": "local-demo"})),
            &[("idempotency-key", "local-demo-seed")],
        )
        .await
    {
        Ok(r) if r.status < 300 => log.line(
            "local",
            &format!(
                "seeded {DEMO_USER} with {DEMO_CREDITS} credits (available: {})",
                r.body["available"]
            ),
        ),
        Ok(r) => log.line(
            "local",
            &format!("could not seed {DEMO_USER}: {} {}", r.status, r.body),
        ),
        Err(e) => log.line("local", &format!("could not seed {DEMO_USER}: {e}")),
    }
}

/// The queues' names (the last segment of their URLs).
fn queue_names(created: &Created) -> Vec<&str> {
    created
        .queues
        .values()
        .map(|u| u.rsplit('/').next().unwrap_or_default())
        .collect()
}

async fn warm_up(template: &Template, present: &[Function], invoker: &Invoker, log: &Logger) {
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for f in present {
        let Some(event) = warm_up_event(template, &f.binary) else {
            continue;
        };
        let invoker = invoker.clone();
        let binary = f.binary.clone();
        set.spawn(async move {
            let t = Instant::now();
            let r = invoker.invoke(&binary, &event, WARM_UP_TIMEOUT).await;
            (binary, t.elapsed(), r)
        });
    }
    let total = set.len();
    let mut done = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            next = set.join_next() => {
                let Some(Ok((binary, took, result))) = next else { break };
                match result {
                    Ok(_) => done.push(format!("{binary} {:.1}s", took.as_secs_f64())),
                    Err(e) => {
                        log.end_progress();
                        log.line("lambda", &format!("{binary} FAILED TO START: {e}"));
                        done.push(format!("{binary} failed"));
                    }
                }
            }
            _ = ticker.tick() => log.progress("lambda", &format!(
                "starting functions ({}/{total} up) [{}s]",
                done.len(),
                started.elapsed().as_secs()
            )),
        }
    }
    log.end_progress();
    log.line(
        "lambda",
        &format!("functions answered: {}", done.join(", ")),
    );
}

fn banner(
    state: &State,
    token: &str,
    took: Duration,
    state_dir: &str,
    missing: &[Function],
) -> String {
    let api = &state.gateway_url;
    let queues = queue_names(&state.resources);
    let mut out = format!(
        "
================================================================================
 Local stack ready in {:.1} s
   gateway  {api}   routes of template.yaml, JWT authorizer (HS256 dev key)
   lambda   {}   cargo lambda watch (Lambda Invoke API)
   moto     {}   tables {:?}, queues {:?}, buckets {:?}
   mock     {}/api/v3   provider (key {MOCK_KEY}; knobs: {}/__mock/knobs)
   state    {state_dir}/state.json   log  {}
",
        took.as_secs_f64(),
        state.lambda_url,
        state.moto_url,
        state.resources.tables.values().collect::<Vec<_>>(),
        queues,
        state.resources.buckets.values().collect::<Vec<_>>(),
        state.mock_url,
        state.mock_url,
        state.log_file,
    );
    for f in missing {
        out.push_str(&format!(
            "   MISSING  function `{}` ({}): not in the workspace\n",
            f.binary, f.logical_id
        ));
    }
    out.push_str(&format!(
        r#"
 {DEMO_USER} has {DEMO_CREDITS} credits. Paste into a shell:

   export API={api}
   export TOKEN={token}
   curl -s $API/health
   curl -s -H "Authorization: Bearer $TOKEN" $API/api/credits/balance
   curl -s -X POST -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' \
        -d '{{"prompt":"a red fox in the snow","n":2}}' $API/api/images/seedream4/generate
   curl -s -H "Authorization: Bearer $TOKEN" $API/api/sessions/<session_id>

 Other users and admins: make token U=alice [ADMIN=1]   (or: cargo run -q -p local-stack --bin local -- token --user alice --admin)
 Ctrl-C stops everything.
================================================================================
"#
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_logs_are_rendered_compactly_and_chatter_is_filed() {
        let line = r#"{"timestamp":"2026-01-01T00:00:00Z","level":"INFO","message":"responded","status":202,"span":{"route":"POST /x","name":"request"}}"#;
        assert_eq!(
            lambda_line(line).as_deref(),
            Some("INFO responded route=POST /x status=202")
        );
        assert_eq!(lambda_line(r#"{"_aws":{},"Component":"sweeper"}"#), None);
        assert_eq!(
            lambda_line(" INFO spawning command command=Command { std: ... }"),
            None
        );
        assert_eq!(
            lambda_line("    Blocking waiting for file lock on package cache"),
            None
        );
        assert!(lambda_line("   Compiling shared v0.1.0").is_some());
        assert!(lambda_line(" ERROR command exited code=1").is_some());
        assert_eq!(
            moto_line(r#"127.0.0.1 - - [22/Nov/2026 13:53:56] "POST / HTTP/1.1" 200 -"#),
            None
        );
        assert!(moto_line("moto listening on http://127.0.0.1:1").is_some());
    }

    #[test]
    fn the_environment_resolves_the_template_and_points_at_local_services() {
        let template = Template::parse(
            r#"
Globals:
  Function:
    Environment:
      Variables:
        TABLE_NAME: !Ref Table
        RUST_LOG: info
Resources:
  A:
    Type: AWS::Serverless::Function
    Metadata: {BuildProperties: {Binary: a}}
    Properties:
      Environment:
        Variables:
          TIMEOUT_MS: 100
          PROVIDER_BASE_URL: https://provider.example
  B:
    Type: AWS::Serverless::Function
    Metadata: {BuildProperties: {Binary: b}}
    Properties:
      Environment:
        Variables:
          TIMEOUT_MS: 200
          SECRET: !Ref Missing
  Queue:
    Type: AWS::SQS::Queue
    Properties:
      RedrivePolicy: {deadLetterTargetArn: !GetAtt Dlq.Arn, maxReceiveCount: 3}
  Dlq:
    Type: AWS::SQS::Queue
  Table:
    Type: AWS::DynamoDB::Table
"#,
        )
        .unwrap();
        let mut resolver = Resolver::new(&template);
        resolver.refs.insert("Table".into(), "local-table".into());
        let created = Created {
            queues: [("Queue", "http://q"), ("Dlq", "http://dlq")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ..Default::default()
        };
        let (env, notes) = function_environment(
            &template.functions().0,
            &template.queues(),
            &resolver,
            &created,
            "http://moto",
            "http://mock/api/v3",
            &[("EXTRA".into(), "1".into())],
        );
        assert_eq!(env["TABLE_NAME"], "local-table");
        assert_eq!(env["QUEUE_URL"], "http://q");
        assert_eq!(env["DLQ_URL"], "http://dlq");
        assert_eq!(env["AWS_ENDPOINT_URL"], "http://moto");
        assert_eq!(env["PROVIDER_BASE_URL"], "http://mock/api/v3");
        assert_eq!(env["PROVIDER_API_KEY"], MOCK_KEY);
        assert_eq!(env["TIMEOUT_MS"], "100");
        assert_eq!(env["EXTRA"], "1");
        assert!(!env.contains_key("SECRET"));
        assert!(
            notes.iter().any(|n| n.contains("TIMEOUT_MS differs")),
            "{notes:?}"
        );
        assert!(
            notes.iter().any(|n| n.contains("SECRET not set")),
            "{notes:?}"
        );
    }
}
