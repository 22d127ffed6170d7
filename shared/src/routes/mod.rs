//! HTTP handlers. Each function's entry point calls one `handle` with the state it built once;
//! the handler dispatches on the API Gateway route key and turns every error into the
//! contract's JSON error body.
//!
//! - [`enqueue`]: the generate routes (the `enqueue` function).
//! - [`api`]: the user's reads and health (the `api` function).
//! - [`admin`]: every admin route: grants and dead letters (the `admin` function).
//!
//! The request helpers every handler shares (route key, body, query and path parameters,
//! `Idempotency-Key`, page requests) live here.

pub mod admin;
pub mod api;
pub mod enqueue;

use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use tracing::Instrument;

use crate::error::{ApiError, Result};
use crate::generation;
use crate::table::page::PageRequest;

/// The route of a request: API Gateway's route key (`GET /api/sessions/{id}`), or the method
/// and path when the event carries none.
pub fn route_key(request: &Request) -> String {
    if let RequestContext::ApiGatewayV2(context) = request.request_context() {
        if let Some(key) = context.route_key.filter(|k| k != "$default") {
            return key;
        }
    }
    format!("{} {}", request.method(), request.uri().path())
}

/// The body's bytes.
pub fn body_bytes(request: &Request) -> &[u8] {
    match request.body() {
        Body::Empty => &[],
        Body::Text(text) => text.as_bytes(),
        Body::Binary(bytes) => bytes,
        _ => &[],
    }
}

/// A query string parameter.
pub fn query(request: &Request, name: &str) -> Option<String> {
    request
        .query_string_parameters_ref()
        .and_then(|q| q.first(name))
        .map(str::to_owned)
}

/// The `cursor` and `limit` query parameters of a listing of `prefix`, validated.
pub fn page_request(request: &Request, prefix: &str) -> Result<PageRequest> {
    PageRequest::parse(
        query(request, "cursor").as_deref(),
        query(request, "limit").as_deref(),
        prefix,
    )
}

/// The `Idempotency-Key` header, when the request carries one (400 when it is malformed).
pub fn idempotency_key(request: &Request) -> Result<Option<String>> {
    let Some(value) = request.headers().get("idempotency-key") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .filter(|k| generation::valid_token(k))
        .map(|k| Some(k.to_owned()))
        .ok_or_else(|| {
            ApiError::invalid(
                "invalid_idempotency_key",
                "Idempotency-Key must be 1-128 characters of A-Z a-z 0-9 . _ : -",
            )
        })
}

/// Marks a response as the replay of an earlier request's (same `Idempotency-Key`).
pub fn replayed(mut response: Response<Body>) -> Response<Body> {
    response.headers_mut().insert(
        "idempotent-replayed",
        http::HeaderValue::from_static("true"),
    );
    response
}

/// A path parameter.
pub fn path_param(request: &Request, name: &str) -> Option<String> {
    request
        .path_parameters_ref()
        .and_then(|p| p.first(name))
        .map(str::to_owned)
}

/// Runs a handler in a span named after the request and turns its error into a response.
pub async fn respond<F>(request_id: String, route: &str, work: F) -> Response<Body>
where
    F: std::future::Future<Output = Result<Response<Body>>>,
{
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        route = %route,
        user = tracing::field::Empty,
        session = tracing::field::Empty
    );
    async {
        let started = std::time::Instant::now();
        let response = work.await.unwrap_or_else(ApiError::into_response);
        tracing::info!(
            status = response.status().as_u16(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "responded"
        );
        response
    }
    .instrument(span)
    .await
}

/// The request id API Gateway assigned, for logs.
pub fn request_id(request: &Request) -> String {
    match request.request_context() {
        RequestContext::ApiGatewayV2(context) => context.request_id.unwrap_or_default(),
        _ => String::new(),
    }
}
