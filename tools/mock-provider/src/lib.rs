//! A mock of the BytePlus ModelArk provider API (Seedream images, Seedance video tasks),
//! for tests (start it in-process with [`serve`] / [`start`]) and for the local stack
//! (the `mock-provider` binary). See README.md for the triggers and control endpoints.
//!
//! Layout: this file holds the server, the shared state and the admission every endpoint goes
//! through (key, JSON body, then for the generation endpoints the prompt's triggers and the
//! planned faults); `images` (Seedream) and `tasks` (Seedance) own their endpoints and request
//! validation, `knobs` the tunables and statistics (one [`PerKind`] record per endpoint kind),
//! `png` the generated images, `outputs` their realistic sizes, `util` time, triggers, query strings and error codes.

mod images;
pub mod knobs;
pub mod outputs;
pub mod png;
mod tasks;
mod util;

pub use knobs::{
    EndpointKind, Knobs, Latency, LatencyKnobs, PerKind, RequestCounts, Stats, BURST_429_CODE,
};
pub use outputs::OutputSizes;
use outputs::PaddedPng;
pub use tasks::{TaskImage, TaskOutcome, TaskRecord, TaskStatus};
pub use util::status_for_code;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use util::Triggers;

/// The tiny real MP4 inside every `/files/<id>.mp4` (padded to the knobs' size).
pub const TINY_MP4: &[u8] = include_bytes!("../assets/tiny.mp4");

/// Starts the mock on `listener` (spawned on the current tokio runtime).
///
/// Dropping the returned handle stops the server; prefer [`MockHandle::shutdown`].
pub async fn serve(listener: TcpListener, knobs: Knobs) -> MockHandle {
    let addr = listener.local_addr().expect("listener has a local address");
    let local_base = base_url_for(addr);
    let (tx, rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner::new(knobs)),
        local_base: local_base.clone(),
        shutdown: rx.clone(),
    });
    let app = router(shared.clone());
    let mut stop = rx;
    let join = tokio::spawn(async move {
        let graceful = async move {
            let _ = stop.wait_for(|v| *v).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(graceful)
            .await
        {
            eprintln!("mock-provider: server error: {e}");
        }
    });
    MockHandle {
        addr,
        base_url: local_base,
        shared,
        shutdown: tx,
        join: Some(join),
    }
}

/// Binds `127.0.0.1:0` and [`serve`]s there.
pub async fn start(knobs: Knobs) -> std::io::Result<MockHandle> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    Ok(serve(listener, knobs).await)
}

/// Handle on a running mock: address, stats, knobs, shutdown.
pub struct MockHandle {
    addr: SocketAddr,
    base_url: String,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    join: Option<JoinHandle<()>>,
}

impl MockHandle {
    /// The socket address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `http://127.0.0.1:PORT/api/v3`: what the provider client takes as its base URL.
    pub fn api_base(&self) -> String {
        format!("{}/api/v3", self.base_url)
    }

    /// The bearer key currently expected.
    pub fn api_key(&self) -> String {
        self.shared.lock().knobs.api_key.clone()
    }

    /// A snapshot of the recorded statistics.
    pub fn stats(&self) -> Stats {
        self.shared.lock().stats.clone()
    }

    /// A copy of the current knobs.
    pub fn knobs(&self) -> Knobs {
        self.shared.lock().knobs.clone()
    }

    /// Replaces all knobs (reseeds the PRNG if the seed changed).
    pub fn set_knobs(&self, knobs: Knobs) {
        self.shared.lock().set_knobs(knobs);
    }

    /// Changes knobs in place, e.g. `mock.update_knobs(|k| k.burst_429 = 3)`.
    pub fn update_knobs(&self, f: impl FnOnce(&mut Knobs)) {
        let mut g = self.shared.lock();
        let mut k = g.knobs.clone();
        f(&mut k);
        g.set_knobs(k);
    }

