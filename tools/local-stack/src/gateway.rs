//! The local API Gateway (HTTP API, payload format 2.0): serves exactly the HttpApi routes of
//! template.yaml, checks the JWT of authorized routes (401 `{"message":"Unauthorized"}`), builds
//! the event API Gateway would send (route key, path parameters, claims in
//! `requestContext.authorizer.jwt.claims`), invokes the function through the Invoke API, and maps
//! its answer (`statusCode`, `headers`, `cookies`, `body`, `isBase64Encoded`) back to HTTP.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::invoke::{InvokeError, Invoker};
use crate::jwt::JwtConfig;
use crate::log::Logger;
use crate::template::Route;

/// Largest request body API Gateway accepts (10 MB).
pub const MAX_BODY: usize = 10 * 1024 * 1024;

/// The HTTP API's CORS configuration.
#[derive(Clone, Debug, Default)]
pub struct Cors {
    /// `AllowOrigins` (`*` allows any).
    pub allow_origins: Vec<String>,
    /// `AllowMethods`.
    pub allow_methods: Vec<String>,
    /// `AllowHeaders`.
    pub allow_headers: Vec<String>,
    /// `ExposeHeaders`.
    pub expose_headers: Vec<String>,
    /// `MaxAge`.
    pub max_age: Option<u64>,
    /// `AllowCredentials`.
    pub allow_credentials: bool,
}

impl Cors {
    fn allows(&self, origin: &str) -> bool {
        self.allow_origins.iter().any(|o| o == "*" || o == origin)
    }
}

/// Everything the gateway needs.
pub struct Gateway {
    /// The routes served (from template.yaml).
    pub routes: Vec<Route>,
    /// The authorizer.
    pub jwt: JwtConfig,
    /// CORS, when the API has it.
    pub cors: Option<Cors>,
    /// Invocation timeout per function binary.
    pub timeouts: HashMap<String, Duration>,
    /// Timeout for a function not in `timeouts`.
    pub default_timeout: Duration,
    /// The Invoke API.
    pub invoker: Invoker,
    /// Where request lines go (none in tests).
    pub log: Option<Logger>,
}

/// The gateway as an axum router (serve it with connect info).
pub fn router(gateway: Arc<Gateway>) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(gateway)
}

/// Serves the gateway on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(gateway).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// The route that serves `method path`, with its path parameters, chosen as API Gateway does:
/// the most specific match wins (literal segments over variables, variables over a greedy
/// `{proxy+}`, a method over `ANY`).
pub fn match_route<'a>(
    routes: &'a [Route],
    method: &str,
    path: &str,
) -> Option<(&'a Route, BTreeMap<String, String>)> {
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    type Candidate<'r> = ((usize, usize, bool), &'r Route, BTreeMap<String, String>);
    let mut best: Option<Candidate<'a>> = None;
    for route in routes {
        if route.method != method && route.method != "ANY" {
            continue;
        }
        let Some((literals, variables, params)) = match_path(&route.path, &segments) else {
            continue;
        };
        let score = (literals, variables, route.method != "ANY");
        if best.as_ref().is_none_or(|(s, _, _)| score > *s) {
            best = Some((score, route, params));
        }
    }
    best.map(|(_, route, params)| (route, params))
}

/// Matches path segments against a template; returns (literal segments, non-greedy variables,
/// parameters).
fn match_path(
    template: &str,
    segments: &[&str],
) -> Option<(usize, usize, BTreeMap<String, String>)> {
    let parts: Vec<&str> = template.split('/').skip(1).collect();
    let mut params = BTreeMap::new();
    let (mut literals, mut variables) = (0, 0);
    for (i, part) in parts.iter().enumerate() {
        if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix("+}")) {
            // Greedy: the rest of the path, at least one segment.
            if i != parts.len() - 1 || segments.len() <= i || segments[i].is_empty() {
                return None;
            }
            params.insert(name.to_owned(), decode(&segments[i..].join("/")));
            return Some((literals, variables, params));
        }
        let segment = segments.get(i)?;
        if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            if segment.is_empty() {
                return None;
            }
            params.insert(name.to_owned(), decode(segment));
            variables += 1;
        } else if part == segment {
            literals += 1;
        } else {
            return None;
        }
    }
    (segments.len() == parts.len()).then_some((literals, variables, params))
}

