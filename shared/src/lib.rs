//! Domain and adapters of the generation backend.
//!
//! The functions under `functions/` are thin entry points: each builds an [`AppState`] once per
//! cold start and hands every event to a handler here. Everything else lives in this crate, one
//! concept per module, and dependencies point one way, down this list:
//!
//! - Foundations: [`config`] (typed configuration, read once), [`aws`] (SDK clients honouring
//!   `AWS_ENDPOINT_URL`), [`clock`] (instants and their units), [`fault`] (our own failures,
//!   with their cause chain), [`telemetry`] (JSON logs and EMF metrics).
//! - The edge: [`auth`] (identity from the JWT authorizer's claims), [`error`] (the HTTP error
//!   contract), [`pricing`], [`generation`] (validated generation requests).
//! - Adapters: [`provider`] (the Seedream / Seedance client), [`storage`] (outputs in S3),
//!   [`queue`] (the SQS generation queue), [`table`] (DynamoDB plumbing that belongs to no item:
//!   attribute values, transactions, key layout, cursors).
//! - Items, each written only by its own module: [`ledger`] (accounts, lots, holds and the
//!   entries that record every change), [`sessions`] (generation sessions; every status change
//!   is a named transition in [`sessions::transitions`]), [`idempotency`] (the first answer to
//!   a request that carried an `Idempotency-Key`).
//! - Orchestration, which only calls the item modules: [`batch`] (the SQS batch runner),
//!   [`generator`], [`sweeper`], [`deadletter`].
//! - [`routes`]: the HTTP handlers of the `enqueue`, `api` and `admin` functions.
//!
//! Why this shape: every status change and every balance change has exactly one home, so a
//! rule about it (a condition, a limit, a crash repair) is written once; `fault` is separate
//! from `error` because workers have no HTTP answer to give, only a cause to log.

pub mod auth;
pub mod aws;
pub mod batch;
pub mod clock;
pub mod config;
pub mod deadletter;
pub mod error;
pub mod fault;
pub mod generation;
pub mod generator;
pub mod idempotency;
pub mod ledger;
pub mod pricing;
pub mod provider;
pub mod queue;
pub mod routes;
pub mod sessions;
pub mod storage;
pub mod sweeper;
pub mod table;
pub mod telemetry;

pub use error::{ApiError, Result};

/// Everything a handler needs, built once per cold start and shared by every invocation.
#[derive(Clone, Debug)]
pub struct AppState {
    /// Typed configuration.
    pub config: std::sync::Arc<config::Config>,
    /// AWS SDK clients.
    pub aws: aws::Clients,
}

impl AppState {
    /// Reads the configuration and builds the AWS clients.
    pub async fn from_env() -> std::result::Result<Self, config::ConfigError> {
        let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        Self::from_sdk_config(&sdk)
    }

    /// Reads the configuration, builds the AWS clients and the provider client (with its key,
    /// read once): what the workers that call the provider need.
    pub async fn from_env_with_provider(
    ) -> std::result::Result<(Self, provider::Client), config::ConfigError> {
        let sdk = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        Ok((
            Self::from_sdk_config(&sdk)?,
            provider::Client::from_env(&sdk).await?,
        ))
    }

    /// Reads the configuration and builds the AWS clients from a loaded SDK configuration.
    pub fn from_sdk_config(
        sdk: &aws_config::SdkConfig,
    ) -> std::result::Result<Self, config::ConfigError> {
        Ok(Self {
            config: std::sync::Arc::new(config::Config::from_env()?),
            aws: aws::Clients::from_sdk_config(sdk),
        })
    }
}
