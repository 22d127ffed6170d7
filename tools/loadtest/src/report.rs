//! The HTML report: one self-contained file (inline CSS and SVG, no script, nothing fetched)
//! with headline tiles, latency over time, throughput with the load level, end-to-end session
//! latency, latency-by-percentile curves, and the tables (thresholds, routes, errors, checks,
//! the baseline comparison, the set-up). Hovering a point or bar shows its value.

use std::fmt::Write as _;

use crate::baseline::Verdict;
use crate::summary::{describe, Sample, Summary};

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 300.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 64.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 40.0;

/// Escapes text for HTML and SVG.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Milliseconds for people: `850 ms`, `3.21 s`.
fn ms_text(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

/// A round axis step giving about `ticks` ticks up to `max`.
fn nice_step(max: f64, ticks: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let raw = max / ticks;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    step
}

fn axis_label(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1000.0 && (v / 1000.0).fract() == 0.0 {
        format!("{}k", v / 1000.0)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}").trim_end_matches('0').to_string()
    }
}

/// A line on a chart; `None` values leave a gap.
struct Line<'a> {
    name: &'a str,
    color: &'a str,
    points: Vec<(f64, Option<f64>)>,
    dashed: bool,
    unit: &'a str,
}

/// A stacked bar layer.
struct Bars<'a> {
    name: &'a str,
    color: &'a str,
    values: Vec<f64>,
}

struct Chart<'a> {
    title: &'a str,
    y_label: &'a str,
    x_label: &'a str,
    /// x positions of the bars (the end of each second) and the x domain.
    xs: Vec<f64>,
    x_max: f64,
    bars: Vec<Bars<'a>>,
    lines: Vec<Line<'a>>,
    /// Lines drawn against the right axis.
    right: Vec<Line<'a>>,
    right_label: &'a str,
    /// Custom x ticks (value, label); evenly spaced ticks when empty.
    x_ticks: Vec<(f64, String)>,
    /// Shade from here to the end of the x axis (the drain after the load).
    shade_from: Option<f64>,
}

/// Where values land on a chart: the plot area and each axis's top value and tick step.
struct Scale {
    plot_w: f64,
    plot_h: f64,
    x_max: f64,
    y_max: f64,
    y_step: f64,
    r_max: f64,
    r_step: f64,
}

impl Scale {
    fn x(&self, v: f64) -> f64 {
        LEFT + v / self.x_max * self.plot_w
    }
    fn y(&self, v: f64) -> f64 {
        TOP + self.plot_h - v / self.y_max * self.plot_h
    }
    fn yr(&self, v: f64) -> f64 {
        TOP + self.plot_h - v / self.r_max * self.plot_h
    }
}

/// The largest value drawn by `lines`.
fn lines_max(lines: &[Line]) -> f64 {
    lines
        .iter()
        .flat_map(|l| l.points.iter().filter_map(|p| p.1))
        .fold(0.0, f64::max)
}