    /// Applies a JSON merge patch to the knobs, as `POST /__mock/knobs` does.
    pub fn patch_knobs(&self, patch: &Value) -> Result<Knobs, String> {
        let mut g = self.shared.lock();
        let k = g.knobs.patched(patch)?;
        g.set_knobs(k.clone());
        Ok(k)
    }

    /// Clears stats, tasks and per-prompt counters and reseeds the PRNG (knobs are kept).
    pub fn reset(&self) {
        self.shared.lock().reset();
    }

    /// All video tasks currently stored (oldest first), with what was received.
    pub fn tasks(&self) -> Vec<TaskRecord> {
        self.shared.lock().tasks_sorted()
    }

    /// One video task by id.
    pub fn task(&self, id: &str) -> Option<TaskRecord> {
        self.shared.lock().tasks.get(id).cloned()
    }

    /// Stops accepting, releases hanging requests and waits (up to 5 s) for the server to end.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(join) = self.join.take() {
            let abort = join.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), join)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for MockHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

fn base_url_for(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

// ---------------------------------------------------------------------------------------------
// Shared state

pub(crate) struct Inner {
    pub knobs: Knobs,
    pub rng: StdRng,
    pub stats: Stats,
    pub tasks: HashMap<String, TaskRecord>,
    pub task_seq: u64,
    pub req_seq: u64,
}

impl Inner {
    fn new(knobs: Knobs) -> Self {
        Inner {
            rng: StdRng::seed_from_u64(knobs.seed),
            knobs,
            stats: Stats::default(),
            tasks: HashMap::new(),
            task_seq: 0,
            req_seq: 0,
        }
    }

    fn set_knobs(&mut self, knobs: Knobs) {
        if knobs.seed != self.knobs.seed {
            self.rng = StdRng::seed_from_u64(knobs.seed);
        }
        self.knobs = knobs;
        let h = self.knobs.history;
        trim_history(&mut self.stats.image_requests, h);
        trim_history(&mut self.stats.task_requests, h);
    }

    fn reset(&mut self) {
        let stats = Stats {
            in_flight: self.stats.in_flight,
            max_in_flight: self.stats.in_flight,
            images_in_flight: self.stats.images_in_flight,
            images_max_in_flight: self.stats.images_in_flight,
            ..Stats::default()
        };
        self.stats = stats;
        self.tasks.clear();
        self.task_seq = 0;
        self.rng = StdRng::seed_from_u64(self.knobs.seed);
    }

    pub(crate) fn tasks_sorted(&self) -> Vec<TaskRecord> {
        let mut v: Vec<TaskRecord> = self.tasks.values().cloned().collect();
        v.sort_by_key(|t| t.seq);
        v
    }

    pub(crate) fn next_request_id(&mut self) -> String {
        self.req_seq += 1;
        let r: u32 = self.rng.random();
        format!(
            "{}{:08x}{:06}",
            util::compact_datetime(util::now_unix()),
            r,
            self.req_seq
        )
    }

    /// Records a request body (and its prompt) and returns how many times that prompt was seen.
    pub(crate) fn record(&mut self, kind: EndpointKind, body: &Value, prompt: Option<&str>) -> u64 {
        let h = self.knobs.history;
        let list = match kind {
            EndpointKind::Images => &mut self.stats.image_requests,
            _ => &mut self.stats.task_requests,
        };
        if h > 0 {
            list.push(body.clone());
            trim_history(list, h);
        }
        match prompt {
            Some(p) => {
                let c = self.stats.prompt_counts.entry(p.to_string()).or_insert(0);
                *c += 1;
                *c
            }
            None => 0,
        }
    }

    fn sample(&mut self, l: Latency) -> u64 {
        if l.max_ms > l.min_ms {
            self.rng.random_range(l.min_ms..=l.max_ms)
        } else {
            l.min_ms
        }
    }

    /// Decides latency and injected fault for one request.
    pub(crate) fn plan(
        &mut self,
        kind: EndpointKind,
        triggers: Option<&Triggers>,
        prompt_count: u64,
    ) -> Plan {
        let latency_ms = match triggers.and_then(|t| t.latency_ms) {
            Some(ms) => ms,
            None => self.sample(self.knobs.latency.get(kind)),
        };
        let mut fault = None;
        if let Some(t) = triggers {
            if t.hang {
                fault = Some(Fault::Hang);
            } else if let Some(code) = &t.fail {
                fault = Some(Fault::Error(code.clone()));
            } else if let Some((n, code)) = &t.fail_first {
                if prompt_count <= *n {
                    fault = Some(Fault::Error(code.clone()));
                }
            }
        }
        if fault.is_none() && self.knobs.fault_kinds.contains(&kind) {
            fault = self.global_fault();
        }
        Plan {
            latency: Duration::from_millis(latency_ms),
            fault,
        }
    }

    fn global_fault(&mut self) -> Option<Fault> {
        if self.knobs.burst_429 > 0 {
            self.knobs.burst_429 -= 1;
            return Some(Fault::Error(BURST_429_CODE.to_string()));
        }
        if self.knobs.hang_rate > 0.0 && self.rng.random::<f64>() < self.knobs.hang_rate {
            return Some(Fault::Hang);
        }
        if self.knobs.failure_rates.values().any(|p| *p > 0.0) {
            let roll: f64 = self.rng.random();
            let mut acc = 0.0;
            for (code, p) in &self.knobs.failure_rates {
                acc += p.max(0.0);
                if roll < acc {
                    return Some(Fault::Error(code.clone()));
                }
            }
        }
        None
    }
}

fn trim_history(list: &mut Vec<Value>, h: usize) {
    if list.len() > h {
        let extra = list.len() - h;
        list.drain(..extra);
    }
}

pub(crate) enum Fault {
    Hang,
    Error(String),
}

pub(crate) struct Plan {
    latency: Duration,
    fault: Option<Fault>,
}

pub(crate) struct Shared {
    inner: Mutex<Inner>,
    local_base: String,
    shutdown: watch::Receiver<bool>,
}

/// Decrements the in-flight counters when a request ends (or is dropped).
pub(crate) struct Flight {
    shared: Arc<Shared>,
    images: bool,
}

impl Drop for Flight {
    fn drop(&mut self) {
        let mut g = self.shared.lock();
        g.stats.in_flight = g.stats.in_flight.saturating_sub(1);
        if self.images {
            g.stats.images_in_flight = g.stats.images_in_flight.saturating_sub(1);
        }
    }
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Base URL for the file URLs handed out.
    pub(crate) fn public_base(&self) -> String {
        match &self.lock().knobs.public_base_url {
            Some(u) if !u.is_empty() => u.trim_end_matches('/').to_string(),
            _ => self.local_base.clone(),
        }
    }

    pub(crate) fn enter(self: &Arc<Self>, kind: EndpointKind) -> Flight {
        let images = kind == EndpointKind::Images;
        let mut g = self.lock();
        let s = &mut g.stats;
        *s.requests.get_mut(kind) += 1;
        s.total_requests += 1;
        s.in_flight += 1;
        s.max_in_flight = s.max_in_flight.max(s.in_flight);
        if images {
            s.images_in_flight += 1;
            s.images_max_in_flight = s.images_max_in_flight.max(s.images_in_flight);
        }
        Flight {
            shared: self.clone(),
            images,
        }
    }

    /// Provider-shaped error response; counted in `stats.errors`.
    pub(crate) fn error(
        &self,
        code: &str,
        message: Option<String>,
        param: Option<&str>,
    ) -> Response {
        let request_id = {
            let mut g = self.lock();
            *g.stats.errors.entry(code.to_string()).or_insert(0) += 1;
            g.next_request_id()
        };
        let (status, kind) = status_for_code(code);
        let message = message.unwrap_or_else(|| util::default_message(code));
        let mut err = json!({
            "code": code,
            "message": format!("{message} Request ID: {request_id}"),
            "type": kind,
        });
        if let Some(p) = param {
            err["param"] = Value::String(p.to_string());
        }
        let mut resp = (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            Json(json!({ "error": err })),
        )
            .into_response();
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            resp.headers_mut().insert("x-request-id", v);
        }
        resp
    }

    /// What every JSON endpoint does first: count the request in flight, check the key, read
    /// the body as a JSON object. The returned [`Flight`] must live as long as the handler.
    pub(crate) fn admit(
        self: &Arc<Self>,
        kind: EndpointKind,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(Flight, Value), Box<Response>> {
        let flight = self.enter(kind);
        if let Some(r) = self.auth_error(headers) {
            return Err(Box::new(r));
        }
        match serde_json::from_slice(body) {
            Ok(v @ Value::Object(_)) => Ok((flight, v)),
            _ => Err(Box::new(self.error(
                "InvalidParameter",
                Some("The request body is not a valid JSON object.".into()),
                None,
            ))),
        }
    }

    /// What the generation endpoints do first: [`Shared::admit`], record the request under its
    /// prompt, then play the faults planned for it (the prompt's triggers included). Returns
    /// the flight, the body and the triggers, or the response to send instead.
    pub(crate) async fn admit_generation(
        self: &Arc<Self>,
        kind: EndpointKind,
        headers: &HeaderMap,
        body: &[u8],
        prompt_of: fn(&Value) -> Option<String>,
    ) -> Result<(Flight, Value, Triggers), Box<Response>> {
        let (flight, body) = self.admit(kind, headers, body)?;
        let prompt = prompt_of(&body);
        let mut triggers = util::parse_triggers(prompt.as_deref().unwrap_or(""));
        let plan = {
            let mut g = self.lock();
            let count = g.record(kind, &body, prompt.as_deref());
            triggers.lose_answer = triggers.lost_answer_first.is_some_and(|n| count <= n);
            g.plan(kind, Some(&triggers), count)
        };
        match self.run_plan(plan).await {
            Some(r) => Err(Box::new(r)),
            None => Ok((flight, body, triggers)),
        }
    }

    /// `Some(401 response)` when the bearer key is missing or wrong.
    pub(crate) fn auth_error(&self, headers: &HeaderMap) -> Option<Response> {
        let expected = self.lock().knobs.api_key.clone();
        let ok = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .is_some_and(|(scheme, key)| {
                scheme.eq_ignore_ascii_case("bearer") && key.trim() == expected
            });
        (!ok).then(|| self.error("AuthenticationError", None, None))
    }

    async fn wait_shutdown(&self) {
        let mut rx = self.shutdown.clone();
        let _ = rx.wait_for(|v| *v).await;
    }

    /// Sleeps the planned latency, then answers with the planned fault, if any.
    pub(crate) async fn run_plan(&self, plan: Plan) -> Option<Response> {
        let shutting_down = || {
            self.error(
                "ServiceUnavailable",
                Some("The mock provider is shutting down.".into()),
                None,
            )
        };
        if !plan.latency.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(plan.latency) => {}
                _ = self.wait_shutdown() => return Some(shutting_down()),
            }
        }
        match plan.fault {
            None => None,
            Some(Fault::Hang) => {
                self.wait_shutdown().await;
                Some(shutting_down())
            }
            Some(Fault::Error(code)) => Some(self.error(&code, None, None)),
        }
    }

    /// Plan + run for requests without a prompt.
    pub(crate) async fn simple_faults(&self, kind: EndpointKind) -> Option<Response> {
        let plan = self.lock().plan(kind, None, 0);
        self.run_plan(plan).await
    }
}

