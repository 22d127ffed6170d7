//! The recorder: every request, check, iteration and session of a run lands here, in HDR
//! histograms (microseconds, 3 significant digits, 1 µs to 1 h) and counters behind one
//! mutex. A std `Mutex` rather than tokio's: the critical sections are a few additions and are
//! never held across an `.await`.
//!
//! A one-second window beside the totals feeds the timeline (latency over time, throughput);
//! the progress ticker closes it every second, so memory stays flat on a 30-minute soak.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::classify::{classify, Answer, ErrorClass};
use crate::summary::{CheckSummary, EndpointSummary, ErrorBreakdown, Metric, MetricKind, Sample};
use crate::threshold::percentile_key;

/// The routes the scenario calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Endpoint {
    /// `POST /api/images/seedream4/generate`.
    GenerateImage,
    /// `POST /api/videos/seedance/generate`.
    GenerateVideo,
    /// `GET /api/sessions/{id}`.
    GetSession,
}

impl Endpoint {
    /// Every route, in report order.
    pub const ALL: [Self; 3] = [Self::GenerateImage, Self::GenerateVideo, Self::GetSession];

    /// `METHOD /route/{template}`, the `name` tag of its metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::GenerateImage => "POST /api/images/seedream4/generate",
            Self::GenerateVideo => "POST /api/videos/seedance/generate",
            Self::GetSession => "GET /api/sessions/{id}",
        }
    }

    /// The status that means success.
    pub fn expected(self) -> u16 {
        match self {
            Self::GenerateImage | Self::GenerateVideo => 202,
            Self::GetSession => 200,
        }
    }

    /// Whether the route accepts generation work.
    pub fn is_generate(self) -> bool {
        !matches!(self, Self::GetSession)
    }
}

/// How a polled session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// Status `completed`.
    Completed,
    /// Status `failed`.
    Failed,
    /// Neither within `--e2e-timeout` (or the run was cut short).
    TimedOut,
}

/// A fresh latency histogram in microseconds.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static bounds are valid")
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// `None` when the histogram is empty.
fn quantile_ms(h: &Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| ms(h.value_at_quantile(q)))
}

struct EndpointStats {
    latency: Histogram<u64>,
    statuses: BTreeMap<String, u64>,
    failed: u64,
}

struct Window {
    generate: Histogram<u64>,
    e2e: Histogram<u64>,
    requests: u64,
    generate_errors: u64,
    sessions_completed: u64,
}

impl Window {
    fn new() -> Self {
        Self {
            generate: histogram(),
            e2e: histogram(),
            requests: 0,
            generate_errors: 0,
            sessions_completed: 0,
        }
    }
}

struct Inner {
    endpoints: Vec<EndpointStats>,
    generate: Histogram<u64>,
    schedule_lag: Histogram<u64>,
    iteration: Histogram<u64>,
    e2e: Histogram<u64>,
    processing: Histogram<u64>,
    sessions: [u64; 3],
    errors: [u64; 4],
    iterations: u64,
    iterations_ok: u64,
    requests: u64,
    requests_failed: u64,
    checks: BTreeMap<&'static str, (u64, u64)>,
    dropped: u64,
    vus: u64,
    vus_max: u64,
    target: f64,
    window: Window,
    timeline: Vec<Sample>,
}

/// Totals for the progress line.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Seconds since the start.
    pub elapsed: f64,
    /// Active VUs or iterations in flight.
    pub vus: u64,
    /// The profile's current level.
    pub target: f64,
    /// Generate requests answered.
    pub generate: u64,
    /// Generate requests answered in the last second.
    pub generate_last_second: u64,
    /// Failed iterations.
    pub failed: u64,
    /// Iterations.
    pub iterations: u64,
    /// Failed iterations by class.
    pub errors: [u64; 4],
    /// Generate latency p95 so far, ms.
    pub p95: Option<f64>,
    /// Session end-to-end p95 so far, ms.
    pub e2e_p95: Option<f64>,
    /// Sessions completed.
    pub sessions_completed: u64,
    /// Sessions being polled.
    pub polling: u64,
    /// Open-model iterations dropped.
    pub dropped: u64,
}

/// Collects a run's samples.
pub struct Recorder {
    inner: Mutex<Inner>,
    start: Instant,
    open_model: bool,
    polling: AtomicU64,
}