impl Chart<'_> {
    fn render(&self) -> String {
        let scale = self.scale();
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<figure class="chart"><figcaption>{}</figcaption><svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg">"#,
            escape(self.title),
            escape(self.title)
        );
        if let Some(from) = self.shade_from.filter(|f| *f < scale.x_max) {
            let _ = write!(
                s,
                r#"<rect x="{:.1}" y="{TOP}" width="{:.1}" height="{:.1}" class="shade"/><text x="{:.1}" y="{:.1}" class="tick" text-anchor="middle">drain</text>"#,
                scale.x(from),
                scale.x(scale.x_max) - scale.x(from),
                scale.plot_h,
                (scale.x(from) + scale.x(scale.x_max)) / 2.0,
                TOP + 12.0
            );
        }
        self.y_axes(&scale, &mut s);
        self.x_axis(&scale, &mut s);
        self.bars(&scale, &mut s);
        for line in &self.lines {
            draw_line(line, &scale, &|v| scale.y(v), &mut s);
        }
        for line in &self.right {
            draw_line(line, &scale, &|v| scale.yr(v), &mut s);
        }
        self.legend(&mut s);
        s.push_str("</svg></figure>");
        s
    }

    fn scale(&self) -> Scale {
        let stack_max = (0..self.xs.len())
            .map(|i| self.bars.iter().map(|b| b.values[i]).sum::<f64>())
            .fold(0.0, f64::max);
        let left_max = stack_max.max(lines_max(&self.lines));
        let y_step = nice_step(left_max, 5.0);
        let right_max = lines_max(&self.right);
        let r_step = nice_step(right_max, 5.0);
        Scale {
            plot_w: WIDTH - LEFT - RIGHT,
            plot_h: HEIGHT - TOP - BOTTOM,
            x_max: self.x_max.max(1e-9),
            y_max: ((left_max / y_step).ceil() * y_step).max(y_step),
            y_step,
            r_max: ((right_max / r_step).ceil() * r_step).max(r_step),
            r_step,
        }
    }

    /// The grid with the left axis, and the right axis when lines are drawn against it.
    fn y_axes(&self, scale: &Scale, s: &mut String) {
        let (plot_w, plot_h) = (scale.plot_w, scale.plot_h);
        let mut v = 0.0;
        while v <= scale.y_max + 1e-9 {
            let _ = write!(
                s,
                r##"<line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" class="grid"/><text x="{:.1}" y="{:.1}" class="tick" text-anchor="end">{}</text>"##,
                LEFT + plot_w,
                scale.y(v),
                scale.y(v),
                LEFT - 6.0,
                scale.y(v) + 4.0,
                axis_label(v)
            );
            v += scale.y_step;
        }
        if !self.right.is_empty() {
            let mut v = 0.0;
            while v <= scale.r_max + 1e-9 {
                let _ = write!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" class="tick" text-anchor="start">{}</text>"#,
                    LEFT + plot_w + 6.0,
                    scale.yr(v) + 4.0,
                    axis_label(v)
                );
                v += scale.r_step;
            }
            let _ = write!(
                s,
                r#"<text transform="translate({:.1} {:.1}) rotate(90)" class="axis" text-anchor="middle">{}</text>"#,
                WIDTH - 14.0,
                TOP + plot_h / 2.0,
                escape(self.right_label)
            );
        }
        let _ = write!(
            s,
            r#"<text transform="translate(16 {:.1}) rotate(-90)" class="axis" text-anchor="middle">{}</text>"#,
            TOP + plot_h / 2.0,
            escape(self.y_label)
        );
    }

    fn x_axis(&self, scale: &Scale, s: &mut String) {
        let (plot_w, plot_h, x_max) = (scale.plot_w, scale.plot_h, scale.x_max);
        let ticks: Vec<(f64, String)> = if self.x_ticks.is_empty() {
            let step = nice_step(x_max, 10.0);
            let mut t = Vec::new();
            let mut v = 0.0;
            while v <= x_max + 1e-9 {
                t.push((v, axis_label(v)));
                v += step;
            }
            t
        } else {
            self.x_ticks.clone()
        };
        for (v, label) in ticks {
            let _ = write!(
                s,
                r#"<line x1="{:.1}" x2="{:.1}" y1="{:.1}" y2="{:.1}" class="axisline"/><text x="{:.1}" y="{:.1}" class="tick" text-anchor="middle">{}</text>"#,
                scale.x(v),
                scale.x(v),
                TOP + plot_h,
                TOP + plot_h + 5.0,
                scale.x(v),
                TOP + plot_h + 18.0,
                escape(&label)
            );
        }
        let _ = write!(
            s,
            r#"<line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" class="axisline"/><text x="{:.1}" y="{:.1}" class="axis" text-anchor="middle">{}</text>"#,
            LEFT + plot_w,
            TOP + plot_h,
            TOP + plot_h,
            LEFT + plot_w / 2.0,
            HEIGHT - 4.0,
            escape(self.x_label)
        );
    }

    /// The bars, stacked per second.
    fn bars(&self, scale: &Scale, s: &mut String) {
        if self.bars.is_empty() || self.xs.is_empty() {
            return;
        }
        let slot = scale.plot_w / (scale.x_max.max(1.0));
        let width = (slot * 0.8).max(1.0);
        for (i, t) in self.xs.iter().enumerate() {
            let mut base = 0.0;
            for layer in &self.bars {
                let v = layer.values[i];
                if v <= 0.0 {
                    continue;
                }
                let _ = write!(
                    s,
                    r#"<rect x="{:.1}" y="{:.1}" width="{width:.1}" height="{:.1}" fill="{}"><title>{:.0}s: {} {}</title></rect>"#,
                    scale.x((*t - 1.0).max(0.0)) + (slot - width) / 2.0,
                    scale.y(base + v),
                    scale.y(base) - scale.y(base + v),
                    layer.color,
                    t,
                    axis_label(v),
                    escape(layer.name)
                );
                base += v;
            }
        }
    }

    fn legend(&self, s: &mut String) {
        let mut lx = LEFT;
        let entries = self
            .bars
            .iter()
            .map(|b| (b.name, b.color, false))
            .chain(self.lines.iter().map(|l| (l.name, l.color, l.dashed)))
            .chain(self.right.iter().map(|l| (l.name, l.color, l.dashed)));
        for (name, color, dashed) in entries {
            let _ = write!(
                s,
                r#"<rect x="{lx:.1}" y="8" width="14" height="{}" fill="{color}"/><text x="{:.1}" y="18" class="legend">{}</text>"#,
                if dashed { 3 } else { 10 },
                lx + 18.0,
                escape(name)
            );
            lx += 30.0 + name.chars().count() as f64 * 7.0;
        }
    }
}

