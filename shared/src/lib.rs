//! Domain and adapters of the generation backend.
//!
//! The functions under `functions/` are thin entry points: each builds an [`AppState`] once per
//! cold start and hands every event to a handler in [`routes`]. Everything else lives here, one
//! concept per module:
//!
//! - [`config`]: typed configuration, read once from the environment.
//! - [`aws`]: AWS SDK clients, built once and honouring `AWS_ENDPOINT_URL`.
//! - [`auth`]: the caller's identity, taken from the API Gateway JWT authorizer claims.
//! - [`error`]: the one error type and its mapping to the HTTP error contract.
//! - [`pricing`]: credits per image and per video second.
//! - [`generation`]: validated generation requests (the edge of the system).
//! - [`ledger`]: the credit ledger on DynamoDB: lots, holds, capture, release, expiry.
//! - [`sessions`]: generation sessions and their life cycle.
//! - [`provider`]: the Seedream / Seedance client and its error classification.
//! - [`storage`]: outputs copied into the private S3 bucket.
//! - [`generator`]: the SQS consumer that runs generations.
//! - [`deadletter`]: the DLQ consumer and the dead-letter records admins work with.
//! - [`sweeper`]: the scheduled repair of renders, stuck sessions, stale holds and lots.
//! - [`queue`]: the SQS generation queue.
//! - [`pagination`]: opaque cursors over DynamoDB queries.
//! - [`telemetry`]: structured JSON logs.
//! - [`routes`]: the HTTP handlers of the `enqueue` and `api` functions.

pub mod auth;
pub mod aws;
pub mod clock;
pub mod config;
pub mod deadletter;
pub mod error;
pub mod generation;
pub mod generator;
pub mod keys;
pub mod ledger;
pub mod pagination;
pub mod pricing;
pub mod provider;
pub mod queue;
pub mod routes;
pub mod sessions;
pub mod storage;
pub mod sweeper;
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
