//! Outputs in the private S3 bucket, under `{user}/{session}/{n}.{ext}`. Provider URLs expire
//! after 24 hours and are never handed to users: every output is copied here first. Copies
//! stream: the download flows into S3 as it arrives, so a function's memory does not grow with
//! the size of an output (4K images are megabytes, videos tens of megabytes).

use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use base64::Engine;
use bytes::BytesMut;
use futures::{StreamExt, TryStreamExt};
use http_body::Frame;
use http_body_util::StreamBody;

use crate::provider::{self, Download, FailureKind, ImageResult, ProviderError};
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

/// Time a function keeps after its last copy for the transaction that records it.
pub const SETTLE_MARGIN: Duration = Duration::from_secs(3);

/// The part size of a multipart copy: S3's smallest (every part but the last must reach it),
/// so a copy of unknown length holds at most this much of it at once.
pub const PART_BYTES: usize = 5 * 1024 * 1024;

/// Room above [`PART_BYTES`] for the piece that fills a part (HTTP bodies arrive in pieces of
/// at most a few hundred KiB).
const PIECE_ROOM: usize = 1024 * 1024;

/// Bytes read before the content type is decided (the longest magic number we look for).
const SNIFF_BYTES: usize = 12;

/// Copies one image of a Seedream answer into the bucket; a download gives up after `within`.
pub async fn copy_output(
    app: &AppState,
    provider: &provider::Client,
    session: &Session,
    index: u32,
    image: &ImageResult,
    within: Duration,
) -> Result<Output, ProviderError> {
    match image {
        ImageResult::Url(url) => copy_url(app, provider, session, index, url, within).await,
        ImageResult::Base64(data) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|e| unusable(format!("bad base64: {e}")))?;
            let target = Target::of(app, session, index, &bytes)?;
            let size = bytes.len() as u64;
            put(app, &target, ByteStream::from(bytes), size).await?;
            Ok(target.output(size))
        }
        ImageResult::Rejected(code) => Err(unusable(format!("image withheld: {code}"))),
    }
}

/// Copies an output at a URL (an image, a video or its last frame) into the bucket as it
/// downloads: one streaming PutObject when the provider announces the length (it always does:
/// its files are served from object storage), a multipart upload of [`PART_BYTES`] parts
/// otherwise. The download, copy included, gives up after `within`.
pub async fn copy_url(
    app: &AppState,
    provider: &provider::Client,
    session: &Session,
    index: u32,
    url: &str,
    within: Duration,
) -> Result<Output, ProviderError> {
    let mut download = provider.download(url, within).await?;
    let head = read_at_least(&mut download, SNIFF_BYTES).await?;
    let target = Target::of(app, session, index, &head)?;
    let size = match download.length {
        Some(length) => {
            put(app, &target, streamed_body(head, download), length).await?;
            length
        }
        None => put_in_parts(app, &target, head, &mut download).await?,
    };
    Ok(target.output(size))
}

/// Where an output goes, and what it is.
struct Target<'a> {
    bucket: &'a str,
    key: String,
    index: u32,
    content_type: &'static str,
}

impl<'a> Target<'a> {
    /// The object of output `index`, typed by its first bytes.
    fn of(
        app: &'a AppState,
        session: &Session,
        index: u32,
        head: &[u8],
    ) -> Result<Self, ProviderError> {
        let (content_type, extension) = sniff(head)
            .ok_or_else(|| unusable("the output is not a known image or video".into()))?;
        Ok(Self {
            bucket: &app.config.bucket,
            key: output_key(&session.user_id, &session.session_id, index, extension),
            index,
            content_type,
        })
    }

    fn output(self, bytes: u64) -> Output {
        Output {
            index: self.index,
            key: self.key,
            content_type: self.content_type.to_owned(),
            bytes,
        }
    }
}

/// Reads until at least `n` bytes (or the whole body, if shorter) have arrived.
async fn read_at_least(download: &mut Download, n: usize) -> Result<BytesMut, ProviderError> {
    let mut buffer = BytesMut::new();
    while buffer.len() < n {
        match download.chunk().await? {
            Some(chunk) => buffer.extend_from_slice(&chunk),
            None => break,
        }
    }
    Ok(buffer)
}

