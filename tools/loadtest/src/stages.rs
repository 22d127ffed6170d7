//! Load profiles: k6-style stages (`10s:5,20s:10`), arrival rates (`20/s`), the named presets,
//! think time, and the arrival schedule of the open model.
//!
//! A profile is a piecewise-linear function of time: each stage ramps linearly from the previous
//! stage's target (or the profile's start) to its own target over its duration, exactly as k6's
//! `ramping-vus` and `ramping-arrival-rate` executors do.

use std::fmt;
use std::time::Duration;

/// Parses a duration: `0`, `500ms`, `10s`, `1.5s`, `2m`, `1h30m`, `2m30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = 0.0_f64;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration `{text}` needs a unit (ms, s, m, h)"))?;
        if digits == 0 {
            return Err(format!("duration `{text}`: expected a number"));
        }
        let number: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("duration `{text}`: bad number `{}`", &rest[..digits]))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => return Err(format!("duration `{text}`: unknown unit `{other}`")),
        };
        total += number * seconds;
        rest = &rest[unit_len..];
    }
    Ok(Duration::from_secs_f64(total))
}

/// Formats a duration the way it is written on the command line (`1m30s`, `500ms`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if !ms.is_multiple_of(1000) {
        return if ms < 1000 {
            format!("{ms}ms")
        } else {
            format!("{:.1}s", d.as_secs_f64())
        };
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

/// Parses an arrival rate: `20/s`, `20`, `600/m`, `3600/h`, `5/10s`; returns iterations per second.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let text = text.trim();
    let (count, per) = match text.split_once('/') {
        Some((count, unit)) => {
            let per = match unit.trim() {
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                other => parse_duration(other)
                    .map_err(|e| format!("rate `{text}`: {e}"))?
                    .as_secs_f64(),
            };
            (count.trim(), per)
        }
        None => (text, 1.0),
    };
    let count: f64 = count
        .parse()
        .map_err(|_| format!("rate `{text}`: expected a number like `20/s`"))?;
    if !count.is_finite() || count < 0.0 || per <= 0.0 {
        return Err(format!(
            "rate `{text}` must be a non-negative number per positive time"
        ));
    }
    Ok(count / per)
}

/// One stage: ramp linearly to `target` over `duration`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stage {
    /// How long the ramp takes.
    pub duration: Duration,
    /// VUs (closed model) or iterations per second (open model) at the end of the stage.
    pub target: f64,
}

/// A piecewise-linear load profile starting at `start`.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    /// The level at time zero (k6's `startVUs` / `startRate`).
    pub start: f64,
    /// The stages in order.
    pub stages: Vec<Stage>,
}

impl Profile {
    /// Parses k6 VU stages, `10s:5,20s:10`, starting from 0 VUs.
    pub fn parse_vus(text: &str) -> Result<Self, String> {
        let stages = parse_stages(text, |t| {
            let vus: u32 = t
                .trim()
                .parse()
                .map_err(|_| format!("VU target `{t}` must be a whole number"))?;
            Ok(vus as f64)
        })?;
        Ok(Self { start: 0.0, stages })
    }

    /// Parses arrival-rate stages, `10s:5/s,30s:50/s`, starting from `start` per second.
    pub fn parse_rates(text: &str, start: f64) -> Result<Self, String> {
        let stages = parse_stages(text, parse_rate)?;
        Ok(Self { start, stages })
    }

    /// A constant level for `duration` (the constant-arrival-rate executor).
    pub fn constant(level: f64, duration: Duration) -> Self {
        Self {
            start: level,
            stages: vec![Stage {
                duration,
                target: level,
            }],
        }
    }

    /// The length of the whole profile.
    pub fn total(&self) -> Duration {
        self.stages.iter().map(|s| s.duration).sum()
    }

    /// The highest level the profile reaches.
    pub fn peak(&self) -> f64 {
        self.stages
            .iter()
            .map(|s| s.target)
            .fold(self.start, f64::max)
    }

    /// The level at `t`, interpolated linearly within the stage; `None` once the profile is over.
    pub fn level_at(&self, t: Duration) -> Option<f64> {
        let mut from = self.start;
        let mut stage_start = Duration::ZERO;
        for stage in &self.stages {
            let end = stage_start + stage.duration;
            if t < end {
                let progress = (t - stage_start).as_secs_f64() / stage.duration.as_secs_f64();
                return Some(from + (stage.target - from) * progress);
            }
            from = stage.target;
            stage_start = end;
        }
        None
    }

