//! The command line: flags, the local stack's state file as the default target, turning both
//! into a [`Plan`], and what happens after a run (text, JSON, HTML, baseline, exit code).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde_json::Value;

use crate::stages::{parse_duration, parse_rate, Preset, Profile, Think};
use crate::threshold::Threshold;
use crate::users::{parse_token_file, Minter, TestUser};
use crate::{baseline, new_run_id, report, Identity, Load, Plan, PollPolicy, Scenario};

/// Where `local up` writes its state, relative to the workspace root.
pub const STATE_FILE: &str = "target/local-stack/state.json";

/// Load tests for the generation API (k6-compatible stages, thresholds and metric names).
#[derive(Parser, Debug, Clone)]
#[command(
    name = "loadtest",
    version,
    after_help = "Examples:\n  \
        loadtest --preset smoke --threshold 'errors:rate<0.01'\n  \
        loadtest --preset load --users 20 --html report.html --summary-json run.json\n  \
        loadtest --rate 20/s --duration 60s --threshold 'http_req_duration:p(95)<100'\n  \
        loadtest --base-url https://abc.execute-api.us-east-1.amazonaws.com --token-file tokens.txt --preset smoke"
)]
pub struct Args {
    /// API base URL. Default: the gateway of the running local stack (its state file).
    #[arg(long, env = "LOADTEST_BASE_URL")]
    pub base_url: Option<String>,
    /// The local stack's state file. Default: $LOCAL_STACK_DIR/state.json, else
    /// target/local-stack/state.json in this directory or the nearest parent that has one.
    #[arg(long)]
    pub state: Option<PathBuf>,

    /// A named closed-model profile (default: smoke, unless --stages or a rate is given).
    #[arg(long, value_enum, conflicts_with_all = ["stages", "rate", "rate_stages"])]
    pub preset: Option<Preset>,
    /// Closed model: k6 stages, `duration:VUs`, ramped linearly from 0 (`10s:5,20s:10`).
    #[arg(long, conflicts_with_all = ["rate", "rate_stages"])]
    pub stages: Option<String>,
    /// Closed model: pause between a VU's iterations: `0`, `2s`, or a uniform range `1s..3s`.
    #[arg(long, default_value = "1s..3s")]
    pub think: String,
    /// Open model: constant arrival rate (`20/s`, `600/m`); needs --duration.
    #[arg(long, requires = "duration", conflicts_with = "rate_stages")]
    pub rate: Option<String>,
    /// Open model: how long the constant rate lasts (`60s`).
    #[arg(long, requires = "rate")]
    pub duration: Option<String>,
    /// Open model: ramping arrival rate, `duration:rate` stages (`10s:5/s,30s:50/s`).
    #[arg(long)]
    pub rate_stages: Option<String>,
    /// Open model: the rate the first ramp starts from.
    #[arg(long, default_value = "0/s")]
    pub start_rate: String,
    /// Open model: most iterations in flight; later arrivals wait (and are measured as late).
    #[arg(long, default_value_t = 1000)]
    pub max_inflight: usize,

    /// Test users to spread the load over (minted tokens; with a token file, the first N).
    #[arg(long)]
    pub users: Option<usize>,
    /// All VUs act as one user (the per-user in-flight cap will answer 429).
    #[arg(long)]
    pub hot_user: bool,
    /// HS256 key to mint user and admin tokens. Default: the local stack's dev key.
    #[arg(long, env = "LOADTEST_JWT_KEY", hide_env_values = true)]
    pub jwt_key: Option<String>,
    /// `iss` of minted tokens. Default: the local stack's.
    #[arg(long)]
    pub jwt_iss: Option<String>,
    /// `aud` of minted tokens. Default: the local stack's.
    #[arg(long)]
    pub jwt_aud: Option<String>,
    /// Prefix of minted user ids (default `lt-<run id>-`, fresh users every run).
    #[arg(long)]
    pub user_prefix: Option<String>,
    /// One bearer token: a single user.
    #[arg(
        long,
        env = "LOADTEST_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,
    /// A file of bearer tokens, one per line (e.g. Cognito ID tokens for a deployed API).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// A token in the `admin` group, to seed credits (minted when the key is known).
    #[arg(long, env = "LOADTEST_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Credits granted to each test user before the run (at most 1000000).
    #[arg(long, default_value_t = 100_000)]
    pub seed_credits: u64,
    /// Do not grant credits before the run.
    #[arg(long)]
    pub no_seed: bool,

