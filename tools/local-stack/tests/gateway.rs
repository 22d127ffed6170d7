//! The gateway serves exactly the HttpApi routes of template.yaml, as API Gateway does: the
//! route table equals the template's (read here independently of the crate's parser), every
//! route reaches its function with its route key and path parameters, authorized routes refuse
//! a missing, forged or expired token with 401 `{"message":"Unauthorized"}` without invoking
//! anything, and an unknown route is 404 `{"message":"Not Found"}`. The Lambda Invoke API is a
//! fake that records what it receives; nothing here needs moto.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use local_stack::client::{Client, Method};
use local_stack::gateway::{self, Gateway};
use local_stack::invoke::Invoker;
use local_stack::jwt::{now_secs, JwtConfig};
use local_stack::template::Template;
use serde_json::{json, Value};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// (route key, binary, authorized) of every HttpApi event, straight from the YAML.
fn template_routes() -> BTreeSet<(String, String, bool)> {
    let text = std::fs::read_to_string(root().join("template.yaml")).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let mut routes = BTreeSet::new();
    for (_, resource) in doc["Resources"].as_mapping().unwrap() {
        if resource["Type"].as_str() != Some("AWS::Serverless::Function") {
            continue;
        }
        let binary = resource["Metadata"]["BuildProperties"]["Binary"]
            .as_str()
            .expect("every function names its binary")
            .to_owned();
        let Some(events) = resource["Properties"]["Events"].as_mapping() else {
            continue;
        };
        for (_, event) in events {
            if event["Type"].as_str() != Some("HttpApi") {
                continue;
            }
            let p = &event["Properties"];
            let key = format!(
                "{} {}",
                p["Method"].as_str().unwrap().to_uppercase(),
                p["Path"].as_str().unwrap()
            );
            let public = p["Auth"]["Authorizer"].as_str() == Some("NONE");
            routes.insert((key, binary.clone(), !public));
        }
    }
    routes
}

#[derive(Default)]
struct Seen {
    calls: Vec<(String, Value)>,
}

