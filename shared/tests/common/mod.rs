//! An isolated world per test: its own table, queues and bucket on the moto server named by
//! `MOTO_ENDPOINT` (started by `scripts/with-moto.sh`), reached through the real AWS SDK.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aws_config::{BehaviorVersion, Region};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType,
};
use aws_sdk_sqs::types::QueueAttributeName;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use lambda_http::{Body, Request, Response};
use serde_json::{json, Value};
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

pub struct World {
    pub state: AppState,
    pub calls: CallCounter,
    pub dlq_url: String,
}

pub fn endpoint() -> String {
    std::env::var("MOTO_ENDPOINT").expect(
        "MOTO_ENDPOINT is not set: run the tests with `make test` (scripts/with-moto.sh starts moto)",
    )
}

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
                aws_sdk_dynamodb::config::Builder::from(&sdk)
                    .interceptor(calls.clone())
                    .build(),
            ),
            sqs: aws_sdk_sqs::Client::from_conf(
                aws_sdk_sqs::config::Builder::from(&sdk)
                    .interceptor(calls.clone())
                    .build(),
            ),
            s3: plain.s3.clone(),
        };
        let prefix = format!("t{}", ulid::Ulid::new().to_string().to_lowercase());
        let table = format!("{prefix}-table");
        create_table(&plain.dynamodb, &table).await;
        let dlq_url = plain
            .sqs
            .create_queue()
            .queue_name(format!("{prefix}-dlq"))
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        let dlq_arn = plain
            .sqs
            .get_queue_attributes()
            .queue_url(&dlq_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap()
            .attributes
            .unwrap()[&QueueAttributeName::QueueArn]
            .clone();
        let queue_url = plain
            .sqs
            .create_queue()
            .queue_name(format!("{prefix}-queue"))
            .attributes(QueueAttributeName::VisibilityTimeout, "30")
            .attributes(
                QueueAttributeName::RedrivePolicy,
                json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "3"}).to_string(),
            )
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        let bucket = format!("{prefix}-bucket");
        plain
            .s3
            .create_bucket()
            .bucket(&bucket)
            .send()
            .await
            .unwrap();
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

pub async fn create_table(ddb: &aws_sdk_dynamodb::Client, table: &str) {
    let attr = |name: &str, t: ScalarAttributeType| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(t)
            .build()
            .unwrap()
    };
    let key = |name: &str, t: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(t)
            .build()
            .unwrap()
    };
    let gsi = |name: &str, hash: &str, range: &str| {
        GlobalSecondaryIndex::builder()
            .index_name(name)
            .key_schema(key(hash, KeyType::Hash))
            .key_schema(key(range, KeyType::Range))
            .projection(
                Projection::builder()
                    .projection_type(ProjectionType::All)
                    .build(),
            )
            .build()
            .unwrap()
    };
    ddb.create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr("pk", ScalarAttributeType::S))
        .attribute_definitions(attr("sk", ScalarAttributeType::S))
        .attribute_definitions(attr("due_pk", ScalarAttributeType::S))
        .attribute_definitions(attr("due_at", ScalarAttributeType::N))
        .attribute_definitions(attr("open_pk", ScalarAttributeType::S))
        .attribute_definitions(attr("open_at", ScalarAttributeType::N))
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .global_secondary_indexes(gsi("due", "due_pk", "due_at"))
        .global_secondary_indexes(gsi("open", "open_pk", "open_at"))
        .send()
        .await
        .unwrap();
}

/// Claims of a plain user.
pub fn user(sub: &str) -> Option<Value> {
    Some(json!({"sub": sub, "email": format!("{sub}@example.com")}))
}

/// Claims of an admin.
pub fn admin(sub: &str) -> Option<Value> {
    Some(json!({"sub": sub, "cognito:groups": "[admin]"}))
}

/// An API Gateway HTTP API (payload v2) event, as the gateway would send it.
pub struct Event {
    pub route: &'static str,
    pub path: String,
    pub body: Option<String>,
    pub claims: Option<Value>,
    pub headers: HashMap<String, String>,
    pub query: HashMap<String, String>,
    pub path_params: HashMap<String, String>,
}