    /// Share of iterations that request a video instead of images (0-1).
    #[arg(long, default_value_t = 0.0)]
    pub video_ratio: f64,
    /// Images per image request.
    #[arg(long, default_value_t = 4)]
    pub images: u8,
    /// Send a unique Idempotency-Key with every generate request.
    #[arg(long)]
    pub idempotency_keys: bool,
    /// Do not poll accepted sessions (no session_e2e).
    #[arg(long)]
    pub no_e2e: bool,
    /// A session not completed or failed this long after its request counts as timed out;
    /// also the longest the run waits for sessions after the load.
    #[arg(long, default_value = "2m")]
    pub e2e_timeout: String,
    /// First wait before polling a session.
    #[arg(long, default_value = "250ms")]
    pub poll_initial: String,
    /// Longest wait between polls (each wait is 1.5× the last).
    #[arg(long, default_value = "1s")]
    pub poll_max: String,
    /// Per-request timeout.
    #[arg(long, default_value = "30s")]
    pub http_timeout: String,
    /// How long in-flight iterations may finish once the load ends.
    #[arg(long, default_value = "30s")]
    pub graceful_stop: String,

    /// A k6 threshold (repeatable): `http_req_duration:p(95)<100`, `errors:rate<0.01`.
    #[arg(long = "threshold", value_name = "THRESHOLD")]
    pub thresholds: Vec<String>,
    /// Write the JSON summary here.
    #[arg(long)]
    pub summary_json: Option<PathBuf>,
    /// Write the HTML report here.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// A previous JSON summary (this tool's or k6's) to compare with.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// No live progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Seed of the random choices (prompts, think time, video share).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Allow a planned load longer than 2 hours.
    #[arg(long)]
    pub i_know: bool,
}

/// What the local stack's state file tells us.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LocalStack {
    /// The gateway's URL.
    pub gateway_url: Option<String>,
    /// The HS256 dev key.
    pub dev_key: Option<String>,
    /// Expected `iss`.
    pub issuer: Option<String>,
    /// Expected `aud`.
    pub audience: Option<String>,
}

impl LocalStack {
    /// Reads the fields this tool uses, ignoring the rest.
    pub fn parse(text: &str) -> Result<Self, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        Ok(Self {
            gateway_url: field("gateway_url"),
            dev_key: field("dev_key"),
            issuer: field("issuer"),
            audience: field("audience"),
        })
    }
}

/// The nearest `target/local-stack/state.json` from `dir` upwards.
pub fn find_state_file(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .map(|d| d.join(STATE_FILE))
        .find(|p| p.is_file())
}

fn duration(flag: &str, text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|e| format!("--{flag}: {e}"))
}