// ---------------------------------------------------------------------------------------------
// Routing, files and control endpoints

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/api/v3/images/generations", post(images::generate))
        .route(
            "/api/v3/contents/generations/tasks",
            post(tasks::create).get(tasks::list),
        )
        .route(
            "/api/v3/contents/generations/tasks/{id}",
            get(tasks::get).delete(tasks::delete),
        )
        .route("/files/{name}", get(files))
        .route("/__mock/knobs", get(get_knobs).post(post_knobs))
        .route("/__mock/stats", get(get_stats))
        .route("/__mock/reset", post(post_reset))
        .route("/__mock/tasks", get(get_tasks))
        .fallback(not_found)
        .with_state(shared)
}

async fn not_found(State(s): State<Arc<Shared>>) -> Response {
    s.error(
        "InvalidEndpoint.NotFound",
        Some("The requested path does not exist on the mock provider.".into()),
        None,
    )
}

/// Parses `...-WxH.png` into the nominal size and the seed of the picture.
fn parse_png_name(name: &str) -> Option<(u32, u32, u64)> {
    let stem = name.strip_suffix(".png")?;
    let (prefix, dims) = stem.rsplit_once('-')?;
    let (w, h) = dims.split_once('x')?;
    let (w, h): (u32, u32) = (w.parse().ok()?, h.parse().ok()?);
    let seed = prefix
        .split('-')
        .next()
        .and_then(|p| p.strip_prefix('s'))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| png::fnv1a(stem));
    Some((w, h, seed))
}