    /// VUs wanted at `t`: the interpolated level rounded up, so a VU starts as soon as the ramp
    /// asks for any part of it and the last one stops when the ramp reaches zero.
    pub fn vus_at(&self, t: Duration) -> Option<usize> {
        self.level_at(t)
            .map(|level| (level - 1e-9).ceil().max(0.0) as usize)
    }

    /// Expected number of iterations of an arrival-rate profile (the area under the curve).
    pub fn expected_arrivals(&self) -> f64 {
        let mut from = self.start;
        let mut area = 0.0;
        for stage in &self.stages {
            area += (from + stage.target) / 2.0 * stage.duration.as_secs_f64();
            from = stage.target;
        }
        area
    }
}

impl fmt::Display for Profile {
    /// Writes the stages back in k6 spelling.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, stage) in self.stages.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}:{}", format_duration(stage.duration), stage.target)?;
        }
        Ok(())
    }
}

fn parse_stages(
    text: &str,
    target: impl Fn(&str) -> Result<f64, String>,
) -> Result<Vec<Stage>, String> {
    let mut stages = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (duration, level) = part
            .split_once(':')
            .ok_or_else(|| format!("stage `{part}` must be `duration:target`, e.g. `30s:10`"))?;
        let duration = parse_duration(duration)?;
        if duration.is_zero() {
            return Err(format!("stage `{part}` has a zero duration"));
        }
        stages.push(Stage {
            duration,
            target: target(level)?,
        });
    }
    if stages.is_empty() {
        return Err("no stages given".into());
    }
    Ok(stages)
}

/// The named load profiles (closed model).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// `5s:2,10s:2`: two VUs for 15 s, a quick check that everything answers (CI).
    Smoke,
    /// `10s:5,50s:10,10s:0`: the old k6 script, 5 → 10 VUs over 70 s.
    Load,
    /// `1m:50,2m:100,1m:0`: the old stress profile.
    Stress,
    /// `10s:10,30s:100,10s:10`: the old spike profile.
    Spike,
    /// `2m:20,30m:20,2m:0`: the old soak profile.
    Soak,
}

impl Preset {
    /// The preset's stages in k6 spelling.
    pub fn stages(self) -> &'static str {
        match self {
            Self::Smoke => "5s:2,10s:2",
            Self::Load => "10s:5,50s:10,10s:0",
            Self::Stress => "1m:50,2m:100,1m:0",
            Self::Spike => "10s:10,30s:100,10s:10",
            Self::Soak => "2m:20,30m:20,2m:0",
        }
    }

    /// The preset as a profile.
    pub fn profile(self) -> Profile {
        Profile::parse_vus(self.stages()).expect("presets are valid")
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Smoke => "smoke",
            Self::Load => "load",
            Self::Stress => "stress",
            Self::Spike => "spike",
            Self::Soak => "soak",
        }
    }
}

/// Think time between a VU's iterations.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Think {
    /// Go again at once.
    None,
    /// Always the same pause.
    Fixed(Duration),
    /// A pause drawn uniformly from `[low, high]` (the old script: 1-3 s).
    Uniform(Duration, Duration),
}

impl Think {
    /// Parses `0`, `2s` or `1s..3s`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Some((low, high)) = text.split_once("..") {
            let (low, high) = (parse_duration(low)?, parse_duration(high)?);
            if high < low {
                return Err(format!("think `{text}`: upper bound below lower bound"));
            }
            return Ok(if high.is_zero() {
                Self::None
            } else {
                Self::Uniform(low, high)
            });
        }
        let fixed = parse_duration(text)?;
        Ok(if fixed.is_zero() {
            Self::None
        } else {
            Self::Fixed(fixed)
        })
    }

    /// Draws one pause.
    pub fn sample(&self, rng: &mut fastrand::Rng) -> Duration {
        match *self {
            Self::None => Duration::ZERO,
            Self::Fixed(d) => d,
            Self::Uniform(low, high) => low + (high - low).mul_f64(rng.f64()),
        }
    }
}