impl Args {
    /// Builds the plan. `stack` is the local stack's state, when there is one.
    pub fn plan(&self, stack: Option<&LocalStack>) -> Result<Plan, String> {
        let run_id = new_run_id();
        let base_url = self
            .base_url
            .clone()
            .or_else(|| stack.and_then(|s| s.gateway_url.clone()))
            .ok_or(
                "no --base-url, and no running local stack (target/local-stack/state.json): \
                 start one with `local up`, or pass --base-url",
            )?;
        // The local dev key only fits the local gateway.
        let same_stack = stack.filter(|s| {
            s.gateway_url.as_deref().map(|u| u.trim_end_matches('/'))
                == Some(base_url.trim_end_matches('/'))
        });
        let (load, preset) = self.load()?;
        let minter = self.minter(same_stack);
        let identity = self.identity(minter.as_ref(), &run_id)?;
        let admin_token = self.admin_token.clone().or_else(|| {
            minter.as_ref().map(|m| {
                m.token(
                    &format!("lt-{run_id}-admin"),
                    true,
                    Duration::from_secs(86_400),
                )
            })
        });
        if self.seed_credits == 0 || self.seed_credits > 1_000_000 {
            return Err("--seed-credits must be within 1..1000000".into());
        }
        let e2e = (!self.no_e2e)
            .then(|| -> Result<PollPolicy, String> {
                Ok(PollPolicy {
                    initial: duration("poll-initial", &self.poll_initial)?,
                    max: duration("poll-max", &self.poll_max)?,
                    timeout: duration("e2e-timeout", &self.e2e_timeout)?,
                })
            })
            .transpose()?;
        let thresholds = self
            .thresholds
            .iter()
            .map(|t| Threshold::parse(t))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Plan {
            base_url: base_url.trim_end_matches('/').to_string(),
            load,
            preset,
            identity,
            hot_user: self.hot_user,
            admin_token,
            seed_credits: (!self.no_seed).then_some(self.seed_credits),
            scenario: Scenario {
                video_ratio: self.video_ratio,
                images: self.images,
                idempotency_keys: self.idempotency_keys,
                e2e,
            },
            thresholds,
            http_timeout: duration("http-timeout", &self.http_timeout)?,
            graceful_stop: duration("graceful-stop", &self.graceful_stop)?,
            progress: !self.quiet,
            seed: self.seed.unwrap_or_else(|| fastrand::u64(..)),
            run_id,
            allow_long: self.i_know,
        })
    }

    /// The load model: an open model when a rate is given, else the closed model of --stages
    /// or of a preset (smoke by default); the preset's name when one was used.
    fn load(&self) -> Result<(Load, Option<String>), String> {
        if let Some(rate) = &self.rate {
            let rate = parse_rate(rate).map_err(|e| format!("--rate: {e}"))?;
            let length = duration("duration", self.duration.as_deref().unwrap_or_default())?;
            if length.is_zero() {
                return Err("--duration must be above zero".into());
            }
            let profile = Profile::constant(rate, length);
            return Ok((self.open(profile), None));
        }
        if let Some(stages) = &self.rate_stages {
            let start = parse_rate(&self.start_rate).map_err(|e| format!("--start-rate: {e}"))?;
            let profile =
                Profile::parse_rates(stages, start).map_err(|e| format!("--rate-stages: {e}"))?;
            return Ok((self.open(profile), None));
        }
        let think = Think::parse(&self.think).map_err(|e| format!("--think: {e}"))?;
        Ok(match &self.stages {
            Some(stages) => (
                Load::Closed {
                    profile: Profile::parse_vus(stages).map_err(|e| format!("--stages: {e}"))?,
                    think,
                },
                None,
            ),
            None => {
                let preset = self.preset.unwrap_or(Preset::Smoke);
                (
                    Load::Closed {
                        profile: preset.profile(),
                        think,
                    },
                    Some(preset.name().to_string()),
                )
            }
        })
    }

    fn open(&self, profile: Profile) -> Load {
        Load::Open {
            profile,
            max_inflight: self.max_inflight,
        }
    }

    /// A token minter from --jwt-key/--jwt-iss/--jwt-aud, else from the local stack's dev key
    /// when the run targets that stack.
    fn minter(&self, same_stack: Option<&LocalStack>) -> Option<Minter> {
        let key = self
            .jwt_key
            .clone()
            .or_else(|| same_stack.and_then(|s| s.dev_key.clone()))?;
        Some(Minter {
            key,
            issuer: self
                .jwt_iss
                .clone()
                .or_else(|| same_stack.and_then(|s| s.issuer.clone())),
            audience: self
                .jwt_aud
                .clone()
                .or_else(|| same_stack.and_then(|s| s.audience.clone())),
        })
    }

    /// Who the virtual users are: one --token, the users of --token-file, or minted users.
    fn identity(&self, minter: Option<&Minter>, run_id: &str) -> Result<Identity, String> {
        if let Some(token) = &self.token {
            return Ok(Identity::Tokens(vec![TestUser::from_token(token)]));
        }
        if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--token-file {}: {e}", path.display()))?;
            let mut users = parse_token_file(&text);
            if users.is_empty() {
                return Err(format!("--token-file {}: no tokens", path.display()));
            }
            if let Some(n) = self.users {
                users.truncate(n.max(1));
            }
            return Ok(Identity::Tokens(users));
        }
        let minter = minter.ok_or(
            "no way to authenticate: pass --jwt-key (local stack), --token-file or --token",
        )?;
        Ok(Identity::Mint {
            minter: minter.clone(),
            users: self.users.unwrap_or(1),
            prefix: self
                .user_prefix
                .clone()
                .unwrap_or_else(|| format!("lt-{run_id}-")),
        })
    }
}

