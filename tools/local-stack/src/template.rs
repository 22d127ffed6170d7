//! Reads template.yaml: the functions (binary, timeout, environment), their events (HttpApi
//! routes, SQS sources, schedules), the HTTP API's authorizer and CORS settings, and the
//! DynamoDB tables, SQS queues and S3 buckets to create. Intrinsic functions (`!Ref`, `!GetAtt`,
//! `!Sub`, `!Join`) are resolved by a [`Resolver`] against the local resources.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde_yaml::Value;

/// The stack name used to resolve `AWS::StackName` and to prefix resource names.
pub const STACK_NAME: &str = "local";
/// The region everything local lives in.
pub const REGION: &str = "us-east-1";
/// moto's default account id.
pub const ACCOUNT_ID: &str = "123456789012";

/// An error reading the template.
#[derive(Debug)]
pub struct TemplateError(pub String);

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "template.yaml: {}", self.0)
    }
}

impl std::error::Error for TemplateError {}

fn err(message: impl Into<String>) -> TemplateError {
    TemplateError(message.into())
}

/// A parsed template.
#[derive(Clone, Debug)]
pub struct Template {
    /// Parameter defaults.
    pub parameters: BTreeMap<String, String>,
    /// Every resource by logical id.
    pub resources: BTreeMap<String, Resource>,
    /// `Globals.Function`.
    pub globals_function: Value,
}

/// One resource.
#[derive(Clone, Debug)]
pub struct Resource {
    /// `Type`.
    pub kind: String,
    /// `Properties` (a mapping, or null).
    pub properties: Value,
    /// `Metadata` (a mapping, or null).
    pub metadata: Value,
}

/// A function of the template with a binary of the workspace.
#[derive(Clone, Debug, PartialEq)]
pub struct Function {
    /// Logical id (`GeneratorFunction`).
    pub logical_id: String,
    /// `Metadata.BuildProperties.Binary`: the cargo binary (`generator`).
    pub binary: String,
    /// Timeout in seconds (the function's, or the global one, or Lambda's default 3).
    pub timeout_secs: u64,
    /// Environment variables, unresolved (global ones overridden by the function's).
    pub environment: BTreeMap<String, Value>,
}

/// An HttpApi route.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    /// Upper-case method, or `ANY`.
    pub method: String,
    /// Path template (`/api/sessions/{id}`).
    pub path: String,
    /// Binary of the function that serves it.
    pub binary: String,
    /// Whether the route needs a JWT (false for `Auth: {Authorizer: NONE}`).
    pub authorized: bool,
}

impl Route {
    /// The API Gateway route key (`GET /api/sessions/{id}`).
    pub fn key(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// An SQS event source mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqsSource {
    /// Event name in the template (`GenerationQueue`).
    pub event: String,
    /// Binary of the function it feeds.
    pub binary: String,
    /// Logical id of the queue.
    pub queue: String,
    /// `BatchSize` (default 10).
    pub batch_size: u32,
    /// `MaximumBatchingWindowInSeconds` (default 0).
    pub batching_window_secs: u32,
    /// `FunctionResponseTypes` has `ReportBatchItemFailures`.
    pub report_batch_item_failures: bool,
    /// `Enabled` (default true).
    pub enabled: bool,
}

/// A schedule (`ScheduleV2` or `Schedule`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Event name in the template.
    pub event: String,
    /// Binary of the function it invokes.
    pub binary: String,
    /// `ScheduleExpression` / `Schedule`.
    pub expression: String,
    /// `Input`, verbatim, when given.
    pub input: Option<String>,
    /// `ScheduleV2` (EventBridge Scheduler) or `Schedule` (EventBridge rule).
    pub v2: bool,
    /// Enabled.
    pub enabled: bool,
}

/// A DynamoDB table to create.
#[derive(Clone, Debug)]
pub struct TableSpec {
    /// Logical id.
    pub logical_id: String,
    /// Properties (`KeySchema`, `AttributeDefinitions`, `GlobalSecondaryIndexes`, ...).
    pub properties: Value,
}

/// An SQS queue to create.
#[derive(Clone, Debug)]
pub struct QueueSpec {
    /// Logical id.
    pub logical_id: String,
    /// Properties.
    pub properties: Value,
    /// Logical id of the queue its `RedrivePolicy` points at, if any.
    pub dead_letter_target: Option<String>,
}