/// A line as polylines broken where a value is missing, with a dot per point (when there are
/// few enough to hover).
fn draw_line(line: &Line, scale: &Scale, to_y: &dyn Fn(f64) -> f64, s: &mut String) {
    let mut segment: Vec<String> = Vec::new();
    let flush = |segment: &mut Vec<String>, s: &mut String| {
        if segment.len() > 1 {
            let _ = write!(
                s,
                r#"<polyline fill="none" stroke="{}" stroke-width="2"{} points="{}"/>"#,
                line.color,
                if line.dashed {
                    r#" stroke-dasharray="6 4""#
                } else {
                    ""
                },
                segment.join(" ")
            );
        }
        segment.clear();
    };
    for (px, py) in &line.points {
        match py {
            Some(v) => segment.push(format!("{:.1},{:.1}", scale.x(*px), to_y(*v))),
            None => flush(&mut segment, s),
        }
    }
    flush(&mut segment, s);
    if line.points.len() > 400 {
        return;
    }
    for (px, py) in &line.points {
        if let Some(v) = py {
            let _ = write!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="{}" fill="{}"><title>{}: {} {} at {}</title></circle>"#,
                scale.x(*px),
                to_y(*v),
                if line.points.len() > 120 { 1.5 } else { 2.5 },
                line.color,
                escape(line.name),
                axis_label((v * 100.0).round() / 100.0),
                line.unit,
                axis_label((px * 100.0).round() / 100.0)
            );
        }
    }
}

fn series(timeline: &[Sample], f: impl Fn(&Sample) -> Option<f64>) -> Vec<(f64, Option<f64>)> {
    timeline.iter().map(|s| (s.t, f(s))).collect()
}

/// Epoch milliseconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(epoch_ms: u64) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    i64::try_from(epoch_ms / 1000)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(format).ok())
        .unwrap_or_default()
}

/// The percentile-curve chart of one distribution (x: 0, 90, 99, 99.9, 99.99 equally spaced).
fn percentile_chart(title: &str, points: &[[f64; 2]], color: &str) -> String {
    let nines = |p: f64| -(1.0 - (p / 100.0).min(0.9999)).log10();
    let line = Line {
        name: "latency",
        color,
        points: points.iter().map(|[p, v]| (nines(*p), Some(*v))).collect(),
        dashed: false,
        unit: "ms",
    };
    Chart {
        title,
        y_label: "ms",
        x_label: "percentile",
        xs: Vec::new(),
        x_max: 4.0,
        bars: Vec::new(),
        lines: vec![line],
        right: Vec::new(),
        right_label: "",
        x_ticks: [0.0, 50.0, 90.0, 99.0, 99.9, 99.99]
            .iter()
            .map(|p| (nines(*p), format!("p{p}")))
            .collect(),
        shade_from: None,
    }
    .render()
}