/// Runs the command line: the plan, the run, the outputs. Returns the exit code: 0, or 99
/// when a threshold was breached.
pub async fn main(args: Args) -> Result<u8, String> {
    // As `local` does: --state, else $LOCAL_STACK_DIR/state.json, else the nearest
    // target/local-stack/state.json.
    let state_path = args
        .state
        .clone()
        .or_else(|| {
            std::env::var_os("LOCAL_STACK_DIR")
                .map(|d| PathBuf::from(d).join("state.json"))
                .filter(|p| p.is_file())
        })
        .or_else(|| {
            std::env::current_dir()
                .ok()
                .and_then(|d| find_state_file(&d))
        });
    let stack = match &state_path {
        Some(path) if path.is_file() => Some(
            std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|t| LocalStack::parse(&t))
                .map_err(|e| format!("{}: {e}", path.display()))?,
        ),
        Some(path) if args.state.is_some() => {
            return Err(format!("--state {}: no such file", path.display()))
        }
        _ => None,
    };
    let plan = args.plan(stack.as_ref())?;
    let baseline = match &args.baseline {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|t| baseline::load(&t))
                .map_err(|e| format!("--baseline {}: {e}", path.display()))?,
        ),
        None => None,
    };
    if !args.quiet {
        eprintln!(
            "loadtest → {}: {} (run {}, at most {} with the drain)",
            plan.base_url,
            match &plan.load {
                Load::Closed { profile, think } =>
                    format!("closed model, stages {profile}, think {think}"),
                Load::Open {
                    profile,
                    max_inflight,
                } => format!(
                    "open model, {:.0} iterations over {}, max {max_inflight} in flight",
                    profile.expected_arrivals(),
                    crate::stages::format_duration(profile.total())
                ),
            },
            plan.run_id,
            crate::stages::format_duration(plan.hard_cap())
        );
    }
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let mut summary = crate::run(plan, interrupt)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(before) = &baseline {
        summary.comparison = baseline::compare(before, &summary.metrics);
    }
    print!("{}", summary.render_text());
    if !summary.comparison.is_empty() {
        print!("{}", baseline::render(&summary.comparison));
    }
    if let Some(path) = &args.summary_json {
        let json = serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?;
        std::fs::write(path, json + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("summary written to {}", path.display());
    }
    if let Some(path) = &args.html {
        std::fs::write(path, report::render(&summary))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    let breached = summary.breached();
    if breached.is_empty() {
        Ok(0)
    } else {
        for t in breached {
            eprintln!(
                "threshold breached: {} (actual {})",
                t.threshold,
                t.actual
                    .map(|a| format!("{a:.4}"))
                    .or_else(|| t.note.clone())
                    .unwrap_or_default()
            );
        }
        Ok(crate::EXIT_THRESHOLDS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["loadtest"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).unwrap()
    }

    fn stack() -> LocalStack {
        LocalStack::parse(
            r#"{"pid":1,"gateway_url":"http://127.0.0.1:4000","dev_key":"dev","issuer":"https://issuer/us-east-1","audience":"web","resources":{}}"#,
        )
        .unwrap()
    }

    #[test]
    fn the_local_stack_is_the_default_target_with_minted_tokens() {
        let plan = args(&["--users", "3"]).plan(Some(&stack())).unwrap();
        assert_eq!(plan.base_url, "http://127.0.0.1:4000");
        assert_eq!(plan.preset.as_deref(), Some("smoke"));
        let Identity::Mint { minter, users, .. } = &plan.identity else {
            panic!("expected minted users");
        };
        assert_eq!(*users, 3);
        assert_eq!(minter.issuer.as_deref(), Some("https://issuer/us-east-1"));
        assert_eq!(minter.audience.as_deref(), Some("web"));
        let admin = crate::users::claims(plan.admin_token.as_deref().unwrap()).unwrap();
        assert_eq!(admin["cognito:groups"], serde_json::json!(["admin"]));
        assert_eq!(plan.seed_credits, Some(100_000));
        assert!(plan.scenario.e2e.is_some());
    }

    #[test]
    fn without_a_stack_or_url_the_command_says_what_is_missing() {
        let err = args(&[]).plan(None).unwrap_err();
        assert!(err.contains("--base-url"), "{err}");
        let err = args(&["--base-url", "https://api.example.com"])
            .plan(Some(&stack()))
            .unwrap_err();
        assert!(
            err.contains("--token-file"),
            "the local key must not be used elsewhere: {err}"
        );
    }

    #[test]
    fn presets_stages_and_rates_become_the_right_load() {
        let s = Some(stack());
        let plan = args(&["--preset", "load", "--think", "0"])
            .plan(s.as_ref())
            .unwrap();
        assert_eq!(
            plan.load,
            Load::Closed {
                profile: Preset::Load.profile(),
                think: Think::None
            }
        );
        let plan = args(&["--stages", "10s:5,20s:10"])
            .plan(s.as_ref())
            .unwrap();
        assert!(
            matches!(plan.load, Load::Closed { ref profile, .. } if profile.total() == Duration::from_secs(30))
        );
        let plan = args(&["--rate", "20/s", "--duration", "60s", "--max-inflight", "7"])
            .plan(s.as_ref())
            .unwrap();
        assert_eq!(
            plan.load,
            Load::Open {
                profile: Profile::constant(20.0, Duration::from_secs(60)),
                max_inflight: 7
            }
        );
        let plan = args(&["--rate-stages", "10s:5/s,30s:50/s"])
            .plan(s.as_ref())
            .unwrap();
        assert!(matches!(plan.load, Load::Open { ref profile, .. } if profile.peak() == 50.0));
        assert!(Args::try_parse_from(["loadtest", "--rate", "5/s"]).is_err());
        assert!(
            Args::try_parse_from(["loadtest", "--preset", "load", "--stages", "1s:1"]).is_err()
        );
        assert!(args(&["--stages", "10s"]).plan(s.as_ref()).is_err());
        assert!(args(&["--threshold", "bogus"]).plan(s.as_ref()).is_err());
    }

    #[test]
    fn a_soak_longer_than_two_hours_needs_i_know() {
        let s = Some(stack());
        let plan = args(&["--stages", "3h:10"]).plan(s.as_ref()).unwrap();
        assert!(plan
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--i-know"));
        let plan = args(&["--stages", "3h:10", "--i-know"])
            .plan(s.as_ref())
            .unwrap();
        assert!(plan.validate().is_ok());
        assert!(Preset::Soak.profile().total() < crate::MAX_PLANNED);
    }

    #[test]
    fn a_token_file_gives_one_user_per_line() {
        let dir = std::env::temp_dir().join(format!("loadtest-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tokens.txt");
        std::fs::write(&file, "# deployed users\ntok-a\ntok-b\ntok-c\n").unwrap();
        let plan = args(&[
            "--base-url",
            "https://api.example.com/",
            "--token-file",
            file.to_str().unwrap(),
            "--users",
            "2",
        ])
        .plan(None)
        .unwrap();
        assert_eq!(plan.base_url, "https://api.example.com");
        let Identity::Tokens(users) = &plan.identity else {
            panic!("expected tokens");
        };
        assert_eq!(users.len(), 2);
        assert_eq!(plan.admin_token, None);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
