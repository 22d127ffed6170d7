//! An isolated world per test: its own table, queues and bucket on the moto server named by
//! `MOTO_ENDPOINT` (started by `scripts/with-moto.sh`), reached through the real AWS SDK. The
//! resources are created from template.yaml by the local stack's own code, so the test table
//! has exactly the keys, indexes and TTL that AWS gets, and the queues its redrive policy.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aws_config::{BehaviorVersion, Region};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use local_stack::resources::{self, Options};
use local_stack::template::Template;
use serde_json::Value;
use shared::config::Config;
use shared::{aws::Clients, AppState};

/// Counts the requests the SDK sends, by operation.
#[derive(Debug, Default, Clone)]
pub struct CallCounter {
    pub total: Arc<AtomicUsize>,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "CallCounter"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.total.fetch_add(1, Ordering::SeqCst);
        let request = context.request();
        let target = request
            .headers()
            .get("x-amz-target")
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{} {}", request.method(), request.uri()));
        self.log.lock().unwrap().push(target);
        Ok(())
    }
}

impl CallCounter {
    pub fn reset(&self) {
        self.total.store(0, Ordering::SeqCst);
        self.log.lock().unwrap().clear();
    }

    pub fn count(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }
}

/// The parsed template.yaml, read once per test process.
pub fn template() -> &'static Template {
    static TEMPLATE: std::sync::OnceLock<Template> = std::sync::OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../template.yaml");
        Template::load(&path).expect("template.yaml parses")
    })
}

/// One test's table, queues and bucket, and the state the handlers run with.
pub struct World {
    pub state: AppState,
    pub calls: CallCounter,
    /// The generation queue as created (a test may point the config at another).
    pub queue_url: String,
    /// The dead-letter queue.
    pub dlq_url: String,
}

/// The moto server's endpoint (`MOTO_ENDPOINT`).
pub fn endpoint() -> String {
    std::env::var("MOTO_ENDPOINT").expect(
        "MOTO_ENDPOINT is not set: run the tests with `make test` (scripts/with-moto.sh starts moto)",
    )
}

/// An SDK configuration for the moto server, with dummy credentials.
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint())
        .region(Region::new("us-east-1"))
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .load()
        .await
}

impl World {
    pub async fn new() -> Self {
        Self::with(|_| {}).await
    }

    pub async fn with(adjust: impl FnOnce(&mut Config)) -> Self {
        let sdk = sdk_config().await;
        let calls = CallCounter::default();
        let plain = Clients::from_sdk_config(&sdk);
        let clients = Clients {
            dynamodb: aws_sdk_dynamodb::Client::from_conf(
                shared::aws::dynamodb_config(&sdk)
                    .interceptor(calls.clone())
                    .build(),
            ),
            sqs: aws_sdk_sqs::Client::from_conf(
                shared::aws::sqs_config(&sdk)
                    .interceptor(calls.clone())
                    .build(),
            ),
            s3: plain.s3.clone(),
        };
        let prefix = format!("t{}", ulid::Ulid::new().to_string().to_lowercase());
        let options = Options {
            // Redeliveries in tests come after 30 s, not the template's six minutes.
            visibility_timeout: Some(30),
            prefix,
        };
        let (created, _) = resources::create(template(), &sdk, &options)
            .await
            .expect("the template's resources are created on moto");
        let table = created.tables["Table"].clone();
        let queue_url = created.queues["GenerationQueue"].clone();
        let dlq_url = created.queues["GenerationDLQ"].clone();
        let bucket = created.buckets["OutputBucket"].clone();
        let mut config = Config::from_lookup(|name| match name {
            "TABLE_NAME" => Some(table.clone()),
            "QUEUE_URL" => Some(queue_url.clone()),
            "BUCKET_NAME" => Some(bucket.clone()),
            _ => None,
        })
        .unwrap();
        adjust(&mut config);
        calls.reset();
        Self {
            state: AppState {
                config: Arc::new(config),
                aws: clients,
            },
            calls,
            queue_url: queue_url.clone(),
            dlq_url,
        }
    }

    pub fn table(&self) -> &str {
        &self.state.config.table
    }

    pub fn ddb(&self) -> &aws_sdk_dynamodb::Client {
        &self.state.aws.dynamodb
    }