/// The HTTP API's settings that the gateway plays.
#[derive(Clone, Debug, Default)]
pub struct HttpApiSpec {
    /// `Auth.Authorizers.<default>.JwtConfiguration.issuer`, unresolved.
    pub issuer: Option<Value>,
    /// `...JwtConfiguration.audience`, unresolved.
    pub audience: Vec<Value>,
    /// `CorsConfiguration`, unresolved.
    pub cors: Option<Value>,
}

impl Template {
    /// Parses the template's text.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let root: Value =
            serde_yaml::from_str(text).map_err(|e| err(format!("not valid YAML: {e}")))?;
        let mut parameters = BTreeMap::new();
        if let Some(map) = root.get("Parameters").and_then(Value::as_mapping) {
            for (name, spec) in map {
                let Some(name) = name.as_str() else { continue };
                if let Some(default) = spec.get("Default").and_then(scalar) {
                    parameters.insert(name.to_owned(), default);
                }
            }
        }
        let mut resources = BTreeMap::new();
        let map = root
            .get("Resources")
            .and_then(Value::as_mapping)
            .ok_or_else(|| err("no Resources"))?;
        for (id, res) in map {
            let id = id
                .as_str()
                .ok_or_else(|| err("a resource id is not a string"))?;
            let kind = res
                .get("Type")
                .and_then(Value::as_str)
                .ok_or_else(|| err(format!("resource {id} has no Type")))?;
            resources.insert(
                id.to_owned(),
                Resource {
                    kind: kind.to_owned(),
                    properties: res.get("Properties").cloned().unwrap_or(Value::Null),
                    metadata: res.get("Metadata").cloned().unwrap_or(Value::Null),
                },
            );
        }
        let globals_function = root
            .get("Globals")
            .and_then(|g| g.get("Function"))
            .cloned()
            .unwrap_or(Value::Null);
        Ok(Self {
            parameters,
            resources,
            globals_function,
        })
    }

    /// Reads and parses a template file.
    pub fn load(path: &std::path::Path) -> Result<Self, TemplateError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text)
    }

    fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = (&'a String, &'a Resource)> {
        self.resources.iter().filter(move |(_, r)| r.kind == kind)
    }

    /// Serverless functions with a `Metadata.BuildProperties.Binary`, and the ids of those
    /// without one (they cannot be run locally).
    pub fn functions(&self) -> (Vec<Function>, Vec<String>) {
        let mut found = Vec::new();
        let mut without_binary = Vec::new();
        for (id, res) in self.of_kind("AWS::Serverless::Function") {
            let Some(binary) = res
                .metadata
                .get("BuildProperties")
                .and_then(|b| b.get("Binary"))
                .and_then(Value::as_str)
            else {
                without_binary.push(id.clone());
                continue;
            };
            let timeout_secs = res
                .properties
                .get("Timeout")
                .or_else(|| self.globals_function.get("Timeout"))
                .and_then(|t| scalar(t).and_then(|s| s.parse().ok()))
                .unwrap_or(3);
            let mut environment = BTreeMap::new();
            for source in [&self.globals_function, &res.properties] {
                if let Some(vars) = source
                    .get("Environment")
                    .and_then(|e| e.get("Variables"))
                    .and_then(Value::as_mapping)
                {
                    for (k, v) in vars {
                        if let Some(k) = k.as_str() {
                            environment.insert(k.to_owned(), v.clone());
                        }
                    }
                }
            }
            found.push(Function {
                logical_id: id.clone(),
                binary: binary.to_owned(),
                timeout_secs,
                environment,
            });
        }
        (found, without_binary)
    }

    fn function_binary(&self, id: &str) -> Option<String> {
        self.resources
            .get(id)?
            .metadata
            .get("BuildProperties")?
            .get("Binary")?
            .as_str()
            .map(str::to_owned)
    }

    fn events(&self) -> Vec<(String, String, &Value)> {
        let mut out = Vec::new();
        for (id, res) in self.of_kind("AWS::Serverless::Function") {
            let Some(binary) = self.function_binary(id) else {
                continue;
            };
            if let Some(events) = res.properties.get("Events").and_then(Value::as_mapping) {
                for (name, event) in events {
                    out.push((
                        binary.clone(),
                        name.as_str().unwrap_or_default().to_owned(),
                        event,
                    ));
                }
            }
        }
        out
    }

    /// Every HttpApi route, sorted by route key.
    pub fn routes(&self) -> Vec<Route> {
        let mut routes = Vec::new();
        for (binary, _, event) in self.events() {
            if event.get("Type").and_then(Value::as_str) != Some("HttpApi") {
                continue;
            }
            let props = event.get("Properties").cloned().unwrap_or(Value::Null);
            let method = props
                .get("Method")
                .and_then(Value::as_str)
                .unwrap_or("ANY")
                .to_ascii_uppercase();
            let path = props
                .get("Path")
                .and_then(Value::as_str)
                .unwrap_or("/{proxy+}")
                .to_owned();
            let api = props.get("ApiId").and_then(ref_target);
            let authorizer = props
                .get("Auth")
                .and_then(|a| a.get("Authorizer"))
                .and_then(Value::as_str);
            let authorized = match authorizer {
                Some("NONE") => false,
                Some(_) => true,
                None => api
                    .and_then(|api| self.resources.get(&api))
                    .and_then(|r| r.properties.get("Auth"))
                    .and_then(|a| a.get("DefaultAuthorizer"))
                    .is_some(),
            };
            routes.push(Route {
                method,
                path,
                binary,
                authorized,
            });
        }
        routes.sort();
        routes
    }

    /// A scalar, or the default of the parameter a `!Ref` names.
    pub fn parameter_or_scalar(&self, value: &Value) -> Option<String> {
        scalar(value).or_else(|| {
            let (name, arg) = intrinsic(value)?;
            (name == "Ref")
                .then(|| self.parameters.get(arg.as_str()?).cloned())
                .flatten()
        })
    }

    /// Every SQS event source.
    pub fn sqs_sources(&self) -> Vec<SqsSource> {
        let mut out = Vec::new();
        for (binary, name, event) in self.events() {
            if event.get("Type").and_then(Value::as_str) != Some("SQS") {
                continue;
            }
            let props = event.get("Properties").cloned().unwrap_or(Value::Null);
            let Some(queue) = props.get("Queue").and_then(ref_target) else {
                continue;
            };
            let number = |key: &str, default: u32| {
                props
                    .get(key)
                    .and_then(|v| self.parameter_or_scalar(v))
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(default)
            };
            let report_batch_item_failures = props
                .get("FunctionResponseTypes")
                .and_then(Value::as_sequence)
                .is_some_and(|s| {
                    s.iter()
                        .any(|t| t.as_str() == Some("ReportBatchItemFailures"))
                });
            out.push(SqsSource {
                event: name,
                binary,
                queue,
                batch_size: number("BatchSize", 10),
                batching_window_secs: number("MaximumBatchingWindowInSeconds", 0),
                report_batch_item_failures,
                enabled: props
                    .get("Enabled")
                    .and_then(Value::as_bool)
                    .unwrap_or(true),
            });
        }
        out
    }

    /// Every schedule.
    pub fn schedules(&self) -> Vec<Schedule> {
        let mut out = Vec::new();
        for (binary, name, event) in self.events() {
            let v2 = match event.get("Type").and_then(Value::as_str) {
                Some("ScheduleV2") => true,
                Some("Schedule") => false,
                _ => continue,
            };
            let props = event.get("Properties").cloned().unwrap_or(Value::Null);
            let expression = props
                .get(if v2 { "ScheduleExpression" } else { "Schedule" })
                .and_then(|v| self.parameter_or_scalar(v))
                .unwrap_or_default();
            let enabled = if v2 {
                props.get("State").and_then(Value::as_str) != Some("DISABLED")
            } else {
                props
                    .get("Enabled")
                    .and_then(Value::as_bool)
                    .unwrap_or(true)
                    && props.get("State").and_then(Value::as_str) != Some("DISABLED")
            };
            out.push(Schedule {
                event: name,
                binary,
                expression,
                input: props.get("Input").and_then(scalar),
                v2,
                enabled,
            });
        }
        out
    }

    /// Event types of the template's functions that the local stack does not play.
    pub fn unsupported_events(&self) -> Vec<String> {
        self.events()
            .into_iter()
            .filter_map(|(binary, name, event)| {
                let kind = event.get("Type").and_then(Value::as_str).unwrap_or("?");
                (!matches!(kind, "HttpApi" | "SQS" | "ScheduleV2" | "Schedule"))
                    .then(|| format!("{binary}: {name} ({kind})"))
            })
            .collect()
    }

    /// Every DynamoDB table.
    pub fn tables(&self) -> Vec<TableSpec> {
        self.of_kind("AWS::DynamoDB::Table")
            .map(|(id, r)| TableSpec {
                logical_id: id.clone(),
                properties: r.properties.clone(),
            })
            .collect()
    }

    /// Every SQS queue, dead-letter targets first.
    pub fn queues(&self) -> Vec<QueueSpec> {
        let mut queues: Vec<QueueSpec> = self
            .of_kind("AWS::SQS::Queue")
            .map(|(id, r)| QueueSpec {
                logical_id: id.clone(),
                properties: r.properties.clone(),
                dead_letter_target: r
                    .properties
                    .get("RedrivePolicy")
                    .and_then(|p| p.get("deadLetterTargetArn"))
                    .and_then(ref_target),
            })
            .collect();
        // A queue is created after the queue its redrive policy points at.
        let mut ordered: Vec<QueueSpec> = Vec::with_capacity(queues.len());
        while !queues.is_empty() {
            let ready = queues.iter().position(|q| {
                q.dead_letter_target.as_ref().is_none_or(|t| {
                    ordered.iter().any(|o| &o.logical_id == t)
                        || !queues.iter().any(|x| &x.logical_id == t)
                })
            });
            // A redrive cycle cannot be created anyway; take the rest in order.
            let index = ready.unwrap_or(0);
            ordered.push(queues.remove(index));
        }
        ordered
    }

    /// Logical ids of every S3 bucket.
    pub fn buckets(&self) -> Vec<(String, Value)> {
        self.of_kind("AWS::S3::Bucket")
            .map(|(id, r)| (id.clone(), r.properties.clone()))
            .collect()
    }

    /// The HTTP API that the authorized routes go through (the first one with a default
    /// authorizer, else the first HTTP API).
    pub fn http_api(&self) -> HttpApiSpec {
        let apis: Vec<&Resource> = self
            .of_kind("AWS::Serverless::HttpApi")
            .map(|(_, r)| r)
            .collect();
        let api = apis
            .iter()
            .find(|r| {
                r.properties
                    .get("Auth")
                    .and_then(|a| a.get("DefaultAuthorizer"))
                    .is_some()
            })
            .or(apis.first());
        let Some(api) = api else {
            return HttpApiSpec::default();
        };
        let auth = api.properties.get("Auth");
        let jwt = auth
            .and_then(|a| a.get("DefaultAuthorizer"))
            .and_then(Value::as_str)
            .and_then(|name| auth?.get("Authorizers")?.get(name)?.get("JwtConfiguration"));
        HttpApiSpec {
            issuer: jwt.and_then(|j| j.get("issuer")).cloned(),
            audience: jwt
                .and_then(|j| j.get("audience"))
                .and_then(Value::as_sequence)
                .cloned()
                .unwrap_or_default(),
            cors: api.properties.get("CorsConfiguration").cloned(),
        }
    }
}