impl fmt::Display for Think {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("0"),
            Self::Fixed(d) => f.write_str(&format_duration(*d)),
            Self::Uniform(low, high) => {
                write!(f, "{}..{}", format_duration(*low), format_duration(*high))
            }
        }
    }
}

/// Intended start times of the open model's iterations, as offsets from the start of the run.
///
/// Iteration `k` (from 0) is due when the cumulative number of arrivals, the integral of the
/// rate, reaches `k`. The times depend only on the profile, never on how fast the system
/// answers: that is what lets latency be measured from the intended time.
#[derive(Clone, Debug)]
pub struct ArrivalSchedule {
    profile: Profile,
    stage: usize,
    stage_start: Duration,
    stage_from: f64,
    arrivals_before_stage: f64,
    next: u64,
}

impl ArrivalSchedule {
    /// The schedule of a rate profile (levels in iterations per second).
    pub fn new(profile: Profile) -> Self {
        let stage_from = profile.start;
        Self {
            profile,
            stage: 0,
            stage_start: Duration::ZERO,
            stage_from,
            arrivals_before_stage: 0.0,
            next: 0,
        }
    }
}

impl Iterator for ArrivalSchedule {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let k = self.next as f64;
        while let Some(stage) = self.profile.stages.get(self.stage) {
            let length = stage.duration.as_secs_f64();
            let (r0, r1) = (self.stage_from, stage.target);
            let in_stage = (r0 + r1) / 2.0 * length;
            let x = k - self.arrivals_before_stage;
            if x < in_stage {
                // Arrivals within the stage: A(t) = r0·t + a·t²/2 with a = (r1 - r0) / length.
                // Solved for A(t) = x in the form that stays exact when a is 0 or r0 is 0.
                let a = (r1 - r0) / length;
                let root = (r0 * r0 + 2.0 * a * x).max(0.0).sqrt();
                let t = if r0 + root > 0.0 {
                    2.0 * x / (r0 + root)
                } else {
                    0.0
                };
                self.next += 1;
                return Some(self.stage_start + Duration::from_secs_f64(t.min(length)));
            }
            self.arrivals_before_stage += in_stage;
            self.stage_start += stage.duration;
            self.stage_from = stage.target;
            self.stage += 1;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn durations_parse_in_k6_spelling() {
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("500ms").unwrap(), secs(0.5));
        assert_eq!(parse_duration("10s").unwrap(), secs(10.0));
        assert_eq!(parse_duration("1.5s").unwrap(), secs(1.5));
        assert_eq!(parse_duration("2m30s").unwrap(), secs(150.0));
        assert_eq!(parse_duration("1h").unwrap(), secs(3600.0));
        for bad in ["", "10", "s", "10x", "1m-", "ms"] {
            assert!(parse_duration(bad).is_err(), "{bad} should not parse");
        }
        assert_eq!(format_duration(secs(150.0)), "2m30s");
        assert_eq!(format_duration(secs(0.25)), "250ms");
    }