    /// Every item of the table, as (pk, sk) pairs, sorted.
    pub async fn keys(&self) -> Vec<(String, String)> {
        let mut keys = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .ddb()
                .scan()
                .table_name(self.table())
                .set_exclusive_start_key(start)
                .send()
                .await
                .unwrap();
            for item in out.items.unwrap_or_default() {
                let text = |k: &str| item[k].as_s().unwrap().clone();
                keys.push((text("pk"), text("sk")));
            }
            match out.last_evaluated_key {
                Some(k) => start = Some(k),
                None => break,
            }
        }
        keys.sort();
        keys
    }

    /// Sort keys of a user's items starting with `prefix`.
    pub async fn count(&self, user: &str, prefix: &str) -> usize {
        let pk = format!("USER#{user}");
        self.keys()
            .await
            .iter()
            .filter(|(p, s)| *p == pk && s.starts_with(prefix))
            .count()
    }

    /// Receives (and deletes) every message waiting on the generation queue.
    pub async fn drain_queue(&self) -> Vec<Value> {
        drain(&self.state.aws.sqs, &self.state.config.queue_url).await
    }

    pub async fn grant(&self, user: &str, amount: i64, expires_at: Option<i64>) -> String {
        let lot = ulid::Ulid::new().to_string();
        shared::ledger::grant(
            self.ddb(),
            self.table(),
            &shared::ledger::Grant {
                user_id: user,
                lot_id: &lot,
                amount,
                expires_at_secs: expires_at,
                source: "test",
            },
            vec![],
        )
        .await
        .unwrap();
        lot
    }

    pub async fn account(&self, user: &str) -> shared::ledger::Account {
        shared::ledger::get_account(self.ddb(), self.table(), user)
            .await
            .unwrap()
            .expect("account exists")
    }

    /// Asserts conservation and that the ledger rebuilds the account item.
    pub async fn assert_conserved(&self, user: &str) -> shared::ledger::Account {
        let account = self.account(user).await;
        assert!(account.is_conserved(), "not conserved: {account:?}");
        let rebuilt = shared::ledger::rebuild_from_ledger(self.ddb(), self.table(), user)
            .await
            .unwrap();
        assert_eq!(
            rebuilt,
            shared::ledger::Balances::of(&account),
            "ledger disagrees"
        );
        account
    }
}

/// Receives (and deletes) every message waiting on a queue; returns their JSON bodies.
pub async fn drain(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> Vec<Value> {
    let mut bodies = Vec::new();
    loop {
        let out = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap();
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            return bodies;
        }
        for m in messages {
            bodies.push(serde_json::from_str(m.body().unwrap()).unwrap());
            sqs.delete_message()
                .queue_url(queue_url)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
}

/// A DynamoDB fault the moto launcher injects (scripts/dynamodb_faults.py).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 400 ThrottlingException.
    Throttling,
    /// 400 ProvisionedThroughputExceededException.
    ProvisionedThroughput,
    /// 400 TransactionCanceledException, every reason TransactionConflict.
    Conflict,
    /// 400 TransactionInProgressException.
    InProgress,
    /// 500 InternalServerError.
    Internal,
    /// The request is applied, then answered with a 500.
    LostResponse,
    /// The request is applied and its answer held back past the SDK's operation timeout.
    Stall,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Self::Throttling => "throttling",
            Self::ProvisionedThroughput => "provisioned_throughput",
            Self::Conflict => "conflict",
            Self::InProgress => "in_progress",
            Self::Internal => "internal",
            Self::LostResponse => "lost_response",
            Self::Stall => "stall",
        }
    }
}

impl World {
    /// Arms a fault on this world's table: after `skip` matching `operation` calls, the next
    /// `count` are answered with `fault`.
    pub async fn inject(&self, operation: &str, fault: Fault, skip: u32, count: u32) {
        self.inject_into(operation, "", fault, skip, count).await
    }

    /// As [`World::inject`], counting only the `operation` calls whose request mentions
    /// `containing` (an attribute or a value): one write among several of the same kind.
    pub async fn inject_into(
        &self,
        operation: &str,
        containing: &str,
        fault: Fault,
        skip: u32,
        count: u32,
    ) {
        let rule = serde_json::json!({
            "table": self.table(), "operation": operation, "fault": fault.name(),
            "skip": skip, "count": count, "containing": containing,
        });
        let answer = reqwest::Client::new()
            .post(format!("{}/_faults", endpoint()))
            .json(&rule)
            .send()
            .await
            .expect("the moto launcher answers");
        assert!(answer.status().is_success(), "fault not armed: {answer:?}");
    }

    /// How many calls the faults armed on this world's table have injected, in all.
    pub async fn injected(&self) -> u64 {
        let rules: Vec<Value> = reqwest::Client::new()
            .get(format!("{}/_faults", endpoint()))
            .send()
            .await
            .expect("the moto launcher answers")
            .json()
            .await
            .expect("a JSON list of rules");
        rules
            .iter()
            .filter(|r| r["table"] == self.table())
            .map(|r| r["injected"].as_u64().unwrap_or_default())
            .sum()
    }

    /// Drops every fault armed on this world's table.
    pub async fn clear_faults(&self) {
        reqwest::Client::new()
            .delete(format!("{}/_faults?table={}", endpoint(), self.table()))
            .send()
            .await
            .expect("the moto launcher answers");
    }
}