/// An image of nominal `width`x`height`: a gradient a sixteenth of that size, padded to the
/// size an image of that class has (see [`outputs`]).
pub(crate) fn image_file(sizes: &OutputSizes, width: u32, height: u32, seed: u64) -> PaddedPng {
    let picture = png::gradient_png((width / 16).max(1), (height / 16).max(1), seed);
    PaddedPng::new(picture, sizes.image_bytes(width, height), seed)
}

async fn files(State(s): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    let _flight = s.enter(EndpointKind::Files);
    if let Some(r) = s.simple_faults(EndpointKind::Files).await {
        return r;
    }
    let sizes = s.lock().knobs.output_sizes;
    if let Some(id) = name.strip_suffix(".mp4") {
        let seconds = s.lock().tasks.get(id).map_or(5, |t| u64::from(t.duration));
        let (length, pieces) =
            outputs::padded_mp4(TINY_MP4, sizes.video_per_second * seconds, png::fnv1a(id));
        return outputs::file_response("video/mp4", length, pieces.into_iter(), &sizes);
    }
    match parse_png_name(&name) {
        Some((w, h, seed)) => {
            let file = image_file(&sizes, w, h, seed);
            outputs::file_response("image/png", file.length(), file.pieces(), &sizes)
        }
        None => s.error(
            "ResourceNotFound",
            Some(format!("The file `{name}` is not found.")),
            None,
        ),
    }
}