/// The HTML report of a run: one self-contained page (inline CSS and SVG), in the order a
/// reader looks: verdict, headline numbers, charts over time, percentile curves, tables.
pub fn render(summary: &Summary) -> String {
    let mut html = header(summary);
    for part in [
        tiles,
        charts,
        percentile_charts,
        thresholds_table,
        routes_table,
        errors_table,
        checks_table,
        comparison_table,
        appendix,
    ] {
        html.push_str(&part(summary));
    }
    html
}

/// The title, what was run against what, and the thresholds' verdict.
fn header(summary: &Summary) -> String {
    let c = &summary.config;
    let mut html = String::new();
    let verdict = if summary.thresholds.is_empty() {
        r#"<span class="badge neutral">no thresholds</span>"#.to_string()
    } else if summary.passed {
        r#"<span class="badge pass">thresholds passed</span>"#.to_string()
    } else {
        format!(
            r#"<span class="badge fail">{} of {} thresholds breached</span>"#,
            summary.breached().len(),
            summary.thresholds.len()
        )
    };
    let _ = write!(
        html,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>Load test {}</title><style>{CSS}</style></head><body><header><h1>Load test <small>{}</small></h1><p>{} · {} model, stages <code>{}</code>{} · {} user(s){} · {:.0} s of load{} {}</p></header>"#,
        escape(&utc(summary.started_at_ms)),
        escape(&summary.base_url),
        escape(&utc(summary.started_at_ms)),
        escape(&c.mode),
        escape(&c.stages),
        c.preset
            .as_ref()
            .map(|p| format!(" (preset <b>{}</b>)", escape(p)))
            .unwrap_or_default(),
        c.users,
        if c.hot_user { ", hot user" } else { "" },
        summary.duration_s,
        if summary.drain_s > 0.5 {
            format!(" + {:.0} s drain", summary.drain_s)
        } else {
            String::new()
        },
        verdict
    );
    html
}

