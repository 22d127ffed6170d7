//! How the template's settings reach the local processes: each function's environment (its
//! variables resolved against the resources created here, then the local endpoints), the
//! gateway's JWT authorizer and CORS, and the first event that warms each function up.

use std::collections::BTreeMap;

use serde_json::json;

use crate::gateway::{self, Cors};
use crate::jwt::JwtConfig;
use crate::resources::Created;
use crate::schedule;
use crate::template::{Function, QueueSpec, Resolver, Template, REGION};

/// The mock provider's API key.
pub const MOCK_KEY: &str = "mock-key";

/// The environment of every function: the template's variables (global and per function)
/// resolved against the local resources, then the local endpoints and credentials.
pub fn function_environment(
    functions: &[Function],
    queues: &[QueueSpec],
    resolver: &Resolver,
    created: &Created,
    moto_url: &str,
    provider_api: &str,
    extra: &[(String, String)],
) -> (BTreeMap<String, String>, Vec<String>) {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut notes = Vec::new();
    for f in functions {
        for (k, v) in &f.environment {
            match resolver.resolve(v) {
                Ok(value) => {
                    if let Some(old) = env.get(k).filter(|old| **old != value) {
                        notes.push(format!(
                            "{k} differs between functions ({old:?} vs {value:?} for {}); cargo lambda watch shares one environment, using {old:?}",
                            f.binary
                        ));
                    } else {
                        env.insert(k.clone(), value);
                    }
                }
                Err(e) => notes.push(format!("{}: {k} not set locally ({e})", f.binary)),
            }
        }
    }
    // A queue with a redrive policy is the work queue; the queue it points at is the DLQ.
    let work_queue = queues.iter().find(|q| q.dead_letter_target.is_some());
    let dead_letter_queue = work_queue.and_then(|q| q.dead_letter_target.clone());
    let mut defaults: Vec<(&str, Option<String>)> = vec![
        ("TABLE_NAME", created.tables.values().next().cloned()),
        (
            "QUEUE_URL",
            work_queue.and_then(|q| created.queues.get(&q.logical_id).cloned()),
        ),
        (
            "DLQ_URL",
            dead_letter_queue.and_then(|id| created.queues.get(&id).cloned()),
        ),
        ("BUCKET_NAME", created.buckets.values().next().cloned()),
    ];
    for (k, v) in defaults.drain(..) {
        if let Some(v) = v {
            env.entry(k.to_owned()).or_insert(v);
        }
    }
    env.entry("RUST_LOG".into())
        .or_insert_with(|| "info".into());
    for (k, v) in [
        ("AWS_ENDPOINT_URL", moto_url),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", REGION),
        ("AWS_DEFAULT_REGION", REGION),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("PROVIDER_BASE_URL", provider_api),
        ("PROVIDER_API_KEY", MOCK_KEY),
    ] {
        env.insert(k.to_owned(), v.to_owned());
    }
    for (k, v) in extra {
        env.insert(k.clone(), v.clone());
    }
    (env, notes)
}

/// The authorizer of the local gateway, from the template's JWT configuration.
pub fn jwt_config(template: &Template, resolver: &Resolver, key: String) -> JwtConfig {
    let api = template.http_api();
    let issuer = api
        .issuer
        .as_ref()
        .and_then(|i| resolver.resolve(i).ok())
        .unwrap_or_else(|| "https://local-stack.invalid/issuer".into());
    let audience = api
        .audience
        .first()
        .and_then(|a| resolver.resolve(a).ok())
        .unwrap_or_else(|| "local-stack".into());
    JwtConfig {
        key,
        issuer,
        audience,
    }
}

/// The API's CORS configuration, resolved.
pub fn cors(template: &Template, resolver: &Resolver) -> Option<Cors> {
    let c = template.http_api().cors?;
    let strings = |key: &str| -> Vec<String> {
        c.get(key)
            .and_then(|v| v.as_sequence())
            .into_iter()
            .flatten()
            .filter_map(|v| resolver.resolve(v).ok())
            .collect()
    };
    Some(Cors {
        allow_origins: strings("AllowOrigins"),
        allow_methods: strings("AllowMethods"),
        allow_headers: strings("AllowHeaders"),
        expose_headers: strings("ExposeHeaders"),
        max_age: c
            .get("MaxAge")
            .and_then(|v| resolver.resolve(v).ok())
            .and_then(|v| v.parse().ok()),
        allow_credentials: c.get("AllowCredentials").and_then(|v| v.as_bool()) == Some(true),
    })
}

/// A harmless event to start a function (and see that it starts): a call of a public route
/// (or an unauthenticated one, which the function refuses), an empty SQS batch, or a
/// scheduled event.
pub fn warm_up_event(template: &Template, binary: &str) -> Option<serde_json::Value> {
    let routes = template.routes();
    let route = routes
        .iter()
        .filter(|r| r.binary == binary)
        .min_by_key(|r| (r.authorized, r.path.contains('{')));
    if let Some(route) = route {
        let incoming = gateway::Incoming {
            method: route.method.replace("ANY", "GET"),
            raw_path: route.path.clone(),
            source_ip: "127.0.0.1".into(),
            headers: vec![("user-agent".into(), "local-stack warm-up".into())],
            ..Default::default()
        };
        return Some(gateway::build_event(
            route,
            &BTreeMap::new(),
            &incoming,
            None,
            &ulid::Ulid::new().to_string(),
            "localhost",
        ));
    }
    if template.sqs_sources().iter().any(|s| s.binary == binary) {
        return Some(json!({"Records": []}));
    }
    template
        .schedules()
        .into_iter()
        .find(|s| s.binary == binary)
        .map(|s| schedule::scheduled_event(&s))
}
