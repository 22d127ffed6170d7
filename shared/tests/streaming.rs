//! Outputs far larger than a function could hold are copied into S3 with bounded memory, by
//! both copy paths: one streaming PutObject when the provider announces the length, parts of
//! 5 MiB when it does not.
//!
//! The test binary counts every heap allocation (its own global allocator), so the peak
//! measured is the process's: the generator, its SDK clients and the mock provider together.
//! It holds one test only, so no other test allocates meanwhile.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mock_provider::{Knobs, OutputSizes};
use serde_json::json;
use shared::routes::enqueue::{handle, IMAGE_ROUTE};
use shared::sessions::{self, Status};
use testkit::{deliver_once, generator_for, parts, user, Event, World};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MIB: u64 = 1024 * 1024;
/// What a streaming copy may hold at once, everything in the process included (measured:
/// under 7 MiB for 256 MiB).
const STREAMED_BOUND: usize = 16 * MIB as usize;
/// A multipart copy holds a part (5-6 MiB) and the copies the SDK and the HTTP client make of
/// it while it is sent (measured: under 29 MiB for 96 MiB): a few parts, never the file.
const MULTIPART_BOUND: usize = 6 * shared::storage::PART_BYTES;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_larger_than_memory_are_copied_in_bounded_memory() {
    let world = World::new().await;
    world.grant("big", 100, None).await;
    // Twice the 128 MB the functions are given, so it could not be buffered at all; the
    // multipart path is smaller only because moto takes its parts slowly (about 5 MB/s).
    let cases = [
        (true, "one streaming PutObject", 256 * MIB, STREAMED_BOUND),
        (false, "multipart", 96 * MIB, MULTIPART_BOUND),
    ];
    for (announced, path, size, bound) in cases {
        let knobs = Knobs {
            output_sizes: OutputSizes {
                image_4k: size,
                content_length: announced,
                ..OutputSizes::default()
            },
            ..Knobs::default()
        };
        let mock = mock_provider::start(knobs).await.unwrap();
        let generator = generator_for(&world, &mock).await;
        let mut generator = std::sync::Arc::unwrap_or_clone(generator);
        generator.provider = shared::provider::Client::new(
            &shared::provider::ProviderConfig {
                base_url: mock.api_base(),
                request_timeout: Duration::from_secs(10),
                connect_timeout: Duration::from_secs(2),
                download_timeout: Duration::from_secs(120),
            },
            mock.api_key(),
        );
        let generator = std::sync::Arc::new(generator);
        let event = Event::new(IMAGE_ROUTE, user("big"))
            .body(json!({"prompt": "a big one", "size": "4K"}).to_string());
        let (status, accepted) = parts(handle(&world.state, event.build()).await);
        assert_eq!(status, 202, "{accepted}");
        let id = accepted["session_id"].as_str().unwrap().to_owned();

        let before = LIVE.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        let (count, failed) = deliver_once(&world, &generator).await;
        let grew = PEAK.load(Ordering::Relaxed).saturating_sub(before);
        assert_eq!((count, failed.len()), (1, 0), "{path}");
        assert!(
            grew < bound,
            "{path}: the heap grew by {} MiB copying {} MiB",
            grew as u64 / MIB,
            size / MIB
        );

        let done = sessions::get(world.ddb(), world.table(), "big", &id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(done.status, Status::Completed, "{path}");
        let output = &done.outputs[0];
        let (length, etag) = object(&world, &output.key).await;
        assert!(length > size - MIB && length <= size, "{path}: {length}");
        assert_eq!(
            output.bytes, length,
            "{path}: the session records the stored size"
        );
        // S3's ETag says how the object was written: a multipart object's ends in -<parts>.
        let expected_parts = length.div_ceil(shared::storage::PART_BYTES as u64 + MIB);
        match announced {
            true => assert!(!etag.contains('-'), "{path}: {etag}"),
            false => assert!(
                etag.trim_matches('"')
                    .rsplit_once('-')
                    .is_some_and(|(_, n)| {
                        let n: u64 = n.parse().unwrap();
                        n >= expected_parts
                            && n <= length.div_ceil(shared::storage::PART_BYTES as u64)
                    }),
                "{path}: {etag}"
            ),
        }
        assert_valid_png(&world, &output.key, length).await;
        world.assert_conserved("big").await;
    }
}

async fn object(world: &World, key: &str) -> (u64, String) {
    let head = world
        .state
        .aws
        .s3
        .head_object()
        .bucket(&world.state.config.bucket)
        .key(key)
        .send()
        .await
        .unwrap();
    (
        head.content_length.unwrap() as u64,
        head.e_tag.unwrap_or_default(),
    )
}

/// Reads the stored object as a stream and checks every PNG chunk's CRC: the bytes arrived
/// whole and in order.
async fn assert_valid_png(world: &World, key: &str, length: u64) {
    let mut body = world
        .state
        .aws
        .s3
        .get_object()
        .bucket(&world.state.config.bucket)
        .key(key)
        .send()
        .await
        .unwrap()
        .body;
    let mut buffer: Vec<u8> = Vec::new();
    let mut at = 0usize; // offset in `buffer` of the next chunk
    let mut read = 0u64;
    let mut chunks = 0;
    let mut ended = false;
    while let Some(piece) = body.next().await {
        let piece = piece.unwrap();
        read += piece.len() as u64;
        buffer.extend_from_slice(&piece);
        if chunks == 0 && buffer.len() >= 8 {
            assert_eq!(&buffer[..8], b"\x89PNG\r\n\x1a\n");
            at = 8;
            chunks = 1;
        }
        while chunks > 0 && buffer.len() >= at + 8 {
            let n = u32::from_be_bytes(buffer[at..at + 4].try_into().unwrap()) as usize;
            if buffer.len() < at + 12 + n {
                break;
            }
            let crc = crc32fast::hash(&buffer[at + 4..at + 8 + n]);
            assert_eq!(
                buffer[at + 8 + n..at + 12 + n],
                crc.to_be_bytes(),
                "chunk {chunks}"
            );
            ended = &buffer[at + 4..at + 8] == b"IEND";
            at += 12 + n;
            chunks += 1;
        }
        buffer.drain(..at);
        at = 0;
    }
    assert_eq!(read, length);
    assert!(ended && buffer.is_empty(), "the file ends with IEND");
    assert!(chunks > 1000, "{chunks} chunks");
}
