//! Creates the template's DynamoDB tables, SQS queues and S3 buckets on moto, through the same
//! AWS SDK the functions use, and records their names, URLs and ARNs in a [`Resolver`] so the
//! functions' environment (`!Ref Table`, `!GetAtt GenerationDLQ.Arn`, ...) resolves to them.

use std::collections::BTreeMap;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType,
    LocalSecondaryIndex, Projection, ProjectionType, ProvisionedThroughput, ScalarAttributeType,
    TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;
use serde::{Deserialize, Serialize};
use serde_yaml::Value;

use crate::template::{
    kebab, scalar, QueueSpec, Resolver, TableSpec, Template, ACCOUNT_ID, REGION, STACK_NAME,
};

/// What was created, for the state file and the functions' environment.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Created {
    /// Table names by logical id.
    pub tables: BTreeMap<String, String>,
    /// Queue URLs by logical id.
    pub queues: BTreeMap<String, String>,
    /// Queue ARNs by logical id.
    pub queue_arns: BTreeMap<String, String>,
    /// Bucket names by logical id.
    pub buckets: BTreeMap<String, String>,
    /// What the template asks for that moto is not asked to play (informational).
    #[serde(default)]
    pub not_emulated: Vec<String>,
}

/// Options of resource creation.
#[derive(Clone, Debug)]
pub struct Options {
    /// Overrides every queue's `VisibilityTimeout` (seconds).
    pub visibility_timeout: Option<u32>,
    /// Prefix of every name, and the stack name (`local`).
    pub prefix: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            visibility_timeout: None,
            prefix: STACK_NAME.to_owned(),
        }
    }
}

fn name_of(resolver: &Resolver, props: &Value, key: &str, logical_id: &str) -> String {
    props
        .get(key)
        .and_then(|v| resolver.resolve(v).ok())
        .unwrap_or_else(|| {
            let prefix = resolver
                .refs
                .get("AWS::StackName")
                .map(String::as_str)
                .unwrap_or(STACK_NAME);
            format!("{prefix}-{}", kebab(logical_id))
        })
}

fn list<'a>(props: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    props
        .get(key)
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
}

fn text(v: &Value, key: &str) -> String {
    v.get(key).and_then(scalar).unwrap_or_default()
}

fn key_schema(v: &Value) -> Result<Vec<KeySchemaElement>, String> {
    list(v, "KeySchema")
        .map(|k| {
            KeySchemaElement::builder()
                .attribute_name(text(k, "AttributeName"))
                .key_type(KeyType::from(text(k, "KeyType").as_str()))
                .build()
                .map_err(|e| e.to_string())
        })
        .collect()
}

fn projection(v: &Value) -> Projection {
    let p = v.get("Projection").cloned().unwrap_or(Value::Null);
    let kind = p
        .get("ProjectionType")
        .and_then(Value::as_str)
        .unwrap_or("ALL");
    let mut builder = Projection::builder().projection_type(ProjectionType::from(kind));
    for attr in list(&p, "NonKeyAttributes") {
        if let Some(a) = scalar(attr) {
            builder = builder.non_key_attributes(a);
        }
    }
    builder.build()
}

fn throughput(v: &Value) -> Option<ProvisionedThroughput> {
    let t = v.get("ProvisionedThroughput")?;
    let n = |k: &str| {
        t.get(k)
            .and_then(scalar)
            .and_then(|s| s.parse().ok())
            .unwrap_or(1)
    };
    ProvisionedThroughput::builder()
        .read_capacity_units(n("ReadCapacityUnits"))
        .write_capacity_units(n("WriteCapacityUnits"))
        .build()
        .ok()
}

/// The AWS SDK configuration for moto at `endpoint`: fixed test credentials and the template's
/// region, so nothing is read from the developer's AWS profile.
pub async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_config::Region::new(REGION))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "testing",
            "testing",
            None,
            None,
            "local-stack",
        ))
        .load()
        .await
}

