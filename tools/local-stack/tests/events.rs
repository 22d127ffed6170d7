//! The payload v2 events the gateway builds are the ones the real handlers accept: built by
//! `gateway::build_event` from an HTTP request and a verified token, parsed by `lambda_http`,
//! handled in-process by `shared::routes` against moto (tables, queues and bucket created from
//! template.yaml by the local stack's own resource code).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use lambda_http::{Body, Response};
use local_stack::gateway::{build_event, match_route, Incoming};
use local_stack::jwt::JwtConfig;
use local_stack::template::Template;
use serde_json::{json, Value};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn moto() -> String {
    std::env::var("MOTO_ENDPOINT").expect(
        "MOTO_ENDPOINT is not set: run the tests with `make test` (scripts/with-moto.sh starts moto)",
    )
}

struct World {
    template: Template,
    state: shared::AppState,
    jwt: JwtConfig,
}

impl World {
    async fn new() -> Self {
        let template = Template::load(&root().join("template.yaml")).unwrap();
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(moto())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .load()
            .await;
        let prefix = format!("ev{}", ulid::Ulid::new().to_string().to_lowercase());
        let (created, _) = local_stack::resources::create(
            &template,
            &sdk,
            &local_stack::resources::Options {
                prefix,
                ..Default::default()
            },
        )
        .await
        .expect("resources of template.yaml are created on moto");
        let queue = created
            .queues
            .iter()
            .find(|(id, _)| !id.to_ascii_lowercase().contains("dlq"))
            .map(|(_, url)| url.clone())
            .unwrap();
        let config = shared::config::Config::from_lookup(|name| match name {
            "TABLE_NAME" => created.tables.values().next().cloned(),
            "QUEUE_URL" => Some(queue.clone()),
            "BUCKET_NAME" => created.buckets.values().next().cloned(),
            _ => None,
        })
        .unwrap();
        let state = shared::AppState {
            config: Arc::new(config),
            aws: shared::aws::Clients::from_sdk_config(&sdk),
        };
        Self {
            template,
            state,
            jwt: JwtConfig {
                key: "k".into(),
                issuer: "https://issuer".into(),
                audience: "web".into(),
            },
        }
    }

    /// The event the gateway sends for `method path?query` with `body` and `token`.
    fn event(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<&Value>,
        token: Option<&str>,
    ) -> (String, lambda_http::Request) {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let routes = self.template.routes();
        let (route, params) = match_route(&routes, method, path)
            .unwrap_or_else(|| panic!("template.yaml has no route for {method} {path}"));
        let claims = match (route.authorized, token) {
            (true, Some(t)) => Some(self.jwt.verify(Some(&format!("Bearer {t}"))).unwrap()),
            _ => None,
        };
        let mut headers = vec![
            ("user-agent".to_owned(), "test".to_owned()),
            ("host".to_owned(), "127.0.0.1:9".to_owned()),
        ];
        if body.is_some() {
            headers.push(("content-type".into(), "application/json".into()));
        }
        let incoming = Incoming {
            method: method.into(),
            raw_path: path.into(),
            raw_query: query.into(),
            headers,
            body: body.map(|b| b.to_string().into_bytes()).unwrap_or_default(),
            source_ip: "127.0.0.1".into(),
        };
        let event = build_event(
            route,
            &params,
            &incoming,
            claims.as_ref(),
            "req-1",
            "127.0.0.1:9",
        );
        let request = lambda_http::request::from_str(&event.to_string())
            .unwrap_or_else(|e| panic!("lambda_http rejects the gateway's event: {e}\n{event}"));
        (route.binary.clone(), request)
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let (binary, request) = self.event(method, path, body, token);
        let response = match binary.as_str() {
            "api" => shared::routes::api::handle(&self.state, request).await,
            "admin" => shared::routes::admin::handle(&self.state, request).await,
            "enqueue" => shared::routes::enqueue::handle(&self.state, request).await,
            other => panic!("no in-process handler for function {other}"),
        };
        parts(response)
    }
}

