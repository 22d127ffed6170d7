//! Output files of realistic size: the provider's images are megabytes (a 4K image about ten)
//! and its videos about a megabyte per second, so the mock pads the small generated files to
//! the size its knobs ask for, with pseudo-random bytes that do not compress, inside the
//! containers' own ignorable boxes, so every file stays a valid PNG or MP4:
//! - PNG: private ancillary `moCk` chunks before `IEND` (decoders skip unknown ancillary chunks);
//! - MP4: one `free` box after the movie (players skip it).
//!
//! Files are generated as they are sent, in [`PIECE_BYTES`] pieces, so the mock's memory does
//! not grow with their size either.

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::png::{chunk, splitmix};

/// Data bytes per padding piece (one PNG chunk, or one piece of the `free` box).
pub const PIECE_BYTES: usize = 64 * 1024;

/// Bytes of a PNG chunk beyond its data: length, type and CRC.
const CHUNK_OVERHEAD: u64 = 12;

/// The size of the files the mock serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OutputSizes {
    /// Bytes of an image up to 1.5 megapixels (Seedream's `1K`).
    pub image_1k: u64,
    /// Bytes of an image up to 6 megapixels (`2K`, 2048x2048 and its ratios).
    pub image_2k: u64,
    /// Bytes of a larger image (`4K`).
    pub image_4k: u64,
    /// Bytes per second of video.
    pub video_per_second: u64,
    /// Whether file answers carry `Content-Length` (object storage always sends it; off, the
    /// answer is chunked and its length unknown until it ends).
    pub content_length: bool,
}

impl Default for OutputSizes {
    /// Sizes like the provider's own outputs (JPEG-class images, 1080p-class video at 8 Mbit/s).
    fn default() -> Self {
        Self {
            image_1k: 800_000,
            image_2k: 3_000_000,
            image_4k: 10_000_000,
            video_per_second: 1_000_000,
            content_length: true,
        }
    }
}

impl OutputSizes {
    /// No padding: every file as small as it can be (tests that do not care about sizes).
    pub fn minimal() -> Self {
        Self {
            image_1k: 0,
            image_2k: 0,
            image_4k: 0,
            video_per_second: 0,
            content_length: true,
        }
    }

    /// The target size of an image of `width`x`height` nominal pixels.
    pub fn image_bytes(&self, width: u32, height: u32) -> u64 {
        match u64::from(width) * u64::from(height) {
            px if px <= 1_500_000 => self.image_1k,
            px if px <= 6_000_000 => self.image_2k,
            _ => self.image_4k,
        }
    }
}

/// A PNG (`png` as generated, ending with `IEND`) padded to about `target` bytes.
pub struct PaddedPng {
    head: Vec<u8>,
    pieces: u64,
    last_piece: usize,
    seed: u64,
}

impl PaddedPng {
    pub fn new(png: Vec<u8>, target: u64, seed: u64) -> Self {
        let padding = target.saturating_sub(png.len() as u64);
        let full = PIECE_BYTES as u64 + CHUNK_OVERHEAD;
        let rest = padding % full;
        Self {
            pieces: padding / full,
            last_piece: rest.saturating_sub(CHUNK_OVERHEAD) as usize,
            head: png,
            seed,
        }
    }

    /// The exact length of the file.
    pub fn length(&self) -> u64 {
        let last = if self.last_piece > 0 {
            self.last_piece as u64 + CHUNK_OVERHEAD
        } else {
            0
        };
        self.head.len() as u64 + self.pieces * (PIECE_BYTES as u64 + CHUNK_OVERHEAD) + last
    }

    /// The file, piece by piece: the PNG up to `IEND`, the padding chunks, `IEND`.
    pub fn pieces(self) -> impl Iterator<Item = Bytes> {
        let split = self.head.len() - CHUNK_OVERHEAD as usize;
        let iend = Bytes::copy_from_slice(&self.head[split..]);
        let body = Bytes::copy_from_slice(&self.head[..split]);
        let seed = self.seed;
        let sizes = (0..self.pieces)
            .map(|_| PIECE_BYTES)
            .chain((self.last_piece > 0).then_some(self.last_piece));
        let padding = sizes.enumerate().map(move |(i, n)| {
            let mut out = Vec::with_capacity(n + CHUNK_OVERHEAD as usize);
            chunk(&mut out, b"moCk", &noise(seed ^ i as u64, n));
            Bytes::from(out)
        });
        std::iter::once(body)
            .chain(padding)
            .chain(std::iter::once(iend))
    }