fn decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// An HTTP request as the gateway received it.
#[derive(Clone, Debug, Default)]
pub struct Incoming {
    /// Method, upper case.
    pub method: String,
    /// Path as received.
    pub raw_path: String,
    /// Query string as received (without `?`).
    pub raw_query: String,
    /// Headers, names lower case, in order.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
    /// Caller's address.
    pub source_ip: String,
}

/// Whether API Gateway passes a body of this content type as text (else base64).
fn is_text(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else {
        return true;
    };
    let ct = ct.to_ascii_lowercase();
    ct.starts_with("text/")
        || ct.contains("json")
        || ct.contains("xml")
        || ct.contains("javascript")
        || ct.starts_with("application/x-www-form-urlencoded")
}

/// The payload format 2.0 event API Gateway sends for `incoming` on `route`.
pub fn build_event(
    route: &Route,
    path_params: &BTreeMap<String, String>,
    incoming: &Incoming,
    claims: Option<&Map<String, Value>>,
    request_id: &str,
    domain: &str,
) -> Value {
    let (headers, cookies) = event_headers(incoming, domain);
    let query = query_parameters(&incoming.raw_query);
    let content_type = headers.get("content-type").map(String::as_str);
    let (body, is_base64) = event_body(&incoming.body, content_type);
    let route_key = route.key();
    let now = time::OffsetDateTime::now_utc();
    let mut context = json!({
        "accountId": crate::template::ACCOUNT_ID,
        "apiId": "local",
        "domainName": domain,
        "domainPrefix": domain.split(['.', ':']).next().unwrap_or("local"),
        "http": {
            "method": incoming.method,
            "path": incoming.raw_path,
            "protocol": "HTTP/1.1",
            "sourceIp": incoming.source_ip,
            "userAgent": headers.get("user-agent").cloned().unwrap_or_default(),
        },
        "requestId": request_id,
        "routeKey": route_key,
        "stage": "$default",
        "time": format_time(now),
        "timeEpoch": now_ms(),
    });
    if let Some(claims) = claims {
        context["authorizer"] = json!({"jwt": {"claims": claims, "scopes": null}});
    }
    let mut event = json!({
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": incoming.raw_path,
        "rawQueryString": incoming.raw_query,
        "headers": headers,
        "requestContext": context,
        "isBase64Encoded": is_base64,
    });
    if !cookies.is_empty() {
        event["cookies"] = json!(cookies);
    }
    if !query.is_empty() {
        event["queryStringParameters"] = json!(query);
    }
    if !path_params.is_empty() {
        event["pathParameters"] = json!(path_params);
    }
    if !body.is_null() {
        event["body"] = body;
    }
    event
}

/// The event's headers (repeated ones joined with commas, as API Gateway does, plus the
/// `x-forwarded-*` and trace headers it adds) and its cookies.
fn event_headers(incoming: &Incoming, domain: &str) -> (BTreeMap<String, String>, Vec<String>) {
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    let mut cookies: Vec<String> = Vec::new();
    for (name, value) in &incoming.headers {
        if name == "cookie" {
            cookies.extend(
                value
                    .split(';')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned),
            );
            continue;
        }
        headers
            .entry(name.clone())
            .and_modify(|v| {
                v.push(',');
                v.push_str(value);
            })
            .or_insert_with(|| value.clone());
    }
    headers
        .entry("x-forwarded-for".into())
        .or_insert_with(|| incoming.source_ip.clone());
    headers
        .entry("x-forwarded-proto".into())
        .or_insert_with(|| "http".into());
    if let Some(port) = domain.rsplit_once(':').map(|(_, p)| p.to_owned()) {
        headers.entry("x-forwarded-port".into()).or_insert(port);
    }
    headers.entry("x-amzn-trace-id".into()).or_insert_with(|| {
        let random = ulid::Ulid::new().0 & ((1u128 << 96) - 1);
        format!("Root=1-{:08x}-{random:024x}", now_ms() / 1000)
    });
    (headers, cookies)
}