/// Creates every table, queue and bucket of the template; returns what was created and a
/// resolver that knows them.
pub async fn create(
    template: &Template,
    sdk: &aws_config::SdkConfig,
    options: &Options,
) -> Result<(Created, Resolver), String> {
    let mut resolver = Resolver::new(template);
    resolver
        .refs
        .insert("AWS::StackName".into(), options.prefix.clone());
    // Names first: a name may be referenced by another resource's properties.
    name_resources(template, &mut resolver, &options.prefix);
    let mut creation = Creation {
        options,
        resolver,
        created: Created::default(),
        ddb: aws_sdk_dynamodb::Client::new(sdk),
        sqs: aws_sdk_sqs::Client::new(sdk),
        s3: aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(sdk)
                .force_path_style(true)
                .build(),
        ),
    };
    for table in template.tables() {
        creation.table(&table).await?;
    }
    for queue in template.queues() {
        creation.queue(&queue).await?;
    }
    for (id, props) in template.buckets() {
        creation.bucket(id, &props).await?;
    }
    let Creation {
        mut resolver,
        created,
        ..
    } = creation;
    other_arns(template, &mut resolver);
    Ok((created, resolver))
}

/// The name (`Ref`) of every resource, before any is created.
fn name_resources(template: &Template, resolver: &mut Resolver, prefix: &str) {
    for (id, res) in &template.resources {
        let fallback = format!("{prefix}-{}", kebab(id));
        let value = match res.kind.as_str() {
            "AWS::Serverless::Function" => res
                .metadata
                .get("BuildProperties")
                .and_then(|b| b.get("Binary"))
                .and_then(scalar)
                .unwrap_or(fallback),
            "AWS::Cognito::UserPool" => format!("{REGION}_{}", kebab(id).replace('-', "")),
            _ => fallback,
        };
        resolver.refs.entry(id.clone()).or_insert(value);
    }
}

/// ARNs of everything else that a function's environment might name.
fn other_arns(template: &Template, resolver: &mut Resolver) {
    for (id, res) in &template.resources {
        let name = resolver.refs.get(id).cloned().unwrap_or_default();
        let arn = match res.kind.as_str() {
            "AWS::Serverless::Function" => {
                format!("arn:aws:lambda:{REGION}:{ACCOUNT_ID}:function:{name}")
            }
            "AWS::SNS::Topic" => {
                // A topic's Ref is its ARN.
                let arn = format!("arn:aws:sns:{REGION}:{ACCOUNT_ID}:{name}");
                resolver.refs.insert(id.clone(), arn.clone());
                arn
            }
            "AWS::Cognito::UserPool" => {
                format!("arn:aws:cognito-idp:{REGION}:{ACCOUNT_ID}:userpool/{name}")
            }
            _ => continue,
        };
        resolver
            .attrs
            .entry((id.clone(), "Arn".into()))
            .or_insert(arn);
    }
}

/// One run of [`create`]: the clients, and what is known so far.
struct Creation<'a> {
    options: &'a Options,
    resolver: Resolver,
    created: Created,
    ddb: aws_sdk_dynamodb::Client,
    sqs: aws_sdk_sqs::Client,
    s3: aws_sdk_s3::Client,
}