    /// The whole file in memory (for `b64_json` answers, which carry it inline anyway).
    pub fn to_vec(self) -> Vec<u8> {
        self.pieces().flat_map(|b| b.to_vec()).collect()
    }
}

/// An MP4 (`mp4`, a complete movie) followed by a `free` box of pseudo-random bytes, about
/// `target` bytes in all.
pub fn padded_mp4(mp4: &'static [u8], target: u64, seed: u64) -> (u64, Vec<Bytes>) {
    let header = 8u64;
    let padding = target
        .saturating_sub(mp4.len() as u64 + header)
        .min(u64::from(u32::MAX) - header);
    if padding == 0 {
        return (mp4.len() as u64, vec![Bytes::from_static(mp4)]);
    }
    let mut free = ((padding + header) as u32).to_be_bytes().to_vec();
    free.extend_from_slice(b"free");
    let mut pieces = vec![Bytes::from_static(mp4), Bytes::from(free)];
    let mut left = padding;
    let mut i = 0;
    while left > 0 {
        let n = left.min(PIECE_BYTES as u64) as usize;
        pieces.push(Bytes::from(noise(seed ^ i, n)));
        left -= n as u64;
        i += 1;
    }
    (mp4.len() as u64 + header + padding, pieces)
}

/// Serves a file of `length` bytes from its pieces, generated as they are sent.
pub fn file_response(
    content_type: &'static str,
    length: u64,
    pieces: impl Iterator<Item = Bytes> + Send + 'static,
    sizes: &OutputSizes,
) -> Response {
    // An iterator's stream is lazy: each piece is generated when the connection takes it.
    let stream = futures::stream::iter(pieces.map(Ok::<_, std::convert::Infallible>));
    let mut response = (
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(stream),
    )
        .into_response();
    if sizes.content_length {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, length.into());
    }
    response
}

/// `n` pseudo-random bytes from `seed` (incompressible, reproducible).
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        state = splitmix(state);
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::png::gradient_png;

    #[test]
    fn a_padded_png_is_a_png_of_the_announced_length() {
        for target in [0, 100, 70_000, 3_000_000] {
            let png = PaddedPng::new(gradient_png(32, 32, 1), target, 9);
            let length = png.length();
            let bytes = png.to_vec();
            assert_eq!(bytes.len() as u64, length);
            assert!(length >= target.saturating_sub(PIECE_BYTES as u64 + 12));
            assert!(length <= target.max(bytes.len() as u64));
            assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
            assert!(bytes.ends_with(&[0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xae, 0x42, 0x60, 0x82]));
            // Every chunk is well formed and the padding ones are ancillary.
            let mut at = 8;
            while at < bytes.len() {
                let n = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
                let kind = &bytes[at + 4..at + 8];
                let crc = crc32fast::hash(&bytes[at + 4..at + 8 + n]);
                assert_eq!(bytes[at + 8 + n..at + 12 + n], crc.to_be_bytes());
                assert!(kind != b"moCk" || kind[0].is_ascii_lowercase());
                at += n + 12;
            }
            assert_eq!(at, bytes.len());
        }
    }

    #[test]
    fn padding_does_not_compress() {
        let bytes = PaddedPng::new(gradient_png(16, 16, 1), 1_000_000, 3).to_vec();
        let packed = miniz_oxide::deflate::compress_to_vec(&bytes, 6);
        assert!(packed.len() > bytes.len() * 99 / 100, "{}", packed.len());
    }

    #[test]
    fn a_padded_mp4_ends_with_one_free_box() {
        let movie: &'static [u8] = b"\0\0\0\x10ftypisom\0\0\0\0";
        let (length, pieces) = padded_mp4(movie, 200_000, 1);
        let bytes: Vec<u8> = pieces.iter().flat_map(|b| b.to_vec()).collect();
        assert_eq!((bytes.len() as u64, length), (200_000, 200_000));
        let free = &bytes[movie.len()..];
        assert_eq!(&free[4..8], b"free");
        assert_eq!(
            u32::from_be_bytes(free[..4].try_into().unwrap()) as usize,
            free.len()
        );
        assert_eq!(padded_mp4(movie, 0, 1).0, movie.len() as u64);
    }
}