/// The query string decoded, repeated keys joined with commas.
fn query_parameters(raw_query: &str) -> BTreeMap<String, String> {
    let mut query: BTreeMap<String, String> = BTreeMap::new();
    for pair in raw_query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        query
            .entry(decode(k))
            .and_modify(|x| {
                x.push(',');
                x.push_str(&decode(v));
            })
            .or_insert_with(|| decode(v));
    }
    query
}

/// The body as the event carries it: text as is, anything else in base64 (the flag says which).
fn event_body(body: &[u8], content_type: Option<&str>) -> (Value, bool) {
    if body.is_empty() {
        (Value::Null, false)
    } else if is_text(content_type) {
        match std::str::from_utf8(body) {
            Ok(text) => (Value::String(text.to_owned()), false),
            Err(_) => (
                Value::String(base64::engine::general_purpose::STANDARD.encode(body)),
                true,
            ),
        }
    } else {
        (
            Value::String(base64::engine::general_purpose::STANDARD.encode(body)),
            true,
        )
    }
}

fn format_time(t: time::OffsetDateTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{:02}/{}/{}:{:02}:{:02}:{:02} +0000",
        t.day(),
        MONTHS[usize::from(u8::from(t.month())) - 1],
        t.year(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// A function's answer as the HTTP response API Gateway makes of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapped {
    /// Status code.
    pub status: u16,
    /// Headers (`set-cookie` once per cookie).
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// Maps a payload format 2.0 function result to HTTP: an object with `statusCode` is taken
/// field by field; any other JSON value becomes a 200 `application/json` body.
pub fn map_response(result: &Value) -> Result<Mapped, String> {
    let Some(status) = result.get("statusCode") else {
        return Ok(Mapped {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: result.to_string().into_bytes(),
        });
    };
    let status = status
        .as_u64()
        .or_else(|| status.as_str().and_then(|s| s.parse().ok()))
        .filter(|s| (100..=599).contains(s))
        .ok_or_else(|| format!("invalid statusCode {status}"))? as u16;
    let mut headers = Vec::new();
    if let Some(map) = result.get("headers").and_then(Value::as_object) {
        for (k, v) in map {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            headers.push((k.to_ascii_lowercase(), v));
        }
    }
    if let Some(map) = result.get("multiValueHeaders").and_then(Value::as_object) {
        for (k, values) in map {
            for v in values.as_array().into_iter().flatten() {
                headers.push((
                    k.to_ascii_lowercase(),
                    v.as_str().unwrap_or_default().to_owned(),
                ));
            }
        }
    }
    for cookie in result
        .get("cookies")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(c) = cookie.as_str() {
            headers.push(("set-cookie".into(), c.to_owned()));
        }
    }
    let body = match result.get("body") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(text)) => {
            if result.get("isBase64Encoded").and_then(Value::as_bool) == Some(true) {
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|e| format!("body is not base64: {e}"))?
            } else {
                text.clone().into_bytes()
            }
        }
        Some(other) => other.to_string().into_bytes(),
    };
    Ok(Mapped {
        status,
        headers,
        body,
    })
}

fn message(status: StatusCode, text: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(json!({ "message": text }).to_string()))
        .expect("a static response")
}

