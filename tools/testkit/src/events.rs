//! API Gateway HTTP API (payload v2) events as the gateway sends them, and their answers.

use std::collections::HashMap;

use lambda_http::{Body, Request, Response};
use serde_json::{json, Value};

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

/// The answer of the function that serves the event's route (as API Gateway would pick it),
/// as status and JSON body.
pub async fn serve(state: &shared::AppState, event: Event) -> (u16, Value) {
    use shared::routes::{admin, api, enqueue};
    let route = event.route;
    let request = event.build();
    let response = if enqueue::ROUTES.contains(&route) {
        enqueue::handle(state, request).await
    } else if admin::ROUTES.contains(&route) {
        admin::handle(state, request).await
    } else {
        api::handle(state, request).await
    };
    parts(response)
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