/// A scalar as text.
pub fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// An intrinsic function call: its name (`Ref`, `GetAtt`, `Sub`, ...) and argument, in either
/// the short (`!Ref X`) or the long (`{Ref: X}`, `{Fn::GetAtt: [X, Arn]}`) form.
pub fn intrinsic(value: &Value) -> Option<(String, &Value)> {
    match value {
        Value::Tagged(tagged) => {
            let tag = tagged.tag.to_string();
            Some((tag.trim_start_matches('!').to_owned(), &tagged.value))
        }
        Value::Mapping(map) if map.len() == 1 => {
            let (k, v) = map.iter().next()?;
            let k = k.as_str()?;
            if k == "Ref" {
                Some(("Ref".to_owned(), v))
            } else {
                k.strip_prefix("Fn::").map(|name| (name.to_owned(), v))
            }
        }
        _ => None,
    }
}

/// The logical id a `!Ref X` or `!GetAtt X.Attr` points at.
pub fn ref_target(value: &Value) -> Option<String> {
    let (name, arg) = intrinsic(value)?;
    match name.as_str() {
        "Ref" => arg.as_str().map(str::to_owned),
        "GetAtt" => get_att_parts(arg).map(|(id, _)| id),
        _ => None,
    }
}

fn get_att_parts(arg: &Value) -> Option<(String, String)> {
    match arg {
        Value::String(s) => s.split_once('.').map(|(a, b)| (a.to_owned(), b.to_owned())),
        Value::Sequence(seq) if seq.len() == 2 => {
            Some((seq[0].as_str()?.to_owned(), seq[1].as_str()?.to_owned()))
        }
        _ => None,
    }
}