async fn handle(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request<Body>,
) -> Response<Body> {
    let started = Instant::now();
    let request_id = ulid::Ulid::new().to_string();
    let (parts, body) = request.into_parts();
    let origin = parts
        .headers
        .get("origin")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let method = parts.method.as_str().to_owned();
    let path = parts.uri.path().to_owned();
    let (mut response, note) = respond(&gateway, &request_id, peer, parts, body).await;
    if let (Some(cors), Some(origin)) = (&gateway.cors, &origin) {
        if cors.allows(origin) {
            let headers = response.headers_mut();
            insert(headers, "access-control-allow-origin", origin);
            insert(headers, "vary", "origin");
            if cors.allow_credentials {
                insert(headers, "access-control-allow-credentials", "true");
            }
            if !cors.expose_headers.is_empty() {
                insert(
                    headers,
                    "access-control-expose-headers",
                    &cors.expose_headers.join(","),
                );
            }
        }
    }
    insert(response.headers_mut(), "apigw-requestid", &request_id);
    if let Some(log) = &gateway.log {
        log.line(
            "gateway",
            &format!(
                "{} {method} {path}{note} ({} ms)",
                response.status().as_u16(),
                started.elapsed().as_millis()
            ),
        );
    }
    response
}

fn insert(headers: &mut HeaderMap, name: &str, value: &str) {
    if let (Ok(n), Ok(v)) = (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_str(value),
    ) {
        headers.insert(n, v);
    }
}

async fn respond(
    gateway: &Gateway,
    request_id: &str,
    peer: SocketAddr,
    parts: axum::http::request::Parts,
    body: Body,
) -> (Response<Body>, String) {
    let method = parts.method.as_str().to_ascii_uppercase();
    let path = parts.uri.path().to_owned();
    if let Some(response) = preflight(gateway, &method, &parts.headers) {
        return (response, " (CORS preflight)".into());
    }
    let Some((route, params)) = match_route(&gateway.routes, &method, &path) else {
        return (
            message(StatusCode::NOT_FOUND, "Not Found"),
            " (no such route)".into(),
        );
    };
    let target = format!(" -> {} [{}]", route.binary, route.key());
    let claims = if route.authorized {
        let header = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        match gateway.jwt.verify(header) {
            Ok(claims) => Some(claims),
            Err(why) => return (unauthorized(), format!("{target}: {why}")),
        }
    } else {
        None
    };
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return (
                message(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large"),
                target,
            )
        }
    };
    let incoming = Incoming {
        method,
        raw_path: path,
        raw_query: parts.uri.query().unwrap_or_default().to_owned(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: bytes.to_vec(),
        source_ip: peer.ip().to_string(),
    };
    let domain = parts
        .headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let event = build_event(
        route,
        &params,
        &incoming,
        claims.as_ref(),
        request_id,
        domain,
    );
    invoke(gateway, route, &event, target).await
}

/// A CORS preflight, which API Gateway answers itself when the API has a CORS configuration.
fn preflight(gateway: &Gateway, method: &str, headers: &HeaderMap) -> Option<Response<Body>> {
    let cors = gateway.cors.as_ref()?;
    if method != "OPTIONS"
        || !headers.contains_key("origin")
        || !headers.contains_key("access-control-request-method")
    {
        return None;
    }
    let origin = headers["origin"].to_str().unwrap_or_default();
    let mut response = Response::builder()
        .status(StatusCode::NO_CONTENT)
        .body(Body::empty())
        .expect("a static response");
    if cors.allows(origin) {
        let headers = response.headers_mut();
        insert(
            headers,
            "access-control-allow-methods",
            &cors.allow_methods.join(","),
        );
        insert(
            headers,
            "access-control-allow-headers",
            &cors.allow_headers.join(","),
        );
        if let Some(age) = cors.max_age {
            insert(headers, "access-control-max-age", &age.to_string());
        }
    }
    Some(response)
}

/// The 401 of API Gateway's JWT authorizer.
fn unauthorized() -> Response<Body> {
    let mut response = message(StatusCode::UNAUTHORIZED, "Unauthorized");
    insert(
        response.headers_mut(),
        "www-authenticate",
        "Bearer scope=\"\" error=\"invalid_token\" error_description=\"the token is missing, malformed, expired or not signed with the local dev key\"",
    );
    response
}

