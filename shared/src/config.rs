//! Typed configuration, read once per cold start from the environment. A missing or malformed
//! variable is a startup error that names it.

use std::env;
use std::str::FromStr;

/// A configuration variable that is missing or cannot be parsed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is not set.
    #[error("environment variable {0} is required but not set")]
    Missing(&'static str),
    /// A variable is set but its value is not valid.
    #[error("environment variable {name} has an invalid value {value:?}: {reason}")]
    Invalid {
        /// The variable's name.
        name: &'static str,
        /// The value found.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
}

/// The configuration shared by every function.
#[derive(Clone, Debug)]
pub struct Config {
    /// The single DynamoDB table.
    pub table: String,
    /// URL of the SQS generation queue.
    pub queue_url: String,
    /// The private S3 bucket holding outputs.
    pub bucket: String,
    /// Sessions a user may have in flight at once (429 past it).
    pub inflight_cap: u32,
    /// Longest prompt accepted, in characters.
    pub max_prompt_chars: usize,
    /// Lifetime of presigned output URLs, in seconds.
    pub presign_ttl_secs: u64,
    /// Lifetime of idempotency records, in seconds.
    pub idempotency_ttl_secs: i64,
    /// Provider model id for Seedream 4.0.
    pub seedream_40_model: String,
    /// Provider model id for Seedream 4.5.
    pub seedream_45_model: String,
    /// Provider model id for Seedance 1.0 pro.
    pub seedance_pro_model: String,
    /// Provider model id for Seedance 1.0 lite (text to video).
    pub seedance_lite_model: String,
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| env::var(name).ok())
    }

    /// Reads the configuration through `lookup`, so tests need not touch the environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let required = |name: &'static str| {
            lookup(name)
                .filter(|v| !v.trim().is_empty())
                .ok_or(ConfigError::Missing(name))
        };
        let text = |name: &'static str, default: &str| lookup(name).unwrap_or(default.to_owned());
        Ok(Self {
            table: required("TABLE_NAME")?,
            queue_url: required("QUEUE_URL")?,
            bucket: required("BUCKET_NAME")?,
            inflight_cap: parsed(&lookup, "INFLIGHT_CAP", 4, |v: &u32| *v >= 1)?,
            max_prompt_chars: parsed(&lookup, "MAX_PROMPT_CHARS", 2000, |v: &usize| *v >= 1)?,
            presign_ttl_secs: parsed(&lookup, "PRESIGN_TTL_SECS", 900, |v: &u64| {
                (1..=604_800).contains(v)
            })?,
            idempotency_ttl_secs: parsed(&lookup, "IDEMPOTENCY_TTL_SECS", 86_400, |v: &i64| {
                *v >= 60
            })?,
            seedream_40_model: text("SEEDREAM_40_MODEL", "seedream-4-0-250828"),
            seedream_45_model: text("SEEDREAM_45_MODEL", "seedream-4-5-251128"),
            seedance_pro_model: text("SEEDANCE_PRO_MODEL", "seedance-1-0-pro-250528"),
            seedance_lite_model: text("SEEDANCE_LITE_MODEL", "seedance-1-0-lite-t2v-250428"),
        })
    }
}

/// A number from the environment, or its default (a malformed value is an error naming it).
pub fn env_number<T: FromStr>(name: &'static str, default: T) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    parsed(&|n: &str| env::var(n).ok(), name, default, |_| true)
}

fn parsed<T: FromStr>(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: T,
    valid: impl Fn(&T) -> bool,
) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    let Some(raw) = lookup(name) else {
        return Ok(default);
    };
    let invalid = |reason: String| ConfigError::Invalid {
        name,
        value: raw.clone(),
        reason,
    };
    let value = raw
        .trim()
        .parse::<T>()
        .map_err(|e| invalid(e.to_string()))?;
    if valid(&value) {
        Ok(value)
    } else {
        Err(invalid("out of range".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const BASE: [(&str, &str); 3] = [
        ("TABLE_NAME", "t"),
        ("QUEUE_URL", "http://q"),
        ("BUCKET_NAME", "b"),
    ];

    #[test]
    fn missing_variable_is_named() {
        let err = Config::from_lookup(lookup(&BASE[..2])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment variable BUCKET_NAME is required but not set"
        );
    }

    #[test]
    fn malformed_number_is_named() {
        let mut pairs = BASE.to_vec();
        pairs.push(("INFLIGHT_CAP", "many"));
        let err = Config::from_lookup(lookup(&pairs)).unwrap_err();
        assert!(err.to_string().contains("INFLIGHT_CAP"), "{err}");
        pairs.pop();
        pairs.push(("INFLIGHT_CAP", "0"));
        assert!(Config::from_lookup(lookup(&pairs)).is_err());
    }

    #[test]
    fn defaults_apply() {
        let config = Config::from_lookup(lookup(&BASE)).unwrap();
        assert_eq!(config.inflight_cap, 4);
        assert_eq!(config.max_prompt_chars, 2000);
    }
}