/// The headline numbers, and the run's notes.
fn tiles(summary: &Summary) -> String {
    let value = |m: &str, k: &str| summary.value(m, k);
    let mut html = String::new();
    let reqs = value("http_req_duration", "count").unwrap_or(0.0);
    let tiles = [
        ("generate requests", format!("{reqs:.0}"), String::new()),
        (
            "throughput",
            format!("{:.2}/s", reqs / summary.duration_s.max(1e-9)),
            format!(
                "{:.2} req/s all routes",
                value("http_reqs", "rate").unwrap_or(0.0)
            ),
        ),
        (
            "p95 generate (202)",
            value("http_req_duration", "p(95)")
                .map(ms_text)
                .unwrap_or("-".into()),
            format!(
                "p50 {} · max {}",
                value("http_req_duration", "med")
                    .map(ms_text)
                    .unwrap_or("-".into()),
                value("http_req_duration", "max")
                    .map(ms_text)
                    .unwrap_or("-".into())
            ),
        ),
        (
            "error rate",
            format!("{:.2}%", summary.errors.error_rate * 100.0),
            format!(
                "402 {} · 429 {} · 5xx {} · other {}",
                summary.errors.credit_errors,
                summary.errors.rate_limited,
                summary.errors.provider_errors,
                summary.errors.other_errors
            ),
        ),
        (
            "session end-to-end p95",
            value("session_e2e", "p(95)")
                .map(ms_text)
                .unwrap_or("-".into()),
            format!(
                "{}{:.0} completed · {:.0} failed · {:.0} timed out",
                value("session_processing", "p(95)")
                    .map(|p| format!("server-side p95 {} · ", ms_text(p)))
                    .unwrap_or_default(),
                value("sessions_completed", "count").unwrap_or(0.0),
                value("sessions_failed", "count").unwrap_or(0.0),
                value("sessions_timed_out", "count").unwrap_or(0.0)
            ),
        ),
        (
            "success rate",
            format!("{:.2}%", summary.errors.success_rate * 100.0),
            format!(
                "checks {:.2}%",
                value("checks", "rate").unwrap_or(0.0) * 100.0
            ),
        ),
    ];
    html.push_str(r#"<section class="tiles">"#);
    for (label, big, small) in tiles {
        let _ = write!(
            html,
            r#"<div class="tile"><div class="label">{}</div><div class="big">{}</div><div class="small">{}</div></div>"#,
            escape(label),
            escape(&big),
            escape(&small)
        );
    }
    html.push_str("</section>");

    if !summary.notes.is_empty() {
        html.push_str(r#"<section class="notes">"#);
        for note in &summary.notes {
            let _ = write!(html, "<p>⚠ {}</p>", escape(note));
        }
        html.push_str("</section>");
    }
    html
}

/// The x axis the charts over time share: the end of each second, the run's length, and where
/// the drain after the load starts.
struct TimeAxis {
    xs: Vec<f64>,
    x_max: f64,
    shade_from: Option<f64>,
}

/// Latency, throughput and (when sessions completed) sessions over time.
fn charts(summary: &Summary) -> String {
    let tl = &summary.timeline;
    let axis = TimeAxis {
        xs: tl.iter().map(|s| s.t).collect(),
        x_max: tl.last().map(|s| s.t.ceil()).unwrap_or(1.0),
        shade_from: (summary.drain_s > 0.5).then_some(summary.duration_s),
    };
    let mut html = latency_chart(summary, &axis);
    html.push_str(&throughput_chart(summary, &axis));
    if summary.value("sessions_completed", "count").unwrap_or(0.0) > 0.0 {
        html.push_str(&sessions_chart(summary, &axis));
    }
    html
}

fn latency_chart(summary: &Summary, axis: &TimeAxis) -> String {
    let tl = &summary.timeline;
    let open = summary.config.mode == "open";
    Chart {
        title: if open {
            "Generate latency over time (from the intended send time)"
        } else {
            "Generate latency over time"
        },
        y_label: "ms",
        x_label: "seconds",
        xs: axis.xs.clone(),
        x_max: axis.x_max,
        bars: Vec::new(),
        lines: vec![
            Line {
                name: "p50",
                color: "#4c78a8",
                points: series(tl, |s| s.p50),
                dashed: false,
                unit: "ms",
            },
            Line {
                name: "p95",
                color: "#f58518",
                points: series(tl, |s| s.p95),
                dashed: false,
                unit: "ms",
            },
            Line {
                name: "p99",
                color: "#e45756",
                points: series(tl, |s| s.p99),
                dashed: true,
                unit: "ms",
            },
        ],
        right: Vec::new(),
        right_label: "",
        x_ticks: Vec::new(),
        shade_from: axis.shade_from,
    }
    .render()
}

fn throughput_chart(summary: &Summary, axis: &TimeAxis) -> String {
    let tl = &summary.timeline;
    let open = summary.config.mode == "open";
    Chart {
        title: "Throughput: generate answers per second",
        y_label: "requests / s",
        x_label: "seconds",
        xs: axis.xs.clone(),
        x_max: axis.x_max,
        bars: vec![
            Bars {
                name: "accepted",
                color: "#54a24b",
                values: tl
                    .iter()
                    .map(|s| s.generate.saturating_sub(s.generate_errors) as f64)
                    .collect(),
            },
            Bars {
                name: "failed",
                color: "#e45756",
                values: tl.iter().map(|s| s.generate_errors as f64).collect(),
            },
        ],
        lines: Vec::new(),
        right: vec![Line {
            name: if open { "target rate /s" } else { "active VUs" },
            color: "#72b7b2",
            points: series(tl, |s| Some(if open { s.target } else { s.vus as f64 })),
            dashed: true,
            unit: if open { "/s" } else { "VUs" },
        }],
        right_label: if open { "target /s" } else { "VUs" },
        x_ticks: Vec::new(),
        shade_from: axis.shade_from,
    }
    .render()
}

fn sessions_chart(summary: &Summary, axis: &TimeAxis) -> String {
    let tl = &summary.timeline;
    Chart {
        title: "Sessions: completions per second and end-to-end p95",
        y_label: "sessions / s",
        x_label: "seconds",
        xs: axis.xs.clone(),
        x_max: axis.x_max,
        bars: vec![Bars {
            name: "completed",
            color: "#b279a2",
            values: tl.iter().map(|s| s.sessions_completed as f64).collect(),
        }],
        lines: Vec::new(),
        right: vec![Line {
            name: "e2e p95 (ms)",
            color: "#f58518",
            points: series(tl, |s| s.e2e_p95),
            dashed: false,
            unit: "ms",
        }],
        right_label: "ms",
        x_ticks: Vec::new(),
        shade_from: axis.shade_from,
    }
    .render()
}

/// The latency distributions as percentile curves, side by side.
fn percentile_charts(summary: &Summary) -> String {
    let mut html = String::new();
    html.push_str(r#"<div class="pair">"#);
    if let Some(points) = summary.distributions.get("http_req_duration") {
        html.push_str(&percentile_chart(
            "Generate latency by percentile",
            points,
            "#4c78a8",
        ));
    }
    if let Some(points) = summary.distributions.get("session_e2e") {
        html.push_str(&percentile_chart(
            "Session end-to-end latency by percentile",
            points,
            "#b279a2",
        ));
    }
    html.push_str("</div>");
    html
}

fn thresholds_table(summary: &Summary) -> String {
    let mut html = String::new();
    if !summary.thresholds.is_empty() {
        html.push_str(
            "<h2>Thresholds</h2><table><tr><th></th><th>threshold</th><th>actual</th></tr>",
        );
        for t in &summary.thresholds {
            let _ = write!(
                html,
                r#"<tr class="{}"><td>{}</td><td><code>{}</code></td><td>{}</td></tr>"#,
                if t.ok { "ok" } else { "bad" },
                if t.ok { "✓" } else { "✗" },
                escape(&t.threshold),
                escape(
                    &t.actual
                        .map(|a| format!("{a:.4}"))
                        .or_else(|| t.note.clone())
                        .unwrap_or_default()
                )
            );
        }
        html.push_str("</table>");
    }
    html
}

fn routes_table(summary: &Summary) -> String {
    let mut html = String::new();
    html.push_str("<h2>Routes</h2><table><tr><th>route</th><th>requests</th><th>rate/s</th><th>failed</th><th>p50</th><th>p90</th><th>p95</th><th>p99</th><th>max</th><th>statuses</th></tr>");
    for e in &summary.endpoints {
        let _ = write!(
            html,
            "<tr><td><code>{}</code></td><td>{}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&e.name),
            e.requests,
            e.rate,
            e.failed,
            ms_text(e.p50),
            ms_text(e.p90),
            ms_text(e.p95),
            ms_text(e.p99),
            ms_text(e.max),
            escape(
                &e.statuses
                    .iter()
                    .map(|(s, n)| format!("{s}×{n}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        );
    }
    html.push_str("</table>");
    html
}

fn errors_table(summary: &Summary) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<h2>Errors by class (generate requests)</h2><table><tr><th>credit_errors (402)</th><th>rate_limited (429)</th><th>provider_errors (5xx)</th><th>other_errors</th><th>error rate</th><th>success rate</th></tr><tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}%</td><td>{:.2}%</td></tr></table>",
        summary.errors.credit_errors,
        summary.errors.rate_limited,
        summary.errors.provider_errors,
        summary.errors.other_errors,
        summary.errors.error_rate * 100.0,
        summary.errors.success_rate * 100.0
    );
    html
}

fn checks_table(summary: &Summary) -> String {
    let mut html = String::new();
    if !summary.checks.is_empty() {
        html.push_str(
            "<h2>Checks</h2><table><tr><th>check</th><th>passed</th><th>failed</th></tr>",
        );
        for check in &summary.checks {
            let _ = write!(
                html,
                r#"<tr class="{}"><td>{}</td><td>{}</td><td>{}</td></tr>"#,
                if check.fails == 0 { "ok" } else { "bad" },
                escape(&check.name),
                check.passes,
                check.fails
            );
        }
        html.push_str("</table>");
    }
    html
}

/// This run against the baseline, metric by metric.
fn comparison_table(summary: &Summary) -> String {
    let mut html = String::new();
    if !summary.comparison.is_empty() {
        html.push_str("<h2>Change against the baseline</h2><table><tr><th>metric</th><th>stat</th><th>baseline</th><th>current</th><th>change</th><th>%</th></tr>");
        for ch in &summary.comparison {
            let class = match ch.verdict {
                Verdict::Better => "ok",
                Verdict::Worse => "bad",
                _ => "",
            };
            let _ = write!(
                html,
                r#"<tr class="{class}"><td><code>{}</code></td><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:+.3}</td><td>{}</td></tr>"#,
                escape(&ch.metric),
                escape(&ch.stat),
                ch.before,
                ch.after,
                ch.delta,
                ch.percent
                    .map(|p| format!("{p:+.1}%"))
                    .unwrap_or_else(|| "n/a".into())
            );
        }
        html.push_str("</table>");
    }
    html
}

/// Every metric, the set-up as JSON, and the footer.
fn appendix(summary: &Summary) -> String {
    let mut html = String::new();
    html.push_str("<details><summary>All metrics</summary><table>");
    for (name, metric) in &summary.metrics {
        let _ = write!(
            html,
            "<tr><td><code>{}</code></td><td>{}</td></tr>",
            escape(name),
            escape(&describe(metric))
        );
    }
    html.push_str("</table></details><details><summary>Set-up</summary><pre>");
    html.push_str(&escape(
        &serde_json::to_string_pretty(&summary.config).unwrap_or_default(),
    ));
    let _ = writeln!(
        html,
        "</pre></details><footer>loadtest {} · latency from the intended send time · generated without scripts or external assets</footer></body></html>",
        escape(&summary.version)
    );
    html
}

const CSS: &str = r#"
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1040px;padding:24px;color:#1f2933;background:#f7f8fa}
h1{margin:0 0 4px;font-size:26px}h1 small{font-weight:400;color:#52606d;font-size:16px}
h2{margin:32px 0 8px;font-size:18px}
header p{margin:0;color:#52606d}
code{font:13px ui-monospace,SFMono-Regular,Menlo,monospace}
.badge{display:inline-block;padding:2px 10px;border-radius:12px;font-weight:600;font-size:13px;margin-left:6px}
.pass{background:#d3f9d8;color:#2b8a3e}.fail{background:#ffe3e3;color:#c92a2a}.neutral{background:#e9ecef;color:#495057}
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:12px;margin:20px 0}
.tile{background:#fff;border-radius:10px;padding:12px 14px;box-shadow:0 1px 3px rgba(0,0,0,.08)}
.tile .label{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:#7b8794}
.tile .big{font-size:24px;font-weight:650;margin:2px 0}.tile .small{font-size:12px;color:#616e7c}
.notes{background:#fff4e6;border-radius:10px;padding:4px 14px;margin:12px 0}
.chart{background:#fff;border-radius:10px;margin:14px 0;padding:10px 10px 0;box-shadow:0 1px 3px rgba(0,0,0,.08)}
.chart figcaption{font-weight:600;padding:0 6px}
.chart svg{width:100%;height:auto;display:block}
.pair{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:0 14px}
.grid{stroke:#e4e7eb;stroke-width:1}.shade{fill:#f1f3f5}.axisline{stroke:#9aa5b1;stroke-width:1}
.tick{font-size:11px;fill:#616e7c}.axis{font-size:12px;fill:#3e4c59}.legend{font-size:12px;fill:#3e4c59}
circle:hover{r:5}rect:hover{opacity:.8}
table{border-collapse:collapse;width:100%;background:#fff;border-radius:10px;overflow:hidden;box-shadow:0 1px 3px rgba(0,0,0,.08)}
th,td{padding:6px 10px;text-align:left;border-bottom:1px solid #eef0f2;font-size:13px}
th{background:#f0f2f5;font-weight:600}
tr.ok td:first-child{color:#2b8a3e;font-weight:700}tr.bad td{background:#fff5f5}tr.bad td:first-child{color:#c92a2a;font-weight:700}
details{margin:18px 0}summary{cursor:pointer;font-weight:600}
pre{background:#fff;padding:12px;border-radius:8px;overflow:auto}
footer{margin:32px 0 8px;color:#9aa5b1;font-size:12px}
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::{Metric, MetricKind};
    use crate::threshold::ThresholdResult;

    fn summary() -> Summary {
        let timeline = (1..=10)
            .map(|t| Sample {
                t: t as f64,
                vus: 2,
                target: 2.0,
                requests: 12,
                generate: 10,
                generate_errors: (t % 3 == 0) as u64,
                p50: Some(20.0 + t as f64),
                p95: Some(40.0 + t as f64),
                p99: if t == 5 { None } else { Some(60.0) },
                sessions_completed: 3,
                e2e_p95: Some(1500.0),
                polling: 4,
            })
            .collect();
        let mut s = Summary {
            tool: "loadtest".into(),
            version: "0.1.0".into(),
            started_at_ms: 1_767_225_600_000,
            duration_s: 10.0,
            base_url: "http://127.0.0.1:1/<script>".into(),
            timeline,
            ..Default::default()
        };
        s.config.mode = "closed".into();
        s.metrics.insert(
            "sessions_completed".into(),
            Metric {
                kind: MetricKind::Counter,
                contains: None,
                values: [("count".to_string(), 30.0)].into(),
            },
        );
        s.distributions.insert(
            "http_req_duration".into(),
            vec![[0.0, 5.0], [50.0, 20.0], [99.0, 60.0], [100.0, 90.0]],
        );
        s.thresholds.push(ThresholdResult {
            threshold: "http_req_duration:p(95)<10".into(),
            metric: "http_req_duration".into(),
            ok: false,
            actual: Some(45.0),
            limit: 10.0,
            note: None,
        });
        s
    }

    #[test]
    fn the_report_holds_the_latency_throughput_and_session_charts_as_inline_svg() {
        let html = render(&summary());
        assert!(html.starts_with("<!doctype html>"));
        assert_eq!(
            html.matches("<svg").count(),
            4,
            "latency, throughput, sessions, percentiles"
        );
        assert!(html.contains("Generate latency over time"));
        assert!(html.contains("Throughput"));
        assert!(html.contains("<polyline"));
        assert!(html.contains("<rect"));
        assert!(html.contains("1 of 1 thresholds breached"));
        assert!(html.contains("2026-01-01 00:00:00 UTC"));
        // Self-contained: nothing fetched, no script, and text is escaped.
        assert!(!html.contains("<script"));
        assert!(!html.contains("src=\"http"));
        assert!(!html.contains("href=\"http"));
        assert!(html.contains("&lt;script&gt;"));
    }

    #[test]
    fn a_gap_in_a_series_splits_its_line() {
        let html = render(&summary());
        // p99 is missing at t=5: two polylines for it, one each for p50 and p95.
        assert_eq!(
            html.matches("stroke=\"#e45756\" stroke-width=\"2\"")
                .count(),
            2
        );
    }

    #[test]
    fn axis_steps_are_round_numbers() {
        assert_eq!(nice_step(100.0, 5.0), 20.0);
        assert_eq!(nice_step(7.0, 5.0), 2.0);
        assert_eq!(nice_step(0.0, 5.0), 1.0);
        assert_eq!(nice_step(1234.0, 5.0), 250.0);
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
    }
}
