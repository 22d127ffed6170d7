//! Our own failures: an AWS call that did not answer as expected, a stored item that does not
//! decode, a request we could not build, a broken invariant. Workers (generator, sweeper,
//! deadletter) and the item modules return a [`Fault`]; the HTTP edge answers it with a 500
//! ([`crate::error::ApiError::Internal`]). It keeps its source chain, so a log line says what
//! failed and why, down to the SDK's own error.

use std::error::Error as StdError;

/// Any error, boxed, as a [`Fault`]'s source.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Result of a step that can only fail by our own fault.
pub type Result<T, E = Fault> = std::result::Result<T, E>;

/// A failure of ours, with what we were doing and, when there is one, its cause.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct Fault {
    what: String,
    #[source]
    source: Option<BoxError>,
}

impl Fault {
    /// A fault with no underlying error (a broken invariant, an unexpected answer).
    pub fn new(what: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            source: None,
        }
    }

    /// A fault caused by `source`.
    pub fn caused(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self {
            what: what.into(),
            source: Some(source.into()),
        }
    }

    /// The fault and every cause below it, `outer: inner: innermost`, for the logs.
    pub fn chain(&self) -> String {
        let mut text = self.what.clone();
        let mut cause = self
            .source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static));
        while let Some(e) = cause {
            text.push_str(": ");
            text.push_str(&e.to_string());
            cause = e.source();
        }
        text
    }
}

/// Adds what we were doing to a foreign error: `.context("claim the session")?`.
pub trait Context<T> {
    /// Wraps the error in a [`Fault`] saying `what`.
    fn context(self, what: &str) -> Result<T>;
}

impl<T, E: Into<BoxError>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: &str) -> Result<T> {
        self.map_err(|e| Fault::caused(what, e))
    }
}

impl<E, R> From<aws_sdk_dynamodb::error::SdkError<E, R>> for Fault
where
    E: StdError + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    fn from(e: aws_sdk_dynamodb::error::SdkError<E, R>) -> Self {
        Self::caused("AWS request failed", e)
    }
}

macro_rules! fault_from {
    ($($t:ty => $what:literal),* $(,)?) => {$(
        impl From<$t> for Fault {
            fn from(e: $t) -> Self {
                Self::caused($what, e)
            }
        }
    )*};
}

fault_from!(
    serde_json::Error => "JSON does not (de)serialize",
    serde_dynamo::Error => "a DynamoDB item does not (de)serialize",
    aws_smithy_types::error::operation::BuildError => "an AWS request could not be built",
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_names_every_cause() {
        let io = std::io::Error::other("connection reset");
        let fault = Fault::caused("send the message", io);
        assert_eq!(fault.chain(), "send the message: connection reset");
        assert_eq!(fault.to_string(), "send the message");
        assert!(fault.source().is_some());
        assert_eq!(Fault::new("no item").chain(), "no item");
    }
}