async fn get_knobs(State(s): State<Arc<Shared>>) -> Response {
    Json(s.lock().knobs.clone()).into_response()
}

async fn post_knobs(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    let patch: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return control_error(format!("invalid JSON: {e}")),
        }
    };
    let mut g = s.lock();
    match g.knobs.patched(&patch) {
        Ok(k) => {
            g.set_knobs(k.clone());
            Json(k).into_response()
        }
        Err(e) => control_error(e),
    }
}

fn control_error(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": {"code": "InvalidParameter", "message": message, "type": "BadRequest"}})),
    )
        .into_response()
}

async fn get_stats(State(s): State<Arc<Shared>>) -> Response {
    Json(s.lock().stats.clone()).into_response()
}

async fn post_reset(State(s): State<Arc<Shared>>) -> Response {
    s.lock().reset();
    Json(json!({"ok": true})).into_response()
}

async fn get_tasks(State(s): State<Arc<Shared>>) -> Response {
    let tasks = s.lock().tasks_sorted();
    let items: Vec<Value> = tasks
        .iter()
        .map(|t| {
            let mut v = serde_json::to_value(t).unwrap_or(Value::Null);
            v["status"] = json!(t.status().as_str());
            v
        })
        .collect();
    Json(json!({ "total": items.len(), "items": items })).into_response()
}
