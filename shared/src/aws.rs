//! AWS SDK clients, built once per cold start. `aws-config` honours `AWS_ENDPOINT_URL`, which
//! is how local runs and tests reach the moto server with the very same code.
//!
//! Timeouts and retries are said here rather than left to the SDK's defaults, which set no
//! operation timeout at all: a stalled connection would hold an invocation until Lambda kills
//! it, with the request's outcome as unknown as after a timeout but no time left to act on it.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;

/// The SDK clients every function shares.
#[derive(Clone, Debug)]
pub struct Clients {
    /// DynamoDB: ledger, sessions, idempotency.
    pub dynamodb: aws_sdk_dynamodb::Client,
    /// SQS: the generation queue.
    pub sqs: aws_sdk_sqs::Client,
    /// S3: outputs.
    pub s3: aws_sdk_s3::Client,
}

/// Time to open a connection (TCP and TLS) to an AWS endpoint in the function's region.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A whole DynamoDB or SQS call, retries included: well inside the 10 s of the HTTP functions,
/// so a route still answers (500, or the outcome it can establish) before Lambda cuts it off.
///
/// No per-attempt timeout, on purpose: the SDK re-sends a call whose attempt timed out, and a
/// write that committed unseen would then meet its own result (a conditional write fails on
/// its own success). Until every write recognises its own outcome (the crash-point work), a
/// slow answer ends the call with a timeout the caller handles, instead of a blind re-send.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

/// Standard retry mode, three attempts, with backoff from 50 ms (DynamoDB's and SQS's
/// throttling clears in tens of milliseconds; the SDK's 1 s default base would spend an HTTP
/// function's budget on one wait) up to 1 s.
pub fn retry_config() -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(3)
        .with_initial_backoff(Duration::from_millis(50))
        .with_max_backoff(Duration::from_secs(1))
}

/// Timeouts of DynamoDB and SQS calls.
pub fn request_timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build()
}

/// Timeouts of S3 calls: a connect timeout only. A copy streams a provider download into S3
/// for as long as it lasts, under its own deadline ([`crate::storage`]); an operation timeout
/// here would cut a large upload off at an arbitrary size.
pub fn transfer_timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
}

/// The DynamoDB client configuration every function uses (callers may add interceptors).
pub fn dynamodb_config(shared: &aws_config::SdkConfig) -> aws_sdk_dynamodb::config::Builder {
    aws_sdk_dynamodb::config::Builder::from(shared)
        .timeout_config(request_timeouts())
        .retry_config(retry_config())
}

/// The SQS client configuration every function uses (callers may add interceptors).
pub fn sqs_config(shared: &aws_config::SdkConfig) -> aws_sdk_sqs::config::Builder {
    aws_sdk_sqs::config::Builder::from(shared)
        .timeout_config(request_timeouts())
        .retry_config(retry_config())
}

/// The S3 client configuration every function uses.
pub fn s3_config(shared: &aws_config::SdkConfig) -> aws_sdk_s3::config::Builder {
    aws_sdk_s3::config::Builder::from(shared)
        // moto and other local endpoints serve buckets by path, not by virtual host.
        .force_path_style(shared.endpoint_url().is_some())
        .timeout_config(transfer_timeouts())
        .retry_config(retry_config())
}

impl Clients {
    /// Loads the shared SDK configuration from the environment and builds the clients.
    pub async fn from_env() -> Self {
        let shared = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        Self::from_sdk_config(&shared)
    }

    /// Builds the clients from an already loaded SDK configuration.
    pub fn from_sdk_config(shared: &aws_config::SdkConfig) -> Self {
        Self {
            dynamodb: aws_sdk_dynamodb::Client::from_conf(dynamodb_config(shared).build()),
            sqs: aws_sdk_sqs::Client::from_conf(sqs_config(shared).build()),
            s3: aws_sdk_s3::Client::from_conf(s3_config(shared).build()),
        }
    }
}