fn parts(response: Response<Body>) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = match response.body() {
        Body::Text(t) => serde_json::from_str(t).unwrap_or(Value::Null),
        Body::Binary(b) => serde_json::from_slice(b).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    (status, body)
}

#[tokio::test]
async fn health_is_served_without_a_token() {
    let world = World::new().await;
    let (status, body) = world.call("GET", "/health", None, None).await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
}

#[tokio::test]
async fn claims_path_parameters_queries_and_bodies_reach_the_handlers() {
    let world = World::new().await;
    let user = format!("u{}", ulid::Ulid::new().to_string().to_lowercase());
    let admin = world.jwt.issue("ops", None, &["admin".into()], 600);
    let token = world.jwt.issue(&user, None, &[], 600);

    // The admin group claim, flattened to "[admin]" as API Gateway passes it, is understood.
    let grant = json!({"user_id": user, "amount": 40, "source": "test"});
    let (status, body) = world
        .call(
            "POST",
            "/api/admin/credits/grant",
            Some(&grant),
            Some(&admin),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, _) = world
        .call(
            "POST",
            "/api/admin/credits/grant",
            Some(&grant),
            Some(&token),
        )
        .await;
    assert_eq!(status, 403, "a user without the admin group");

    let (status, body) = world
        .call("GET", "/api/credits/balance", None, Some(&token))
        .await;
    assert_eq!((status, &body["available"]), (200, &json!(40)), "{body}");

    let (status, accepted) = world
        .call(
            "POST",
            "/api/images/seedream4/generate",
            Some(&json!({"prompt": "a lake", "n": 2, "size": "1K"})),
            Some(&token),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["session_id"].as_str().unwrap();
    let (status, session) = world
        .call("GET", &format!("/api/sessions/{id}"), None, Some(&token))
        .await;
    assert_eq!(
        (status, &session["status"]),
        (200, &json!("queued")),
        "{session}"
    );
    let (status, page) = world
        .call("GET", "/api/sessions?limit=1", None, Some(&token))
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1));

    // Another user's claims: the session does not exist for them.
    let other = world.jwt.issue("someone-else", None, &[], 600);
    let (status, _) = world
        .call("GET", &format!("/api/sessions/{id}"), None, Some(&other))
        .await;
    assert_eq!(status, 404);
}

#[test]
fn an_event_without_claims_is_refused_by_the_handler_not_passed_as_anonymous() {
    // The gateway never sends an authorized route without claims; if it did, the handler's
    // own check answers 401.
    let template = Template::load(&root().join("template.yaml")).unwrap();
    let routes = template.routes();
    let (route, params) = match_route(&routes, "GET", "/api/credits/balance").unwrap();
    let incoming = Incoming {
        method: "GET".into(),
        raw_path: "/api/credits/balance".into(),
        ..Default::default()
    };
    let event = build_event(route, &params, &incoming, None, "r", "localhost");
    assert!(event["requestContext"].get("authorizer").is_none());
    let request = lambda_http::request::from_str(&event.to_string()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let state = rt.block_on(async {
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url("http://127.0.0.1:9")
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "x", "x", None, None, "t",
            ))
            .load()
            .await;
        shared::AppState {
            config: Arc::new(
                shared::config::Config::from_lookup(|n| {
                    BTreeMap::from([
                        ("TABLE_NAME", "t"),
                        ("QUEUE_URL", "q"),
                        ("BUCKET_NAME", "b"),
                    ])
                    .get(n)
                    .map(|v| v.to_string())
                })
                .unwrap(),
            ),
            aws: shared::aws::Clients::from_sdk_config(&sdk),
        }
    });
    let (status, _) = parts(rt.block_on(shared::routes::api::handle(&state, request)));
    assert_eq!(status, 401);
}