/// `GenerationDLQ` → `generation-dlq`, `OutputBucket` → `output-bucket`.
pub fn kebab(logical_id: &str) -> String {
    let chars: Vec<char> = logical_id.chars().collect();
    let mut out = String::new();
    for (i, c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            let prev_lower = chars[i - 1].is_ascii_lowercase() || chars[i - 1].is_ascii_digit();
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            if prev_lower || (next_lower && chars[i - 1].is_ascii_uppercase()) {
                out.push('-');
            }
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// Resolves intrinsic functions against the local stack's resources.
#[derive(Clone, Debug, Default)]
pub struct Resolver {
    /// `!Ref` values: parameters, pseudo parameters and resources.
    pub refs: HashMap<String, String>,
    /// `!GetAtt` values, by (logical id, attribute).
    pub attrs: HashMap<(String, String), String>,
}

impl Resolver {
    /// A resolver with the template's parameter defaults and the pseudo parameters.
    pub fn new(template: &Template) -> Self {
        let mut refs: HashMap<String, String> = template
            .parameters
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in [
            ("AWS::Region", REGION),
            ("AWS::AccountId", ACCOUNT_ID),
            ("AWS::StackName", STACK_NAME),
            ("AWS::Partition", "aws"),
            ("AWS::URLSuffix", "amazonaws.com"),
            (
                "AWS::StackId",
                "arn:aws:cloudformation:us-east-1:123456789012:stack/local/0",
            ),
        ] {
            refs.insert(k.to_owned(), v.to_owned());
        }
        Self {
            refs,
            attrs: HashMap::new(),
        }
    }

    /// Resolves a value to text.
    pub fn resolve(&self, value: &Value) -> Result<String, TemplateError> {
        if let Some(text) = scalar(value) {
            return Ok(text);
        }
        let (name, arg) =
            intrinsic(value).ok_or_else(|| err(format!("cannot resolve {value:?}")))?;
        match name.as_str() {
            "Ref" => {
                let id = arg.as_str().ok_or_else(|| err("!Ref needs a name"))?;
                self.refs
                    .get(id)
                    .cloned()
                    .ok_or_else(|| err(format!("!Ref {id}: unknown locally")))
            }
            "GetAtt" => {
                let (id, attr) =
                    get_att_parts(arg).ok_or_else(|| err(format!("bad !GetAtt {arg:?}")))?;
                self.attrs
                    .get(&(id.clone(), attr.clone()))
                    .cloned()
                    .ok_or_else(|| err(format!("!GetAtt {id}.{attr}: unknown locally")))
            }
            "Sub" => {
                let (text, vars) = match arg {
                    Value::String(s) => (s.clone(), None),
                    Value::Sequence(seq) if seq.len() == 2 => (
                        seq[0]
                            .as_str()
                            .ok_or_else(|| err("!Sub needs a string"))?
                            .to_owned(),
                        seq[1].as_mapping(),
                    ),
                    _ => return Err(err(format!("bad !Sub {arg:?}"))),
                };
                self.substitute(&text, vars)
            }
            "Join" => {
                let seq = arg
                    .as_sequence()
                    .filter(|s| s.len() == 2)
                    .ok_or_else(|| err("bad !Join"))?;
                let delimiter = seq[0].as_str().unwrap_or_default();
                let parts = seq[1].as_sequence().ok_or_else(|| err("bad !Join list"))?;
                let parts: Result<Vec<String>, _> = parts.iter().map(|p| self.resolve(p)).collect();
                Ok(parts?.join(delimiter))
            }
            other => Err(err(format!("!{other} is not resolved locally"))),
        }
    }

    fn substitute(
        &self,
        text: &str,
        vars: Option<&serde_yaml::Mapping>,
    ) -> Result<String, TemplateError> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| err(format!("unclosed ${{ in {text:?}")))?;
            let name = &after[..end];
            if let Some(literal) = name.strip_prefix('!') {
                out.push_str("${");
                out.push_str(literal);
                out.push('}');
            } else if let Some(v) = vars.and_then(|m| m.get(name)) {
                out.push_str(&self.resolve(v)?);
            } else if let Some((id, attr)) = name.split_once('.') {
                let value = self
                    .attrs
                    .get(&(id.to_owned(), attr.to_owned()))
                    .ok_or_else(|| err(format!("${{{name}}}: unknown locally")))?;
                out.push_str(value);
            } else {
                let value = self
                    .refs
                    .get(name)
                    .ok_or_else(|| err(format!("${{{name}}}: unknown locally")))?;
                out.push_str(value);
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEMPLATE: &str = r#"
Parameters:
  Cap:
    Type: Number
    Default: 4
Globals:
  Function:
    Timeout: 10
    Environment:
      Variables:
        TABLE_NAME: !Ref Table
        CAP: !Ref Cap
Resources:
  Api:
    Type: AWS::Serverless::HttpApi
    Properties:
      Auth:
        DefaultAuthorizer: Jwt
        Authorizers:
          Jwt:
            JwtConfiguration:
              issuer: !Sub "https://issuer/${AWS::Region}"
              audience: [!Ref Client]
  Fn:
    Type: AWS::Serverless::Function
    Metadata:
      BuildProperties:
        Binary: fn
    Properties:
      Timeout: 60
      Environment:
        Variables:
          DLQ_URL: !Ref Dlq
      Events:
        Get:
          Type: HttpApi
          Properties:
            ApiId: !Ref Api
            Method: get
            Path: /things/{id}
        Health:
          Type: HttpApi
          Properties:
            ApiId: !Ref Api
            Method: GET
            Path: /health
            Auth:
              Authorizer: NONE
        Work:
          Type: SQS
          Properties:
            Queue: !GetAtt Queue.Arn
            BatchSize: 5
            FunctionResponseTypes: [ReportBatchItemFailures]
        Tick:
          Type: ScheduleV2
          Properties:
            ScheduleExpression: rate(1 minute)
  NoBinary:
    Type: AWS::Serverless::Function
    Properties: {}
  Queue:
    Type: AWS::SQS::Queue
    Properties:
      RedrivePolicy:
        deadLetterTargetArn: {"Fn::GetAtt": [Dlq, Arn]}
        maxReceiveCount: 3
  Dlq:
    Type: AWS::SQS::Queue
  Table:
    Type: AWS::DynamoDB::Table
"#;

    #[test]
    fn functions_events_and_resources_are_read() {
        let t = Template::parse(TEMPLATE).unwrap();
        let (functions, without) = t.functions();
        assert_eq!(without, vec!["NoBinary"]);
        assert_eq!(functions.len(), 1);
        let f = &functions[0];
        assert_eq!((f.binary.as_str(), f.timeout_secs), ("fn", 60));
        assert_eq!(
            f.environment.keys().collect::<Vec<_>>(),
            ["CAP", "DLQ_URL", "TABLE_NAME"]
        );
        let routes = t.routes();
        assert_eq!(
            routes
                .iter()
                .map(|r| (r.key(), r.authorized))
                .collect::<Vec<_>>(),
            [
                ("GET /health".to_owned(), false),
                ("GET /things/{id}".to_owned(), true)
            ]
        );
        let sqs = t.sqs_sources();
        assert_eq!(sqs[0].queue, "Queue");
        assert_eq!(sqs[0].batch_size, 5);
        assert!(sqs[0].report_batch_item_failures);
        assert_eq!(t.schedules()[0].expression, "rate(1 minute)");
        let queues: Vec<_> = t.queues().into_iter().map(|q| q.logical_id).collect();
        assert_eq!(queues, ["Dlq", "Queue"]);
        assert_eq!(t.tables()[0].logical_id, "Table");
    }

    #[test]
    fn intrinsics_resolve() {
        let t = Template::parse(TEMPLATE).unwrap();
        let mut r = Resolver::new(&t);
        r.refs.insert("Table".into(), "local-table".into());
        r.attrs
            .insert(("Dlq".into(), "Arn".into()), "arn:dlq".into());
        let f = &t.functions().0[0];
        assert_eq!(
            r.resolve(&f.environment["TABLE_NAME"]).unwrap(),
            "local-table"
        );
        assert_eq!(r.resolve(&f.environment["CAP"]).unwrap(), "4");
        assert!(r.resolve(&f.environment["DLQ_URL"]).is_err());
        let api = t.http_api();
        assert_eq!(
            r.resolve(api.issuer.as_ref().unwrap()).unwrap(),
            "https://issuer/us-east-1"
        );
        let sub: Value = serde_yaml::from_str(r#"!Sub "${Dlq.Arn}/x/${!Literal}""#).unwrap();
        assert_eq!(r.resolve(&sub).unwrap(), "arn:dlq/x/${Literal}");
    }

    #[test]
    fn names_are_kebab_cased() {
        assert_eq!(kebab("GenerationDLQ"), "generation-dlq");
        assert_eq!(kebab("OutputBucket"), "output-bucket");
        assert_eq!(kebab("Table"), "table");
        assert_eq!(kebab("DLQAlarm"), "dlq-alarm");
    }
}
