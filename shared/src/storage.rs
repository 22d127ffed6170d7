//! Outputs in the private S3 bucket, under `{user}/{session}/{n}.{ext}`. Provider URLs expire
//! after 24 hours and are never handed to users: every output is copied here first.

use base64::Engine;

use crate::provider::{self, FailureKind, ImageResult, ProviderError};
use crate::sessions::{Output, Session};
use crate::AppState;

/// The S3 key of an output.
pub fn output_key(user_id: &str, session_id: &str, index: u32, extension: &str) -> String {
    format!("{user_id}/{session_id}/{index}.{extension}")
}

/// The content type of some bytes, from their magic number (the provider's header may lie).
pub fn sniff(bytes: &[u8]) -> Option<(&'static str, &'static str)> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(("image/png", "png"))
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(("image/jpeg", "jpg"))
    } else if bytes.len() > 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some(("image/webp", "webp"))
    } else if bytes.len() > 8 && &bytes[4..8] == b"ftyp" {
        Some(("video/mp4", "mp4"))
    } else {
        None
    }
}

/// Copies one image of a Seedream answer into the bucket.
pub async fn copy_output(
    app: &AppState,
    provider: &provider::Client,
    session: &Session,
    index: u32,
    image: &ImageResult,
) -> Result<Output, ProviderError> {
    let bytes = match image {
        ImageResult::Url(url) => provider.download(url).await?.0,
        ImageResult::Base64(data) => base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| unusable(format!("bad base64: {e}")))?,
        ImageResult::Rejected(code) => return Err(unusable(format!("image withheld: {code}"))),
    };
    store(app, session, index, bytes).await
}

/// Copies an output at a URL (a video or its last frame) into the bucket.
pub async fn copy_url(
    app: &AppState,
    provider: &provider::Client,
    session: &Session,
    index: u32,
    url: &str,
) -> Result<Output, ProviderError> {
    let (bytes, _) = provider.download(url).await?;
    store(app, session, index, bytes).await
}

async fn store(
    app: &AppState,
    session: &Session,
    index: u32,
    bytes: Vec<u8>,
) -> Result<Output, ProviderError> {
    let (content_type, extension) =
        sniff(&bytes).ok_or_else(|| unusable("the output is not a known image or video".into()))?;
    let key = output_key(&session.user_id, &session.session_id, index, extension);
    let size = bytes.len() as u64;
    app.aws
        .s3
        .put_object()
        .bucket(&app.config.bucket)
        .key(&key)
        .content_type(content_type)
        .body(bytes.into())
        .send()
        .await
        .map_err(|e| ProviderError {
            kind: FailureKind::Retryable,
            status: 0,
            code: "StorageUnavailable".into(),
            message: format!("{e:?}"),
        })?;
    Ok(Output {
        index,
        key,
        content_type: content_type.to_owned(),
        bytes: size,
    })
}

fn unusable(message: String) -> ProviderError {
    ProviderError {
        kind: FailureKind::Permanent,
        status: 0,
        code: "UnusableOutput".into(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_come_from_the_bytes() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\nrest"), Some(("image/png", "png")));
        assert_eq!(
            sniff(&[0xFF, 0xD8, 0xFF, 0xE0]),
            Some(("image/jpeg", "jpg"))
        );
        assert_eq!(sniff(b"\0\0\0\x18ftypmp42"), Some(("video/mp4", "mp4")));
        assert_eq!(sniff(b"<html>"), None);
        assert_eq!(output_key("u", "s", 2, "png"), "u/s/2.png");
    }
}