impl Creation<'_> {
    /// Records the properties of `logical_id` that moto is not asked to play.
    fn not_emulated(&mut self, logical_id: &str, props: &Value, ignored: &[&str]) {
        for key in ignored {
            if props.get(key).is_some() {
                self.created
                    .not_emulated
                    .push(format!("{logical_id}.{key}"));
            }
        }
    }

    async fn table(&mut self, table: &TableSpec) -> Result<(), String> {
        let props = &table.properties;
        let name = name_of(&self.resolver, props, "TableName", &table.logical_id);
        table_request(self.ddb.create_table().table_name(&name), props)?
            .send()
            .await
            .map_err(|e| {
                format!(
                    "create table {name}: {}",
                    aws_sdk_dynamodb::error::DisplayErrorContext(e)
                )
            })?;
        if let Some(ttl) = props.get("TimeToLiveSpecification") {
            if ttl.get("Enabled").and_then(Value::as_bool) == Some(true) {
                self.enable_ttl(&name, ttl).await?;
            }
        }
        self.not_emulated(
            &table.logical_id,
            props,
            &[
                "DeletionProtectionEnabled",
                "PointInTimeRecoverySpecification",
                "SSESpecification",
                "StreamSpecification",
            ],
        );
        let arn = format!("arn:aws:dynamodb:{REGION}:{ACCOUNT_ID}:table/{name}");
        let id = &table.logical_id;
        self.resolver.refs.insert(id.clone(), name.clone());
        self.resolver.attrs.insert((id.clone(), "Arn".into()), arn);
        self.created.tables.insert(id.clone(), name);
        Ok(())
    }

    async fn enable_ttl(&self, name: &str, ttl: &Value) -> Result<(), String> {
        self.ddb
            .update_time_to_live()
            .table_name(name)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name(text(ttl, "AttributeName"))
                    .enabled(true)
                    .build()
                    .map_err(|e| e.to_string())?,
            )
            .send()
            .await
            .map_err(|e| {
                format!(
                    "ttl of {name}: {}",
                    aws_sdk_dynamodb::error::DisplayErrorContext(e)
                )
            })?;
        Ok(())
    }

    async fn queue(&mut self, queue: &QueueSpec) -> Result<(), String> {
        let props = &queue.properties;
        let fifo = props.get("FifoQueue").and_then(Value::as_bool) == Some(true);
        let mut name = name_of(&self.resolver, props, "QueueName", &queue.logical_id);
        if fifo && !name.ends_with(".fifo") {
            name.push_str(".fifo");
        }
        let request = self.sqs.create_queue().queue_name(&name);
        let url = self
            .queue_request(request, props)?
            .send()
            .await
            .map_err(|e| {
                format!(
                    "create queue {name}: {}",
                    aws_sdk_sqs::error::DisplayErrorContext(e)
                )
            })?
            .queue_url
            .ok_or("CreateQueue returned no URL")?;
        let arn = self.queue_arn(&name, &url).await?;
        let id = queue.logical_id.clone();
        let attrs = &mut self.resolver.attrs;
        attrs.insert((id.clone(), "Arn".into()), arn.clone());
        attrs.insert((id.clone(), "QueueName".into()), name.clone());
        attrs.insert((id.clone(), "QueueUrl".into()), url.clone());
        self.resolver.refs.insert(id.clone(), url.clone());
        self.created.queues.insert(id.clone(), url);
        self.created.queue_arns.insert(id, arn);
        Ok(())
    }

    /// The queue's attributes: the template's, the visibility override, the redrive policy.
    fn queue_request(
        &self,
        mut request: aws_sdk_sqs::operation::create_queue::builders::CreateQueueFluentBuilder,
        props: &Value,
    ) -> Result<aws_sdk_sqs::operation::create_queue::builders::CreateQueueFluentBuilder, String>
    {
        let resolver = &self.resolver;
        for (key, attr) in [
            ("DelaySeconds", QueueAttributeName::DelaySeconds),
            ("MaximumMessageSize", QueueAttributeName::MaximumMessageSize),
            (
                "MessageRetentionPeriod",
                QueueAttributeName::MessageRetentionPeriod,
            ),
            (
                "ReceiveMessageWaitTimeSeconds",
                QueueAttributeName::ReceiveMessageWaitTimeSeconds,
            ),
            ("VisibilityTimeout", QueueAttributeName::VisibilityTimeout),
            ("FifoQueue", QueueAttributeName::FifoQueue),
            (
                "ContentBasedDeduplication",
                QueueAttributeName::ContentBasedDeduplication,
            ),
        ] {
            if let Some(v) = props.get(key) {
                request = request.attributes(attr, resolver.resolve(v).map_err(|e| e.to_string())?);
            }
        }
        if let Some(seconds) = self.options.visibility_timeout {
            request =
                request.attributes(QueueAttributeName::VisibilityTimeout, seconds.to_string());
        }
        if let Some(redrive) = props.get("RedrivePolicy") {
            let target = redrive
                .get("deadLetterTargetArn")
                .ok_or("RedrivePolicy without deadLetterTargetArn")?;
            let arn = resolver.resolve(target).map_err(|e| e.to_string())?;
            let max = redrive
                .get("maxReceiveCount")
                .and_then(scalar)
                .unwrap_or_else(|| "10".into());
            request = request.attributes(
                QueueAttributeName::RedrivePolicy,
                serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": max}).to_string(),
            );
        }
        Ok(request)
    }

    async fn queue_arn(&self, name: &str, url: &str) -> Result<String, String> {
        Ok(self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| {
                format!(
                    "queue {name}: {}",
                    aws_sdk_sqs::error::DisplayErrorContext(e)
                )
            })?
            .attributes
            .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
            .unwrap_or_else(|| format!("arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{name}")))
    }

    async fn bucket(&mut self, id: String, props: &Value) -> Result<(), String> {
        let name = name_of(&self.resolver, props, "BucketName", &id);
        self.s3
            .create_bucket()
            .bucket(&name)
            .send()
            .await
            .map_err(|e| {
                format!(
                    "create bucket {name}: {}",
                    aws_sdk_s3::error::DisplayErrorContext(e)
                )
            })?;
        self.not_emulated(
            &id,
            props,
            &[
                "LifecycleConfiguration",
                "CorsConfiguration",
                "BucketEncryption",
            ],
        );
        let attrs = &mut self.resolver.attrs;
        attrs.insert((id.clone(), "Arn".into()), format!("arn:aws:s3:::{name}"));
        attrs.insert(
            (id.clone(), "DomainName".into()),
            format!("{name}.s3.amazonaws.com"),
        );
        self.resolver.refs.insert(id.clone(), name.clone());
        self.created.buckets.insert(id, name);
        Ok(())
    }
}

