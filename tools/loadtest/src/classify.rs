//! What an answer means for the load test: success, or one of the error classes the old k6
//! script counted (`credit_errors` for 402, `provider_errors` for 5xx) plus `rate_limited` (429)
//! and everything else.

use serde::{Deserialize, Serialize};

/// What came back for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// An HTTP status.
    Status(u16),
    /// The request timed out (`--http-timeout`).
    Timeout,
    /// No HTTP answer: connection refused or reset, DNS, TLS.
    Transport,
}

impl Answer {
    /// How the answer is counted in the status table (`202`, `timeout`, `transport`).
    pub fn label(&self) -> String {
        match self {
            Self::Status(code) => code.to_string(),
            Self::Timeout => "timeout".into(),
            Self::Transport => "transport".into(),
        }
    }
}

/// The error classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// 402: the user's credits do not cover the request.
    CreditErrors,
    /// 429: the per-user in-flight cap or the gateway's throttle.
    RateLimited,
    /// 5xx: the backend's (or, in the old system, the provider's) fault.
    ProviderErrors,
    /// Anything else: other statuses, timeouts, transport failures, a 2xx whose body fails
    /// the checks.
    OtherErrors,
}

impl ErrorClass {
    /// Every class, in report order.
    pub const ALL: [Self; 4] = [
        Self::CreditErrors,
        Self::RateLimited,
        Self::ProviderErrors,
        Self::OtherErrors,
    ];

    /// The metric name.
    pub fn metric(self) -> &'static str {
        match self {
            Self::CreditErrors => "credit_errors",
            Self::RateLimited => "rate_limited",
            Self::ProviderErrors => "provider_errors",
            Self::OtherErrors => "other_errors",
        }
    }

    /// The short label of the progress line.
    pub fn short(self) -> &'static str {
        match self {
            Self::CreditErrors => "402",
            Self::RateLimited => "429",
            Self::ProviderErrors => "5xx",
            Self::OtherErrors => "other",
        }
    }

    /// Position in [`Self::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Classifies an answer to a request that expected `expected`: `None` is a success.
pub fn classify(expected: u16, answer: &Answer) -> Option<ErrorClass> {
    match answer {
        Answer::Status(code) if *code == expected => None,
        Answer::Status(402) => Some(ErrorClass::CreditErrors),
        Answer::Status(429) => Some(ErrorClass::RateLimited),
        Answer::Status(500..=599) => Some(ErrorClass::ProviderErrors),
        _ => Some(ErrorClass::OtherErrors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expected_status_is_a_success() {
        assert_eq!(classify(202, &Answer::Status(202)), None);
        assert_eq!(classify(200, &Answer::Status(200)), None);
    }

    #[test]
    fn statuses_map_to_the_k6_script_classes() {
        assert_eq!(
            classify(202, &Answer::Status(402)),
            Some(ErrorClass::CreditErrors)
        );
        assert_eq!(
            classify(202, &Answer::Status(429)),
            Some(ErrorClass::RateLimited)
        );
        for code in [500, 502, 503, 504, 599] {
            assert_eq!(
                classify(202, &Answer::Status(code)),
                Some(ErrorClass::ProviderErrors)
            );
        }
    }

    #[test]
    fn anything_else_is_other_including_a_wrong_success_and_no_answer() {
        for answer in [
            Answer::Status(200),
            Answer::Status(400),
            Answer::Status(401),
            Answer::Status(404),
            Answer::Status(422),
            Answer::Timeout,
            Answer::Transport,
        ] {
            assert_eq!(
                classify(202, &answer),
                Some(ErrorClass::OtherErrors),
                "{answer:?}"
            );
        }
        assert_eq!(Answer::Timeout.label(), "timeout");
        assert_eq!(Answer::Status(429).label(), "429");
    }

    #[test]
    fn class_metric_names_are_the_k6_ones() {
        let names: Vec<_> = ErrorClass::ALL.iter().map(|c| c.metric()).collect();
        assert_eq!(
            names,
            [
                "credit_errors",
                "rate_limited",
                "provider_errors",
                "other_errors"
            ]
        );
        assert!(ErrorClass::ALL
            .iter()
            .enumerate()
            .all(|(i, c)| c.index() == i));
    }
}