/// Invokes the route's function and maps its result the way API Gateway does (a timeout is a
/// 503, anything unusable a 500).
async fn invoke(
    gateway: &Gateway,
    route: &Route,
    event: &Value,
    target: String,
) -> (Response<Body>, String) {
    let timeout = gateway
        .timeouts
        .get(&route.binary)
        .copied()
        .unwrap_or(gateway.default_timeout);
    let internal = || message(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
    match gateway.invoker.invoke(&route.binary, event, timeout).await {
        Ok(result) => match map_response(&result) {
            Ok(mapped) => {
                let mut builder = Response::builder().status(mapped.status);
                for (k, v) in &mapped.headers {
                    builder = builder.header(k.as_str(), v.as_str());
                }
                match builder.body(Body::from(mapped.body)) {
                    Ok(r) => (r, target),
                    Err(e) => (internal(), format!("{target}: unusable response: {e}")),
                }
            }
            Err(why) => (
                internal(),
                format!("{target}: malformed function response: {why}"),
            ),
        },
        Err(InvokeError::Timeout(t)) => (
            message(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable"),
            format!("{target}: {}", InvokeError::Timeout(t)),
        ),
        Err(e) => (internal(), format!("{target}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: &str, path: &str) -> Route {
        Route {
            method: method.into(),
            path: path.into(),
            binary: "f".into(),
            authorized: true,
        }
    }

    #[test]
    fn the_most_specific_route_wins() {
        let routes = vec![
            route("GET", "/api/sessions/{id}"),
            route("GET", "/api/sessions"),
            route("GET", "/api/sessions/latest"),
            route("ANY", "/files/{proxy+}"),
            route("GET", "/files/{proxy+}"),
        ];
        let (r, p) = match_route(&routes, "GET", "/api/sessions/01ABC").unwrap();
        assert_eq!(r.path, "/api/sessions/{id}");
        assert_eq!(p["id"], "01ABC");
        let (r, p) = match_route(&routes, "GET", "/api/sessions/latest").unwrap();
        assert_eq!(r.path, "/api/sessions/latest");
        assert!(p.is_empty());
        assert_eq!(
            match_route(&routes, "GET", "/api/sessions").unwrap().0.path,
            "/api/sessions"
        );
        assert!(match_route(&routes, "GET", "/api/sessions/").is_none());
        assert!(match_route(&routes, "GET", "/api/sessions/a/b").is_none());
        assert!(match_route(&routes, "POST", "/api/sessions").is_none());
        let (r, p) = match_route(&routes, "GET", "/files/a/b%20c").unwrap();
        assert_eq!((r.method.as_str(), p["proxy"].as_str()), ("GET", "a/b c"));
        assert_eq!(
            match_route(&routes, "DELETE", "/files/x").unwrap().0.method,
            "ANY"
        );
        assert!(match_route(&routes, "GET", "/files/").is_none());
    }

    #[test]
    fn responses_map_like_api_gateway() {
        let m = map_response(&json!({
            "statusCode": 202, "headers": {"content-type": "application/json"},
            "cookies": ["a=1", "b=2"], "body": "{\"ok\":true}", "isBase64Encoded": false
        }))
        .unwrap();
        assert_eq!(m.status, 202);
        assert_eq!(m.body, b"{\"ok\":true}");
        assert_eq!(
            m.headers.iter().filter(|(k, _)| k == "set-cookie").count(),
            2
        );
        let m = map_response(&json!({"statusCode": 200, "body": "aGk=", "isBase64Encoded": true}))
            .unwrap();
        assert_eq!(m.body, b"hi");
        let m = map_response(&json!({"hello": "world"})).unwrap();
        assert_eq!((m.status, m.body), (200, br#"{"hello":"world"}"#.to_vec()));
        assert!(map_response(&json!({"statusCode": "nope"})).is_err());
    }

    #[test]
    fn time_is_formatted_like_api_gateway() {
        let t = time::macros::datetime!(2025-11-22 13:19:00 UTC);
        assert_eq!(format_time(t), "22/Nov/2025:13:19:00 +0000");
    }
}