/// The bytes already read, then the rest of the download as it arrives.
fn streamed_body(head: BytesMut, download: Download) -> ByteStream {
    let rest = futures::stream::try_unfold(download, |mut download| async move {
        Ok::<_, ProviderError>(download.chunk().await?.map(|chunk| (chunk, download)))
    });
    let chunks = futures::stream::once(async move { Ok(head.freeze()) }).chain(rest);
    ByteStream::from_body_1_x(StreamBody::new(chunks.map_ok(Frame::data)))
}

async fn put(
    app: &AppState,
    target: &Target<'_>,
    body: ByteStream,
    length: u64,
) -> Result<(), ProviderError> {
    app.aws
        .s3
        .put_object()
        .bucket(target.bucket)
        .key(&target.key)
        .content_type(target.content_type)
        .content_length(length as i64)
        .body(body)
        .send()
        .await
        .map(|_| ())
        .map_err(storage_error)
}

/// A download of unknown length, in parts: a single PutObject if it fits one part. On any
/// failure the upload is aborted, so no orphaned parts are left to pay for.
async fn put_in_parts(
    app: &AppState,
    target: &Target<'_>,
    head: BytesMut,
    download: &mut Download,
) -> Result<u64, ProviderError> {
    let mut part = fill_part(head, download).await?;
    if part.len() < PART_BYTES {
        let size = part.len() as u64;
        put(app, target, ByteStream::from(part.freeze()), size).await?;
        return Ok(size);
    }
    let s3 = &app.aws.s3;
    let upload_id = s3
        .create_multipart_upload()
        .bucket(target.bucket)
        .key(&target.key)
        .content_type(target.content_type)
        .send()
        .await
        .map_err(storage_error)?
        .upload_id
        .unwrap_or_default();
    let mut size = 0;
    let uploaded = async {
        let mut parts = Vec::new();
        while !part.is_empty() {
            size += part.len() as u64;
            parts.push(upload_part(app, target, &upload_id, parts.len() as i32 + 1, part).await?);
            part = fill_part(BytesMut::new(), download).await?;
        }
        complete_upload(app, target, &upload_id, parts).await
    }
    .await;
    if uploaded.is_err() {
        let aborted = s3
            .abort_multipart_upload()
            .bucket(target.bucket)
            .key(&target.key)
            .upload_id(&upload_id)
            .send()
            .await;
        if let Err(e) = aborted {
            tracing::warn!(key = %target.key, error = ?e, "multipart upload left to the bucket's lifecycle rule");
        }
    }
    uploaded.map(|_| size)
}

/// Reads the download into `part` until it holds [`PART_BYTES`] or the body ends. The last
/// piece read may take a part past that size (S3 sets no such limit below 5 GiB); the room for
/// it is reserved up front, so a part is allocated once.
async fn fill_part(mut part: BytesMut, download: &mut Download) -> Result<BytesMut, ProviderError> {
    part.reserve((PART_BYTES + PIECE_ROOM).saturating_sub(part.len()));
    while part.len() < PART_BYTES {
        match download.chunk().await? {
            Some(chunk) => part.extend_from_slice(&chunk),
            None => break,
        }
    }
    Ok(part)
}

async fn upload_part(
    app: &AppState,
    target: &Target<'_>,
    upload_id: &str,
    number: i32,
    part: BytesMut,
) -> Result<CompletedPart, ProviderError> {
    let answer = app
        .aws
        .s3
        .upload_part()
        .bucket(target.bucket)
        .key(&target.key)
        .upload_id(upload_id)
        .part_number(number)
        .body(ByteStream::from(part.freeze()))
        .send()
        .await
        .map_err(storage_error)?;
    Ok(CompletedPart::builder()
        .part_number(number)
        .set_e_tag(answer.e_tag)
        .build())
}

async fn complete_upload(
    app: &AppState,
    target: &Target<'_>,
    upload_id: &str,
    parts: Vec<CompletedPart>,
) -> Result<(), ProviderError> {
    app.aws
        .s3
        .complete_multipart_upload()
        .bucket(target.bucket)
        .key(&target.key)
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .map(|_| ())
        .map_err(storage_error)
}

fn storage_error<E: std::fmt::Debug>(e: E) -> ProviderError {
    ProviderError {
        kind: FailureKind::Retryable,
        status: 0,
        code: "StorageUnavailable".into(),
        message: format!("{e:?}"),
    }
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
