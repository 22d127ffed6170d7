//! The state file of a running stack (`target/local-stack/state.json`): ports, resource names
//! and the dev key, so that `local token`, `local grant`, `local session` and `local dlq` find
//! the stack that `local up` started.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::resources::Created;

/// Name of the state file in the state directory.
pub const STATE_FILE: &str = "state.json";

/// What a running stack publishes about itself.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    /// Process id of `local up`.
    pub pid: u32,
    /// The run id (value of `LOCAL_STACK_RUN` in every process of the stack).
    pub run_id: String,
    /// The gateway (`http://127.0.0.1:PORT`).
    pub gateway_url: String,
    /// The Lambda Invoke API of `cargo lambda watch`.
    pub lambda_url: String,
    /// moto.
    pub moto_url: String,
    /// The mock provider (API base is `<mock_url>/api/v3`).
    pub mock_url: String,
    /// The HS256 dev key of the gateway's authorizer.
    pub dev_key: String,
    /// Expected `iss`.
    pub issuer: String,
    /// Expected `aud`.
    pub audience: String,
    /// Tables, queues, buckets.
    pub resources: Created,
    /// Function binaries of the template and whether each is in the workspace.
    pub functions: Vec<FunctionState>,
    /// Route keys served, with the function behind each.
    pub routes: Vec<String>,
    /// The log file, relative to the repository root.
    pub log_file: String,
    /// Epoch seconds when the stack became ready.
    pub started_at: i64,
}

/// One function of the template.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FunctionState {
    /// Logical id.
    pub logical_id: String,
    /// Binary.
    pub binary: String,
    /// Whether the workspace has the binary.
    pub present: bool,
}

impl State {
    /// The state file in `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    /// Writes the state file (atomically).
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!("{STATE_FILE}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(tmp, Self::path(dir))
    }

    /// Reads the state file of a stack that is still running.
    pub fn load(dir: &Path) -> Result<Self, String> {
        let path = Self::path(dir);
        let text = std::fs::read_to_string(&path).map_err(|_| {
            format!(
                "no running local stack ({} not found): start one with `make demo` or `cargo run -p local-stack --bin local -- up`",
                path.display()
            )
        })?;
        let state: Self =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if !crate::procs::signal_pid(state.pid as i32, 0) {
            return Err(format!(
                "the local stack that wrote {} (pid {}) is not running any more: start one with `make demo`",
                path.display(),
                state.pid
            ));
        }
        Ok(state)
    }

    /// Removes the state file if it is this process's.
    pub fn remove(dir: &Path, pid: u32) {
        if let Ok(text) = std::fs::read_to_string(Self::path(dir)) {
            if serde_json::from_str::<Self>(&text).is_ok_and(|s| s.pid == pid) {
                let _ = std::fs::remove_file(Self::path(dir));
            }
        }
    }

    /// The authorizer configuration.
    pub fn jwt(&self) -> crate::jwt::JwtConfig {
        crate::jwt::JwtConfig {
            key: self.dev_key.clone(),
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
        }
    }
}