impl Event {
    pub fn new(route: &'static str, claims: Option<Value>) -> Self {
        let path = route.split_once(' ').unwrap().1.to_owned();
        Self {
            route,
            path,
            body: None,
            claims,
            headers: HashMap::new(),
            query: HashMap::new(),
            path_params: HashMap::new(),
        }
    }

    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = Some(body.into());
        self
    }

    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.insert(k.to_owned(), v.to_owned());
        self
    }

    pub fn query(mut self, k: &str, v: &str) -> Self {
        self.query.insert(k.to_owned(), v.to_owned());
        self
    }

    pub fn path_param(mut self, k: &str, v: &str) -> Self {
        self.path = self.path.replace(&format!("{{{k}}}"), v);
        self.path_params.insert(k.to_owned(), v.to_owned());
        self
    }

    pub fn build(self) -> Request {
        let (method, _) = self.route.split_once(' ').unwrap();
        let mut headers = self.headers.clone();
        headers.insert("content-type".into(), "application/json".into());
        let raw_query = self
            .query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let mut context = json!({
            "accountId": "123456789012", "apiId": "local", "domainName": "localhost",
            "domainPrefix": "localhost", "requestId": ulid::Ulid::new().to_string(),
            "routeKey": self.route, "stage": "$default", "time": "22/Nov/2026:13:00:00 +0000",
            "timeEpoch": 1_795_000_000_000i64,
            "http": {"method": method, "path": self.path, "protocol": "HTTP/1.1",
                     "sourceIp": "127.0.0.1", "userAgent": "test"},
        });
        if let Some(claims) = &self.claims {
            context["authorizer"] = json!({"jwt": {"claims": claims, "scopes": null}});
        }
        let event = json!({
            "version": "2.0", "routeKey": self.route, "rawPath": self.path,
            "rawQueryString": raw_query, "headers": headers,
            "queryStringParameters": if self.query.is_empty() { Value::Null } else { json!(self.query) },
            "pathParameters": if self.path_params.is_empty() { Value::Null } else { json!(self.path_params) },
            "requestContext": context,
            "body": self.body, "isBase64Encoded": false,
        });
        lambda_http::request::from_str(&event.to_string()).expect("a valid payload v2 event")
    }
}

/// Status and JSON body of a response.
pub fn parts(response: Response<Body>) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = match response.body() {
        Body::Text(t) => serde_json::from_str(t).unwrap_or(Value::Null),
        Body::Binary(b) => serde_json::from_slice(b).unwrap_or(Value::Null),
        Body::Empty => Value::Null,
        _ => Value::Null,
    };
    (status, body)
}

pub fn image_body(prompt: &str) -> String {
    json!({"prompt": prompt}).to_string()
}

/// A generator wired to a mock provider and this world.
pub async fn generator_for(
    world: &World,
    mock: &mock_provider::MockHandle,
) -> std::sync::Arc<shared::generator::Generator> {
    generator_with_timeout(world, mock, std::time::Duration::from_secs(10)).await
}

pub async fn generator_with_timeout(
    world: &World,
    mock: &mock_provider::MockHandle,
    timeout: std::time::Duration,
) -> std::sync::Arc<shared::generator::Generator> {
    let config = shared::provider::ProviderConfig {
        base_url: mock.api_base(),
        request_timeout: timeout,
        connect_timeout: std::time::Duration::from_secs(2),
    };
    std::sync::Arc::new(shared::generator::Generator {
        app: world.state.clone(),
        provider: shared::provider::Client::new(&config, mock.api_key()),
        image_concurrency: 8,
        lease_ms: 60_000,
        first_check_ms: 0,
    })
}

/// Receives up to ten messages from a queue as an SQS Lambda event (without deleting them).
pub async fn receive_event(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
) -> (aws_lambda_events::event::sqs::SqsEvent, Vec<String>) {
    let out = sqs
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(10)
        .message_system_attribute_names(
            aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount,
        )
        .send()
        .await
        .unwrap();
    let mut event = aws_lambda_events::event::sqs::SqsEvent::default();
    let mut receipts = Vec::new();
    for m in out.messages.unwrap_or_default() {
        let mut record = aws_lambda_events::event::sqs::SqsMessage::default();
        record.message_id = m.message_id.clone();
        record.receipt_handle = m.receipt_handle.clone();
        record.body = m.body.clone();
        receipts.push(m.receipt_handle.unwrap_or_default());
        event.records.push(record);
    }
    (event, receipts)
}