/// The CreateTable request: attributes, keys, billing and indexes as the template says.
fn table_request(
    mut request: aws_sdk_dynamodb::operation::create_table::builders::CreateTableFluentBuilder,
    props: &Value,
) -> Result<aws_sdk_dynamodb::operation::create_table::builders::CreateTableFluentBuilder, String> {
    for a in list(props, "AttributeDefinitions") {
        request = request.attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(text(a, "AttributeName"))
                .attribute_type(ScalarAttributeType::from(text(a, "AttributeType").as_str()))
                .build()
                .map_err(|e| e.to_string())?,
        );
    }
    request = request.set_key_schema(Some(key_schema(props)?));
    let billing = props
        .get("BillingMode")
        .and_then(Value::as_str)
        .unwrap_or("PROVISIONED");
    if billing == "PAY_PER_REQUEST" {
        request = request.billing_mode(BillingMode::PayPerRequest);
    } else {
        request = request
            .billing_mode(BillingMode::Provisioned)
            .set_provisioned_throughput(throughput(props));
    }
    for g in list(props, "GlobalSecondaryIndexes") {
        let mut b = GlobalSecondaryIndex::builder()
            .index_name(text(g, "IndexName"))
            .set_key_schema(Some(key_schema(g)?))
            .projection(projection(g));
        if billing != "PAY_PER_REQUEST" {
            b = b.set_provisioned_throughput(throughput(g));
        }
        request = request.global_secondary_indexes(b.build().map_err(|e| e.to_string())?);
    }
    for l in list(props, "LocalSecondaryIndexes") {
        request = request.local_secondary_indexes(
            LocalSecondaryIndex::builder()
                .index_name(text(l, "IndexName"))
                .set_key_schema(Some(key_schema(l)?))
                .projection(projection(l))
                .build()
                .map_err(|e| e.to_string())?,
        );
    }
    Ok(request)
}