    #[test]
    fn rates_parse_per_second_minute_or_any_period() {
        assert_eq!(parse_rate("20/s").unwrap(), 20.0);
        assert_eq!(parse_rate("20").unwrap(), 20.0);
        assert_eq!(parse_rate("600/m").unwrap(), 10.0);
        assert_eq!(parse_rate("5/10s").unwrap(), 0.5);
        assert!(parse_rate("-1/s").is_err());
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn vu_stages_parse_and_interpolate_linearly() {
        let p = Profile::parse_vus("10s:5,20s:10").unwrap();
        assert_eq!(p.total(), secs(30.0));
        assert_eq!(p.level_at(secs(0.0)), Some(0.0));
        assert_eq!(p.level_at(secs(5.0)), Some(2.5));
        assert_eq!(p.level_at(secs(10.0)), Some(5.0));
        assert_eq!(p.level_at(secs(20.0)), Some(7.5));
        assert_eq!(p.level_at(secs(30.0)), None);
        assert_eq!(p.vus_at(secs(0.0)), Some(0));
        assert_eq!(p.vus_at(secs(0.1)), Some(1));
        assert_eq!(p.vus_at(secs(10.0)), Some(5));
        assert_eq!(p.peak(), 10.0);
        assert_eq!(p.to_string(), "10s:5,20s:10");
    }

    #[test]
    fn ramp_down_reaches_zero_at_the_end_of_the_stage() {
        let p = Preset::Load.profile();
        assert_eq!(p.total(), secs(70.0));
        assert_eq!(p.vus_at(secs(60.0)), Some(10));
        assert_eq!(p.vus_at(secs(65.0)), Some(5));
        assert_eq!(p.vus_at(secs(69.99)), Some(1));
        assert_eq!(p.vus_at(secs(70.0)), None);
    }

    #[test]
    fn malformed_stages_are_refused_with_a_reason() {
        assert!(Profile::parse_vus("").is_err());
        assert!(Profile::parse_vus("10s")
            .unwrap_err()
            .contains("duration:target"));
        assert!(Profile::parse_vus("0s:5")
            .unwrap_err()
            .contains("zero duration"));
        assert!(Profile::parse_vus("10s:2.5").is_err());
        assert!(Profile::parse_vus("10s:-1").is_err());
    }

    #[test]
    fn every_preset_parses_and_has_the_documented_length() {
        let lengths = [
            (Preset::Smoke, 15.0),
            (Preset::Load, 70.0),
            (Preset::Stress, 240.0),
            (Preset::Spike, 50.0),
            (Preset::Soak, 34.0 * 60.0),
        ];
        for (preset, length) in lengths {
            assert_eq!(preset.profile().total(), secs(length), "{}", preset.name());
        }
        assert_eq!(Preset::Spike.profile().peak(), 100.0);
    }

    #[test]
    fn think_time_parses_ranges_fixed_and_zero() {
        assert_eq!(Think::parse("0").unwrap(), Think::None);
        assert_eq!(Think::parse("2s").unwrap(), Think::Fixed(secs(2.0)));
        let range = Think::parse("1s..3s").unwrap();
        assert_eq!(range, Think::Uniform(secs(1.0), secs(3.0)));
        assert!(Think::parse("3s..1s").is_err());
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..1000 {
            let d = range.sample(&mut rng);
            assert!(d >= secs(1.0) && d <= secs(3.0));
        }
        assert_eq!(range.to_string(), "1s..3s");
    }

    #[test]
    fn constant_rate_schedules_evenly_spaced_arrivals() {
        let times: Vec<_> = ArrivalSchedule::new(Profile::constant(20.0, secs(2.0))).collect();
        assert_eq!(times.len(), 40);
        for (k, t) in times.iter().enumerate() {
            assert!((t.as_secs_f64() - k as f64 / 20.0).abs() < 1e-9);
        }
    }

    #[test]
    fn ramping_rate_schedule_follows_the_integral_of_the_rate() {
        // 0 → 10/s over 10 s: A(t) = t²/2, so arrival k is due at sqrt(2k); 50 in all.
        let p = Profile::parse_rates("10s:10/s", 0.0).unwrap();
        assert_eq!(p.expected_arrivals(), 50.0);
        let times: Vec<_> = ArrivalSchedule::new(p).collect();
        assert_eq!(times.len(), 50);
        for (k, t) in times.iter().enumerate() {
            assert!(
                (t.as_secs_f64() - (2.0 * k as f64).sqrt()).abs() < 1e-9,
                "k={k}"
            );
        }
        // Then a plateau: 10/s for 5 s more is 50 more arrivals, 0.1 s apart.
        let p = Profile::parse_rates("10s:10/s,5s:10/s", 0.0).unwrap();
        let times: Vec<_> = ArrivalSchedule::new(p).collect();
        assert_eq!(times.len(), 100);
        assert!((times[50].as_secs_f64() - 10.0).abs() < 1e-9);
        assert!((times[99].as_secs_f64() - 14.9).abs() < 1e-9);
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn ramp_down_and_zero_rate_stages_schedule_nothing_past_the_end() {
        let p = Profile::parse_rates("2s:10/s,2s:0/s,2s:0/s", 10.0).unwrap();
        let times: Vec<_> = ArrivalSchedule::new(p.clone()).collect();
        assert_eq!(times.len() as f64, p.expected_arrivals());
        assert!(times.iter().all(|t| *t < secs(4.0)));
        // In the ramp-down the gaps widen.
        let gaps: Vec<f64> = times[20..]
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs_f64())
            .collect();
        assert!(gaps.windows(2).all(|g| g[1] >= g[0] - 1e-9));
    }
}