/// Plays the event source mapping once: receive, invoke, delete what did not fail, and make
/// the failures visible again at once. Returns the ids reported as failed.
pub async fn deliver_once(
    world: &World,
    generator: &std::sync::Arc<shared::generator::Generator>,
) -> (usize, Vec<String>) {
    let sqs = &world.state.aws.sqs;
    let queue = &world.state.config.queue_url;
    let (event, receipts) = receive_event(sqs, queue).await;
    let ids: Vec<String> = event
        .records
        .iter()
        .map(|r| r.message_id.clone().unwrap())
        .collect();
    let count = ids.len();
    let response = shared::generator::handle_batch(generator.clone(), event).await;
    let failed: Vec<String> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    for (id, receipt) in ids.iter().zip(receipts) {
        if failed.contains(id) {
            sqs.change_message_visibility()
                .queue_url(queue)
                .receipt_handle(receipt)
                .visibility_timeout(0)
                .send()
                .await
                .unwrap();
        } else {
            sqs.delete_message()
                .queue_url(queue)
                .receipt_handle(receipt)
                .send()
                .await
                .unwrap();
        }
    }
    (count, failed)
}

/// Keys and content types of the objects in the world's bucket.
pub async fn objects(world: &World) -> Vec<(String, String)> {
    let s3 = &world.state.aws.s3;
    let bucket = &world.state.config.bucket;
    let list = s3.list_objects_v2().bucket(bucket).send().await.unwrap();
    let mut out = Vec::new();
    for object in list.contents.unwrap_or_default() {
        let key = object.key.unwrap();
        let head = s3
            .head_object()
            .bucket(bucket)
            .key(&key)
            .send()
            .await
            .unwrap();
        out.push((key, head.content_type.unwrap_or_default()));
    }
    out.sort();
    out
}

/// A sweeper wired to a mock provider and this world.
pub fn sweeper_for(
    world: &World,
    mock: &mock_provider::MockHandle,
    settings: shared::sweeper::Settings,
) -> shared::sweeper::Sweeper {
    let config = shared::provider::ProviderConfig {
        base_url: mock.api_base(),
        request_timeout: std::time::Duration::from_secs(10),
        connect_timeout: std::time::Duration::from_secs(2),
    };
    shared::sweeper::Sweeper {
        app: world.state.clone(),
        provider: shared::provider::Client::new(&config, mock.api_key()),
        settings,
    }
}

/// A deadline far enough away for any test run.
pub fn long_deadline() -> std::time::Instant {
    std::time::Instant::now() + std::time::Duration::from_secs(300)
}

/// Ledger entries of a user by kind.
pub async fn entry_count(world: &World, user: &str, kind: shared::ledger::EntryKind) -> usize {
    shared::ledger::entries_between(world.ddb(), world.table(), user, "0", "~")
        .await
        .unwrap()
        .iter()
        .filter(|e| e.kind == kind)
        .count()
}

/// `count` users, each with one video session rendering `task` and due now.
pub async fn rendering_sessions(
    world: &World,
    mock: &mock_provider::MockHandle,
    count: usize,
    prompt: &str,
) -> Vec<(String, String)> {
    use futures::StreamExt;
    use shared::ledger::{self, Reservation};
    use shared::provider::VideoTask;
    use shared::sessions::{self, Session, Status};
    let clock_ms = shared::clock::now_ms;
    let provider = sweeper_for(world, mock, shared::sweeper::Settings::default()).provider;
    futures::stream::iter(0..count)
        .map(|i| {
            let provider = provider.clone();
            async move {
                let user = format!("u{i}");
                world.grant(&user, 20, None).await;
                let task_id = provider
                    .create_task(&VideoTask {
                        model: "m",
                        prompt,
                        resolution: "480p",
                        ratio: "16:9",
                        duration: 5,
                        first_frame: None,
                    })
                    .await
                    .unwrap();
                let parsed = shared::generation::parse_video(
                    json!({"prompt": "p"}).to_string().as_bytes(),
                    shared::generation::Limits {
                        max_prompt_chars: 100,
                    },
                )
                .unwrap();
                let id = shared::table::keys::new_id();
                let mut session =
                    Session::queued(id.clone(), &user, "k".into(), parsed.request, clock_ms());
                session.status = Status::Rendering;
                session.attempt = 1;
                session.provider_task_id = Some(task_id);
                session.due_pk = Some(sessions::DUE_PK.into());
                session.due_at_ms = Some(clock_ms() - 1);
                let reservation = Reservation {
                    user_id: &user,
                    session_id: &id,
                    amount: session.credits_reserved,
                    model: &session.model,
                    inflight_cap: 10,
                };
                let put =
                    shared::table::put_new(world.table(), session.to_item().unwrap()).unwrap();
                ledger::reserve(world.ddb(), world.table(), &reservation, vec![put])
                    .await
                    .unwrap();
                (user, id)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await
}