/// A stand-in for `cargo lambda watch`: answers every invocation with the event's route key and
/// path parameters, the way a function would answer.
async fn fake_lambda(seen: Arc<Mutex<Seen>>) -> String {
    async fn invoke(
        State(seen): State<Arc<Mutex<Seen>>>,
        Path(function): Path<String>,
        body: String,
    ) -> axum::response::Response {
        let event: Value = serde_json::from_str(&body).unwrap();
        seen.lock()
            .unwrap()
            .calls
            .push((function.clone(), event.clone()));
        if function == "broken" {
            return axum::response::Response::builder()
                .status(500)
                .body(axum::body::Body::from(
                    r#"{"errorType":"Panic","errorMessage":"boom"}"#,
                ))
                .unwrap();
        }
        let answer = json!({
            "statusCode": 200,
            "headers": {"content-type": "application/json", "x-function": function},
            "cookies": ["seen=1"],
            "body": json!({
                "routeKey": event["routeKey"],
                "pathParameters": event["pathParameters"],
                "claims": event["requestContext"]["authorizer"]["jwt"]["claims"],
                "query": event["queryStringParameters"],
                "body": event["body"],
            }).to_string(),
            "isBase64Encoded": false,
        });
        axum::response::Response::new(axum::body::Body::from(answer.to_string()))
    }
    let app = axum::Router::new()
        .route(
            "/2015-03-31/functions/{function}/invocations",
            axum::routing::post(invoke),
        )
        .with_state(seen);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn jwt() -> JwtConfig {
    JwtConfig {
        key: "test-dev-key".into(),
        issuer: "https://issuer.local".into(),
        audience: "web".into(),
    }
}

async fn start(template: &Template, lambda: &str) -> Client {
    let mut routes = template.routes();
    routes.push(local_stack::template::Route {
        method: "GET".into(),
        path: "/__test/broken".into(),
        binary: "broken".into(),
        authorized: false,
    });
    let gw = Arc::new(Gateway {
        routes,
        jwt: jwt(),
        cors: None,
        timeouts: Default::default(),
        default_timeout: Duration::from_secs(10),
        invoker: Invoker::new(lambda),
        log: None,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(gateway::serve(listener, gw, std::future::pending()));
    Client::new(&format!("http://{addr}"))
}

fn concrete(path: &str) -> String {
    path.split('/')
        .map(
            |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => format!("value-of-{name}"),
                None => seg.to_owned(),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn the_gateway_route_table_is_the_template_s() {
    let template = Template::load(&root().join("template.yaml")).unwrap();
    let served: BTreeSet<(String, String, bool)> = template
        .routes()
        .into_iter()
        .map(|r| (r.key(), r.binary, r.authorized))
        .collect();
    let declared = template_routes();
    assert!(
        !declared.is_empty(),
        "template.yaml declares no HttpApi route"
    );
    assert_eq!(
        served, declared,
        "the gateway's routes differ from template.yaml's HttpApi events"
    );
}

#[tokio::test]
async fn every_template_route_reaches_its_function_as_api_gateway_sends_it() {
    let template = Template::load(&root().join("template.yaml")).unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let lambda = fake_lambda(seen.clone()).await;
    let client = start(&template, &lambda).await;
    let token = jwt().issue("alice", Some("alice@example.com"), &["admin".into()], 600);

    for (key, binary, authorized) in template_routes() {
        let (method, path) = key.split_once(' ').unwrap();
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let url = concrete(path);
        seen.lock().unwrap().calls.clear();

        if authorized {
            for bad in [
                None,
                Some("not-a-jwt".to_owned()),
                Some(
                    JwtConfig {
                        key: "someone-else".into(),
                        ..jwt()
                    }
                    .issue("alice", None, &[], 600),
                ),
                Some(jwt().sign(&json!({
                    "sub": "alice", "iss": jwt().issuer, "aud": jwt().audience,
                    "exp": now_secs() - 10,
                }))),
            ] {
                let r = client
                    .call(method.clone(), &url, bad.as_deref(), None, &[])
                    .await
                    .unwrap();
                assert_eq!(
                    (r.status, &r.body),
                    (401, &json!({"message": "Unauthorized"})),
                    "{key} with token {bad:?}"
                );
            }
            assert!(
                seen.lock().unwrap().calls.is_empty(),
                "{key}: a refused request reached the function"
            );
        }

        let body = (method != Method::GET).then(|| json!({"prompt": "x"}));
        let r = client
            .call(
                method.clone(),
                &format!("{url}?limit=2&tag=a&tag=b"),
                authorized.then_some(token.as_str()),
                body.as_ref(),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{key}: {}", r.body);
        let calls = seen.lock().unwrap().calls.clone();
        assert_eq!(calls.len(), 1, "{key}: invoked {calls:?}");
        let (function, event) = &calls[0];
        assert_eq!(function, &binary, "{key} reached the wrong function");
        assert_eq!(event["version"], "2.0");
        assert_eq!(event["routeKey"], key.as_str());
        assert_eq!(event["requestContext"]["routeKey"], key.as_str());
        assert_eq!(event["rawPath"], url.as_str());
        assert_eq!(event["requestContext"]["http"]["method"], method.as_str());
        assert_eq!(event["rawQueryString"], "limit=2&tag=a&tag=b");
        assert_eq!(
            event["queryStringParameters"],
            json!({"limit": "2", "tag": "a,b"})
        );
        let params: Vec<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        for name in &params {
            assert_eq!(
                event["pathParameters"][name],
                format!("value-of-{name}"),
                "{key}: pathParameters"
            );
        }
        if params.is_empty() {
            assert!(event.get("pathParameters").is_none(), "{key}");
        }
        let claims = &event["requestContext"]["authorizer"]["jwt"]["claims"];
        if authorized {
            assert_eq!(claims["sub"], "alice");
            assert_eq!(claims["email"], "alice@example.com");
            assert_eq!(claims["cognito:groups"], "[admin]");
            assert!(claims["exp"].is_string(), "claims are strings: {claims}");
        } else {
            assert!(claims.is_null(), "{key}: a public route carries no claims");
        }
        if let Some(body) = &body {
            assert_eq!(event["body"], body.to_string());
            assert_eq!(event["isBase64Encoded"], false);
        }
        // The function's answer is mapped back.
        assert_eq!(r.body["routeKey"], key.as_str());
    }

    let r = client.get("/api/nope", Some(&token)).await.unwrap();
    assert_eq!((r.status, r.body), (404, json!({"message": "Not Found"})));
    let r = client
        .call(Method::PATCH, "/api/sessions", Some(&token), None, &[])
        .await
        .unwrap();
    assert_eq!(r.status, 404, "a method the template does not declare");
    let r = client.get("/__test/broken", None).await.unwrap();
    assert_eq!(
        (r.status, r.body),
        (500, json!({"message": "Internal Server Error"})),
        "a function error is API Gateway's 500"
    );
}
