//! AWS SDK clients, built once per cold start. `aws-config` honours `AWS_ENDPOINT_URL`, which
//! is how local runs and tests reach the moto server with the very same code.

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

impl Clients {
    /// Loads the shared SDK configuration from the environment and builds the clients.
    pub async fn from_env() -> Self {
        let shared = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        Self::from_sdk_config(&shared)
    }

    /// Builds the clients from an already loaded SDK configuration.
    pub fn from_sdk_config(shared: &aws_config::SdkConfig) -> Self {
        // moto and other local endpoints serve buckets by path, not by virtual host.
        let s3 = aws_sdk_s3::config::Builder::from(shared)
            .force_path_style(shared.endpoint_url().is_some())
            .build();
        Self {
            dynamodb: aws_sdk_dynamodb::Client::new(shared),
            sqs: aws_sdk_sqs::Client::new(shared),
            s3: aws_sdk_s3::Client::from_conf(s3),
        }
    }
}