impl Recorder {
    /// A recorder whose clock starts at `start`. In the open model the schedule lag (how late
    /// an iteration was sent after its intended time) is recorded as its own trend.
    pub fn new(start: Instant, open_model: bool) -> Self {
        Self {
            inner: Mutex::new(Inner {
                endpoints: Endpoint::ALL
                    .iter()
                    .map(|_| EndpointStats {
                        latency: histogram(),
                        statuses: BTreeMap::new(),
                        failed: 0,
                    })
                    .collect(),
                generate: histogram(),
                schedule_lag: histogram(),
                iteration: histogram(),
                e2e: histogram(),
                processing: histogram(),
                sessions: [0; 3],
                errors: [0; 4],
                iterations: 0,
                iterations_ok: 0,
                requests: 0,
                requests_failed: 0,
                checks: BTreeMap::new(),
                dropped: 0,
                vus: 0,
                vus_max: 0,
                target: 0.0,
                window: Window::new(),
                timeline: Vec::new(),
            }),
            start,
            open_model,
            polling: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain counters behind: still worth reporting.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the run started.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Records one answered (or failed) request. Latency runs from `intended`, the time the
    /// request was due, to `done`; `sent` is when it actually left. Returns its error class.
    pub fn record_request(
        &self,
        endpoint: Endpoint,
        intended: Instant,
        sent: Instant,
        done: Instant,
        answer: &Answer,
    ) -> Option<ErrorClass> {
        let class = classify(endpoint.expected(), answer);
        let latency = micros(done.saturating_duration_since(intended));
        let mut inner = self.lock();
        let stats = &mut inner.endpoints[endpoint as usize];
        stats.latency.saturating_record(latency);
        *stats.statuses.entry(answer.label()).or_default() += 1;
        if class.is_some() {
            stats.failed += 1;
            inner.requests_failed += 1;
        }
        inner.requests += 1;
        inner.window.requests += 1;
        if endpoint.is_generate() {
            inner.generate.saturating_record(latency);
            inner.window.generate.saturating_record(latency);
            if self.open_model {
                let lag = micros(sent.saturating_duration_since(intended));
                inner.schedule_lag.saturating_record(lag);
            }
        }
        class
    }

    /// Records a named check.
    pub fn record_check(&self, name: &'static str, ok: bool) {
        let mut inner = self.lock();
        let entry = inner.checks.entry(name).or_default();
        if ok {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
    }

    /// Records one iteration (one generate request and its checks): `failure` is its error
    /// class, `None` when every check held.
    pub fn record_iteration(&self, failure: Option<ErrorClass>, duration: Duration) {
        let mut inner = self.lock();
        inner.iterations += 1;
        inner.iteration.saturating_record(micros(duration));
        match failure {
            None => inner.iterations_ok += 1,
            Some(class) => {
                inner.errors[class.index()] += 1;
                inner.window.generate_errors += 1;
            }
        }
    }

    /// A session starts being polled.
    pub fn session_polling(&self) {
        self.polling.fetch_add(1, Ordering::Relaxed);
    }

    /// Records how a polled session ended; `e2e` is from the generate request's intended time
    /// to the poll that saw it finish, `processing` the server's `updated_at - created_at`.
    pub fn record_session(&self, end: SessionEnd, e2e: Duration, processing: Option<Duration>) {
        self.polling.fetch_sub(1, Ordering::Relaxed);
        let mut inner = self.lock();
        inner.sessions[end as usize] += 1;
        if let (SessionEnd::Completed, Some(p)) = (end, processing) {
            inner.processing.saturating_record(micros(p));
        }
        if end == SessionEnd::Completed {
            inner.e2e.saturating_record(micros(e2e));
            inner.window.e2e.saturating_record(micros(e2e));
            inner.window.sessions_completed += 1;
        }
    }

    /// Sessions still being polled.
    pub fn polling(&self) -> u64 {
        self.polling.load(Ordering::Relaxed)
    }

    /// Records open-model iterations that were never sent.
    pub fn record_dropped(&self, n: u64) {
        self.lock().dropped += n;
    }

    /// Sets the active VUs (or iterations in flight) and the profile's level.
    pub fn set_load(&self, vus: u64, target: f64) {
        let mut inner = self.lock();
        inner.vus = vus;
        inner.vus_max = inner.vus_max.max(vus);
        inner.target = target;
    }

    /// Closes the one-second window into a timeline sample and returns the totals so far.
    pub fn tick(&self, now: Instant) -> Snapshot {
        let polling = self.polling();
        let mut inner = self.lock();
        let elapsed = now.saturating_duration_since(self.start).as_secs_f64();
        let w = &inner.window;
        let sample = Sample {
            t: elapsed,
            vus: inner.vus,
            target: inner.target,
            requests: w.requests,
            generate: w.generate.len(),
            generate_errors: w.generate_errors,
            p50: quantile_ms(&w.generate, 0.50),
            p95: quantile_ms(&w.generate, 0.95),
            p99: quantile_ms(&w.generate, 0.99),
            sessions_completed: w.sessions_completed,
            e2e_p95: quantile_ms(&w.e2e, 0.95),
            polling,
        };
        let generate_last_second = sample.generate;
        inner.timeline.push(sample);
        let w = &mut inner.window;
        w.generate.reset();
        w.e2e.reset();
        w.requests = 0;
        w.generate_errors = 0;
        w.sessions_completed = 0;
        Snapshot {
            elapsed,
            vus: inner.vus,
            target: inner.target,
            generate: inner.generate.len(),
            generate_last_second,
            failed: inner.iterations - inner.iterations_ok,
            iterations: inner.iterations,
            errors: inner.errors,
            p95: quantile_ms(&inner.generate, 0.95),
            e2e_p95: quantile_ms(&inner.e2e, 0.95),
            sessions_completed: inner.sessions[SessionEnd::Completed as usize],
            polling,
            dropped: inner.dropped,
        }
    }

    /// The k6-shaped metrics over `elapsed` seconds, with the extra percentiles thresholds ask for.
    pub fn metrics(&self, elapsed: f64, extra_percentiles: &[f64]) -> BTreeMap<String, Metric> {
        let inner = self.lock();
        let per_s = |n: u64| {
            if elapsed > 0.0 {
                n as f64 / elapsed
            } else {
                0.0
            }
        };
        let counter = |n: u64| Metric {
            kind: MetricKind::Counter,
            contains: None,
            values: [
                ("count".to_string(), n as f64),
                ("rate".to_string(), per_s(n)),
            ]
            .into(),
        };
        let rate = |passes: u64, fails: u64| {
            let total = passes + fails;
            Metric {
                kind: MetricKind::Rate,
                contains: None,
                values: [
                    (
                        "rate".to_string(),
                        if total > 0 {
                            passes as f64 / total as f64
                        } else {
                            0.0
                        },
                    ),
                    ("passes".to_string(), passes as f64),
                    ("fails".to_string(), fails as f64),
                ]
                .into(),
            }
        };
        let trend = |h: &Histogram<u64>| trend_metric(h, extra_percentiles);

        let mut m = BTreeMap::new();
        m.insert("http_reqs".into(), counter(inner.requests));
        m.insert("http_req_duration".into(), trend(&inner.generate));
        m.insert(
            "http_req_failed".into(),
            rate(
                inner.requests_failed,
                inner.requests - inner.requests_failed,
            ),
        );
        for (endpoint, stats) in Endpoint::ALL.iter().zip(&inner.endpoints) {
            let requests: u64 = stats.statuses.values().sum();
            if requests == 0 {
                continue;
            }
            let tag = format!("{{name:{}}}", endpoint.name());
            m.insert(format!("http_req_duration{tag}"), trend(&stats.latency));
            m.insert(format!("http_reqs{tag}"), counter(requests));
        }
        let failed = inner.iterations - inner.iterations_ok;
        m.insert("iterations".into(), counter(inner.iterations));
        m.insert("iteration_duration".into(), trend(&inner.iteration));
        let (passes, fails) = inner
            .checks
            .values()
            .fold((0, 0), |(p, f), (cp, cf)| (p + cp, f + cf));
        m.insert("checks".into(), rate(passes, fails));
        m.insert("errors".into(), rate(failed, inner.iterations_ok));
        m.insert("success_rate".into(), rate(inner.iterations_ok, failed));
        for class in ErrorClass::ALL {
            m.insert(class.metric().into(), counter(inner.errors[class.index()]));
        }
        if self.open_model {
            m.insert("dropped_iterations".into(), counter(inner.dropped));
            m.insert("schedule_lag".into(), trend(&inner.schedule_lag));
        }
        let [completed, failed_sessions, timed_out] = inner.sessions;
        if completed + failed_sessions + timed_out > 0 || self.polling() > 0 {
            m.insert("session_e2e".into(), trend(&inner.e2e));
            if !inner.processing.is_empty() {
                m.insert("session_processing".into(), trend(&inner.processing));
            }
            m.insert("sessions_completed".into(), counter(completed));
            m.insert("sessions_failed".into(), counter(failed_sessions));
            m.insert("sessions_timed_out".into(), counter(timed_out));
            m.insert(
                "session_success".into(),
                rate(completed, failed_sessions + timed_out),
            );
        }
        let gauge = |v: u64, max: u64| Metric {
            kind: MetricKind::Gauge,
            contains: None,
            values: [
                ("value".to_string(), v as f64),
                ("min".to_string(), 0.0),
                ("max".to_string(), max as f64),
            ]
            .into(),
        };
        m.insert("vus".into(), gauge(inner.vus, inner.vus_max));
        m.insert("vus_max".into(), gauge(inner.vus_max, inner.vus_max));
        m
    }

    /// Per-route requests, rate, percentiles and statuses.
    pub fn endpoints(&self, elapsed: f64) -> Vec<EndpointSummary> {
        let inner = self.lock();
        Endpoint::ALL
            .iter()
            .zip(&inner.endpoints)
            .filter(|(_, s)| !s.latency.is_empty())
            .map(|(endpoint, s)| {
                let q = |q: f64| quantile_ms(&s.latency, q).unwrap_or(0.0);
                let requests = s.latency.len();
                EndpointSummary {
                    name: endpoint.name().to_string(),
                    requests,
                    rate: if elapsed > 0.0 {
                        requests as f64 / elapsed
                    } else {
                        0.0
                    },
                    failed: s.failed,
                    p50: q(0.50),
                    p90: q(0.90),
                    p95: q(0.95),
                    p99: q(0.99),
                    max: ms(s.latency.max()),
                    statuses: s.statuses.clone(),
                }
            })
            .collect()
    }

    /// Failed iterations by class, with the error and success rates.
    pub fn errors(&self) -> ErrorBreakdown {
        let inner = self.lock();
        let total = inner.iterations.max(1) as f64;
        let failed = inner.iterations - inner.iterations_ok;
        ErrorBreakdown {
            credit_errors: inner.errors[ErrorClass::CreditErrors.index()],
            rate_limited: inner.errors[ErrorClass::RateLimited.index()],
            provider_errors: inner.errors[ErrorClass::ProviderErrors.index()],
            other_errors: inner.errors[ErrorClass::OtherErrors.index()],
            error_rate: failed as f64 / total,
            success_rate: if inner.iterations == 0 {
                0.0
            } else {
                inner.iterations_ok as f64 / total
            },
        }
    }

    /// Named checks.
    pub fn checks(&self) -> Vec<CheckSummary> {
        self.lock()
            .checks
            .iter()
            .map(|(name, (passes, fails))| CheckSummary {
                name: name.to_string(),
                passes: *passes,
                fails: *fails,
            })
            .collect()
    }

    /// The per-second samples.
    pub fn timeline(&self) -> Vec<Sample> {
        self.lock().timeline.clone()
    }

    /// Latency by percentile of the generate requests and of the sessions, for the report.
    pub fn distributions(&self) -> BTreeMap<String, Vec<[f64; 2]>> {
        let inner = self.lock();
        let mut out = BTreeMap::new();
        for (name, h) in [
            ("http_req_duration", &inner.generate),
            ("session_e2e", &inner.e2e),
        ] {
            if h.is_empty() {
                continue;
            }
            let mut points: Vec<[f64; 2]> = (0..=99)
                .map(|p| p as f64)
                .chain([99.5, 99.9, 99.99, 100.0])
                .map(|p| [p, ms(h.value_at_quantile(p / 100.0))])
                .collect();
            points.dedup();
            out.insert(name.to_string(), points);
        }
        out
    }

    /// The k6 figures of the schedule lag (open model), ms: p95 and max.
    pub fn schedule_lag(&self) -> Option<(f64, f64)> {
        let inner = self.lock();
        let h = &inner.schedule_lag;
        (!h.is_empty()).then(|| (ms(h.value_at_quantile(0.95)), ms(h.max())))
    }
}

/// A trend's `values`: count, avg, min, med, max, p(90), p(95), p(99) and any extra percentile.
pub fn trend_metric(h: &Histogram<u64>, extra_percentiles: &[f64]) -> Metric {
    let mut values = BTreeMap::new();
    values.insert("count".to_string(), h.len() as f64);
    if !h.is_empty() {
        values.insert("avg".into(), h.mean() / 1000.0);
        values.insert("min".into(), ms(h.min()));
        values.insert("med".into(), ms(h.value_at_quantile(0.5)));
        values.insert("max".into(), ms(h.max()));
        for p in [90.0, 95.0, 99.0].iter().chain(extra_percentiles) {
            values.insert(percentile_key(*p), ms(h.value_at_quantile(p / 100.0)));
        }
    }
    Metric {
        kind: MetricKind::Trend,
        contains: Some("time".into()),
        values,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_runs_from_the_intended_time_and_lag_is_recorded_in_the_open_model() {
        let t0 = Instant::now();
        let rec = Recorder::new(t0, true);
        let intended = t0;
        let sent = t0 + Duration::from_millis(40);
        let done = t0 + Duration::from_millis(50);
        let class = rec.record_request(
            Endpoint::GenerateImage,
            intended,
            sent,
            done,
            &Answer::Status(202),
        );
        assert_eq!(class, None);
        let m = rec.metrics(1.0, &[]);
        let d = &m["http_req_duration"].values;
        assert!((d["max"] - 50.0).abs() < 0.1, "{d:?}");
        let lag = &m["schedule_lag"].values;
        assert!((lag["max"] - 40.0).abs() < 0.1, "{lag:?}");
        assert!(m.contains_key("http_req_duration{name:POST /api/images/seedream4/generate}"));
        assert!(!m.contains_key("http_req_duration{name:GET /api/sessions/{id}}"));
    }

    #[test]
    fn iterations_count_errors_by_class_and_rates_add_up() {
        let rec = Recorder::new(Instant::now(), false);
        rec.record_iteration(None, Duration::from_millis(5));
        rec.record_iteration(None, Duration::from_millis(5));
        rec.record_iteration(Some(ErrorClass::CreditErrors), Duration::from_millis(5));
        rec.record_iteration(Some(ErrorClass::ProviderErrors), Duration::from_millis(5));
        let m = rec.metrics(2.0, &[]);
        assert_eq!(m["errors"].values["rate"], 0.5);
        assert_eq!(m["success_rate"].values["rate"], 0.5);
        assert_eq!(m["credit_errors"].values["count"], 1.0);
        assert_eq!(m["provider_errors"].values["count"], 1.0);
        assert_eq!(m["rate_limited"].values["count"], 0.0);
        assert_eq!(m["iterations"].values["rate"], 2.0);
        let e = rec.errors();
        assert_eq!((e.credit_errors, e.provider_errors), (1, 1));
        assert_eq!(e.error_rate, 0.5);
        // Closed model: no schedule lag, no dropped iterations.
        assert!(!m.contains_key("schedule_lag"));
        assert!(!m.contains_key("dropped_iterations"));
    }

    #[test]
    fn tick_closes_the_window_into_a_timeline_sample() {
        let t0 = Instant::now();
        let rec = Recorder::new(t0, false);
        for ms in [10, 20, 30] {
            rec.record_request(
                Endpoint::GenerateVideo,
                t0,
                t0,
                t0 + Duration::from_millis(ms),
                &Answer::Status(202),
            );
        }
        rec.set_load(3, 4.0);
        let snap = rec.tick(t0 + Duration::from_secs(1));
        assert_eq!(snap.generate, 3);
        assert_eq!(snap.generate_last_second, 3);
        let snap = rec.tick(t0 + Duration::from_secs(2));
        assert_eq!(snap.generate_last_second, 0);
        let timeline = rec.timeline();
        assert_eq!(timeline.len(), 2);
        assert_eq!(timeline[0].generate, 3);
        assert_eq!((timeline[0].vus, timeline[0].target), (3, 4.0));
        assert!((timeline[0].p95.unwrap() - 30.0).abs() < 0.1);
        assert_eq!(timeline[1].p95, None);
    }

    #[test]
    fn sessions_feed_e2e_only_when_completed() {
        let rec = Recorder::new(Instant::now(), false);
        for _ in 0..3 {
            rec.session_polling();
        }
        rec.record_session(
            SessionEnd::Completed,
            Duration::from_secs(2),
            Some(Duration::from_millis(1500)),
        );
        rec.record_session(SessionEnd::Failed, Duration::from_secs(1), None);
        assert_eq!(rec.polling(), 1);
        rec.record_session(SessionEnd::TimedOut, Duration::from_secs(9), None);
        let m = rec.metrics(1.0, &[99.9]);
        assert_eq!(m["session_e2e"].values["count"], 1.0);
        assert!((m["session_e2e"].values["p(99.9)"] - 2000.0).abs() < 2.0);
        assert!((m["session_processing"].values["max"] - 1500.0).abs() < 2.0);
        assert_eq!(m["sessions_failed"].values["count"], 1.0);
        assert_eq!(m["sessions_timed_out"].values["count"], 1.0);
        assert!((m["session_success"].values["rate"] - 1.0 / 3.0).abs() < 1e-9);
    }
}
