//! End-to-end tests of the mock over real HTTP on 127.0.0.1.

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use mock_provider::{start, Knobs, Latency, MockHandle, TaskStatus};
use serde_json::{json, Value};
use std::time::Duration;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Resp {
    status: u16,
    content_type: String,
    body: Bytes,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

struct T {
    mock: MockHandle,
    client: HttpClient,
}

impl T {
    async fn new(knobs: Knobs) -> T {
        T {
            mock: start(knobs).await.expect("bind"),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn req(&self, method: &str, url: &str, key: Option<&str>, body: Option<Value>) -> Resp {
        let url = if url.starts_with("http") {
            url.to_string()
        } else {
            format!("{}{url}", self.mock.base_url())
        };
        let mut b = hyper::Request::builder().method(method).uri(url);
        if let Some(k) = key {
            b = b.header("authorization", format!("Bearer {k}"));
        }
        let body = match body {
            Some(v) => {
                b = b.header("content-type", "application/json");
                Full::new(Bytes::from(v.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let resp = self
            .client
            .request(b.body(body).unwrap())
            .await
            .expect("request");
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        Resp {
            status,
            content_type,
            body,
        }
    }

    async fn api(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        self.req(method, &format!("/api/v3{path}"), Some("mock-key"), body)
            .await
    }

    async fn images(&self, body: Value) -> Resp {
        self.api("POST", "/images/generations", Some(body)).await
    }

    async fn create_task(&self, text: &str, extra: Value) -> String {
        let mut body = json!({
            "model": "seedance-1-0-pro-250528",
            "content": [
                {"type": "text", "text": text},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}, "role": "first_frame"}
            ]
        });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let r = self
            .api("POST", "/contents/generations/tasks", Some(body))
            .await;
        assert_eq!(r.status, 200, "{:?}", r.json());
        r.json()["id"].as_str().unwrap().to_string()
    }

    async fn task(&self, id: &str) -> Value {
        let r = self
            .api("GET", &format!("/contents/generations/tasks/{id}"), None)
            .await;
        assert_eq!(r.status, 200);
        r.json()
    }
}

fn image_body(prompt: &str, n: u64, size: &str) -> Value {
    json!({
        "model": "seedream-4-0-250828", "prompt": prompt,
        "sequential_image_generation": "auto",
        "sequential_image_generation_options": {"max_images": n},
        "response_format": "url", "size": size, "stream": false, "watermark": false
    })
}

fn png_dims(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR");
    (
        u32::from_be_bytes(bytes[16..20].try_into().unwrap()),
        u32::from_be_bytes(bytes[20..24].try_into().unwrap()),
    )
}

fn assert_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    let e = &v["error"];
    assert_eq!(e["code"], code);
    assert!(e["message"].as_str().unwrap().contains("Request ID: "));
    assert!(e["type"].is_string());
}

#[tokio::test]
async fn images_return_urls_serving_real_pngs() {
    let t = T::new(Knobs::default()).await;
    let r = t.images(image_body("a lake", 3, "2K")).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["model"], "seedream-4-0-250828");
    assert!(v["created"].as_u64().unwrap() > 1_700_000_000);
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    assert_eq!(v["usage"]["generated_images"], 3);
    assert!(v["usage"]["output_tokens"].as_u64().unwrap() > 0);
    for item in data {
        assert_eq!(item["size"], "2048x2048");
        let url = item["url"].as_str().unwrap();
        assert!(url.starts_with(&format!("{}/files/", t.mock.base_url())));
        let f = t.req("GET", url, None, None).await;
        assert_eq!(f.status, 200);
        assert_eq!(f.content_type, "image/png");
        assert_eq!(png_dims(&f.body), (128, 128));
    }

    // Not sequential: one image, even with max_images. WxH sizes scale by 1/16.
    let mut body = image_body("one", 4, "2720x1536");
    body["sequential_image_generation"] = json!("disabled");
    let v = t.images(body).await.json();
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    assert_eq!(v["data"][0]["size"], "2720x1536");
    let f = t
        .req("GET", v["data"][0]["url"].as_str().unwrap(), None, None)
        .await;
    assert_eq!(png_dims(&f.body), (170, 96));

    // b64_json
    let mut body = image_body("b64", 2, "1K");
    body["response_format"] = json!("b64_json");
    let v = t.images(body).await.json();
    use base64::Engine;
    for item in v["data"].as_array().unwrap() {
        assert!(item.get("url").is_none());
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(item["b64_json"].as_str().unwrap())
            .unwrap();
        assert_eq!(png_dims(&bytes), (64, 64));
    }

    // Stats recorded the bodies.
    let s = t.mock.stats();
    assert_eq!(s.requests.images, 3);
    assert_eq!(s.requests.files, 4);
    assert_eq!(s.images_generated, 6);
    assert_eq!(s.image_prompts(), vec!["a lake", "one", "b64"]);
    assert_eq!(
        s.image_requests[0]["sequential_image_generation_options"]["max_images"],
        3
    );
    assert_eq!(s.prompt_count("a lake"), 1);
    t.mock.shutdown().await;
}

#[tokio::test]
async fn content_filter_rejections() {
    let t = T::new(Knobs::default()).await;
    let v = t.images(image_body("cat [reject:2]", 4, "2K")).await.json();
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 4);
    for item in &data[..2] {
        assert_eq!(item["error"]["code"], "OutputImageSensitiveContentDetected");
        assert!(item.get("url").is_none());
    }
    for item in &data[2..] {
        assert!(item["url"].is_string());
    }
    assert_eq!(v["usage"]["generated_images"], 2);

    let v = t
        .images(image_body("cat [reject:all]", 3, "2K"))
        .await
        .json();
    assert!(v["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["error"]["code"] == "OutputImageSensitiveContentDetected"));
    assert_eq!(v["usage"]["generated_images"], 0);

    t.mock.update_knobs(|k| k.reject_rate = 1.0);
    let v = t.images(image_body("dog", 2, "2K")).await.json();
    assert_eq!(v["usage"]["generated_images"], 0);
    let s = t.mock.stats();
    assert_eq!((s.images_generated, s.images_rejected), (2, 7));
    t.mock.shutdown().await;
}

#[tokio::test]
async fn error_triggers_map_to_status_and_body() {
    let t = T::new(Knobs::default()).await;
    for (code, status, kind) in [
        ("InvalidParameter", 400, "BadRequest"),
        ("InputTextSensitiveContentDetected", 400, "BadRequest"),
        (
            "RateLimitExceeded.EndpointRPMExceeded",
            429,
            "TooManyRequests",
        ),
        ("InternalServiceError", 500, "InternalServerError"),
        ("ServiceUnavailable", 503, "ServiceUnavailable"),
        ("AuthenticationError", 401, "Unauthorized"),
    ] {
        let r = t
            .images(image_body(&format!("x [fail:{code}]"), 1, "2K"))
            .await;
        assert_error(&r, status, code);
        assert_eq!(r.json()["error"]["type"], kind);
    }

    // Auth.
    let r = t
        .req(
            "POST",
            "/api/v3/images/generations",
            None,
            Some(image_body("a", 1, "2K")),
        )
        .await;
    assert_error(&r, 401, "AuthenticationError");
    assert_eq!(r.json()["error"]["type"], "Unauthorized");
    let r = t
        .req(
            "GET",
            "/api/v3/contents/generations/tasks/x",
            Some("wrong"),
            None,
        )
        .await;
    assert_error(&r, 401, "AuthenticationError");

    // Validation.
    let r = t.images(json!({"prompt": "no model"})).await;
    assert_error(&r, 400, "MissingParameter");
    assert_eq!(r.json()["error"]["param"], "model");
    let r = t.images(image_body("bad size", 1, "7x7")).await;
    assert_error(&r, 400, "InvalidParameter.size");
    assert_eq!(r.json()["error"]["param"], "size");
    let r = t.images(image_body("too many", 16, "2K")).await;
    assert_error(
        &r,
        400,
        "InvalidParameter.sequential_image_generation_options.max_images",
    );

    // fail-first: fails twice for the same prompt, then succeeds.
    let p = "retry me [fail-first:2:InternalServiceError]";
    assert_error(
        &t.images(image_body(p, 1, "2K")).await,
        500,
        "InternalServiceError",
    );
    assert_error(
        &t.images(image_body(p, 1, "2K")).await,
        500,
        "InternalServiceError",
    );
    assert_eq!(t.images(image_body(p, 1, "2K")).await.status, 200);
    assert_eq!(t.mock.stats().prompt_count(p), 3);

    // burst_429 at runtime (in-process and over the control endpoint).
    t.mock.update_knobs(|k| k.burst_429 = 1);
    let r = t.images(image_body("b", 1, "2K")).await;
    assert_error(&r, 429, "RateLimitExceeded.EndpointRPMExceeded");
    assert_eq!(t.images(image_body("b", 1, "2K")).await.status, 200);
    let r = t
        .req("POST", "/__mock/knobs", None, Some(json!({"burst_429": 1})))
        .await;
    assert_eq!(r.json()["burst_429"], 1);
    assert_eq!(
        t.api("GET", "/contents/generations/tasks/nope", None)
            .await
            .status,
        429
    );
    assert_error(
        &t.api("GET", "/contents/generations/tasks/nope", None).await,
        404,
        "ResourceNotFound",
    );

    // Failure rates: 100 % of one code.
    t.mock
        .patch_knobs(&json!({"failure_rates": {"InternalServiceError": 1.0}}))
        .unwrap();
    assert_error(
        &t.images(image_body("c", 1, "2K")).await,
        500,
        "InternalServiceError",
    );
    t.mock
        .patch_knobs(&json!({"failure_rates": {"InternalServiceError": null}}))
        .unwrap();
    assert_eq!(t.images(image_body("c", 1, "2K")).await.status, 200);

    let s = t.mock.stats();
    assert!(s.error_count("InternalServiceError") >= 4);
    t.mock.shutdown().await;
}

#[tokio::test]
async fn hang_until_client_gives_up_and_shutdown_is_prompt() {
    let t = T::new(Knobs::default()).await;
    let fut = t.images(image_body("[hang]", 1, "2K"));
    assert!(tokio::time::timeout(Duration::from_millis(300), fut)
        .await
        .is_err());
    // A hanging request in flight does not block shutdown.
    let c = t.client.clone();
    let url = format!("{}/api/v3/images/generations", t.mock.base_url());
    let pending = tokio::spawn(async move {
        let req = hyper::Request::post(url)
            .header("authorization", "Bearer mock-key")
            .body(Full::new(Bytes::from(
                image_body("[hang]", 1, "2K").to_string(),
            )))
            .unwrap();
        c.request(req).await.map(|r| r.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    t.mock.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(3));
    let res = tokio::time::timeout(Duration::from_secs(3), pending)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(res, Ok(503) | Err(_)), "{res:?}");
}

#[tokio::test]
async fn task_lifecycle_over_time() {
    let knobs = Knobs {
        queued_ms: 300,
        running_ms: 600,
        ..Knobs::default()
    };
    let t = T::new(knobs).await;
    let id = t
        .create_task(
            "A kitten yawns --resolution 720p --ratio 16:9 --duration 5 --camerafixed false",
            json!({"return_last_frame": true, "callback_url": "https://cb.example/x"}),
        )
        .await;
    assert!(id.starts_with("cgt-2"), "{id}");
    let rec = t.mock.task(&id).unwrap();
    assert_eq!(rec.prompt, "A kitten yawns");
    assert_eq!(
        (rec.resolution.as_str(), rec.ratio.as_str(), rec.duration),
        ("720p", "16:9", 5)
    );
    assert_eq!(rec.flags["camerafixed"], "false");
    assert!(rec.return_last_frame);
    assert_eq!(rec.callback_url.as_deref(), Some("https://cb.example/x"));
    assert_eq!(rec.images[0].role.as_deref(), Some("first_frame"));
    assert_eq!(t.mock.stats().task_requests.len(), 1);

    let v = t.task(&id).await;
    assert_eq!(v["status"], "queued");
    assert!(v.get("content").is_none());
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(t.task(&id).await["status"], "running");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let v = t.task(&id).await;
    assert_eq!(v["status"], "succeeded");
    assert_eq!(
        (v["resolution"].as_str(), v["ratio"].as_str()),
        (Some("720p"), Some("16:9"))
    );
    assert_eq!(v["duration"], 5);
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert!(v["updated_at"].as_u64() >= v["created_at"].as_u64());
    let video = t
        .req(
            "GET",
            v["content"]["video_url"].as_str().unwrap(),
            None,
            None,
        )
        .await;
    assert_eq!(video.content_type, "video/mp4");
    assert_eq!(&video.body[4..8], b"ftyp");
    let frame = t
        .req(
            "GET",
            v["content"]["last_frame_url"].as_str().unwrap(),
            None,
            None,
        )
        .await;
    assert_eq!(frame.content_type, "image/png");
    assert_eq!(png_dims(&frame.body), (80, 45));

    // Outcome triggers.
    t.mock.update_knobs(|k| {
        k.queued_ms = 0;
        k.running_ms = 0;
    });
    let failed = t.create_task("x [task-fail]", json!({})).await;
    let expired = t.create_task("x [task-expire]", json!({})).await;
    let slow = t.create_task("x [task-slow]", json!({})).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let v = t.task(&failed).await;
    assert_eq!(v["status"], "failed");
    assert_eq!(v["error"]["code"], "OutputVideoSensitiveContentDetected");
    assert!(v.get("content").is_none());
    assert_eq!(t.task(&expired).await["status"], "expired");
    assert_eq!(t.task(&slow).await["status"], "running");
    assert_eq!(t.mock.task(&slow).unwrap().status(), TaskStatus::Running);

    // Validation and unknown ids.
    let r = t
        .api(
            "POST",
            "/contents/generations/tasks",
            Some(json!({"model": "m", "content": [{"type": "text", "text": "x --duration 99"}]})),
        )
        .await;
    assert_error(&r, 400, "InvalidParameter.duration");
    assert_error(
        &t.api("GET", "/contents/generations/tasks/cgt-nope", None)
            .await,
        404,
        "ResourceNotFound",
    );
    t.mock.shutdown().await;
}

#[tokio::test]
async fn list_filters_pages_and_can_be_disabled() {
    let t = T::new(Knobs {
        queued_ms: 10_000,
        ..Knobs::default()
    })
    .await;
    let a = t.create_task("a", json!({})).await;
    let b = t.create_task("b", json!({})).await;
    let c = t.create_task("c", json!({})).await;

    let r = t
        .api(
            "GET",
            &format!("/contents/generations/tasks?page_num=1&page_size=500&filter.task_ids={a}&filter.task_ids={c}"),
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["total"], 2);
    let mut ids: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut want = vec![a.as_str(), c.as_str()];
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(v["items"][0]["status"], "queued");

    // Paging: newest first.
    let v = t
        .api(
            "GET",
            "/contents/generations/tasks?page_num=2&page_size=1",
            None,
        )
        .await
        .json();
    assert_eq!(v["total"], 3);
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    assert_eq!(v["items"][0]["id"], b.as_str());

    // Status filter.
    let v = t
        .api(
            "GET",
            "/contents/generations/tasks?filter.status=succeeded",
            None,
        )
        .await
        .json();
    assert_eq!(v["total"], 0);
    let v = t
        .api(
            "GET",
            "/contents/generations/tasks?filter.status=queued&page_size=10",
            None,
        )
        .await
        .json();
    assert_eq!(v["total"], 3);

    for bad in ["page_size=0", "page_size=501", "page_num=0"] {
        let r = t
            .api("GET", &format!("/contents/generations/tasks?{bad}"), None)
            .await;
        assert_eq!(r.status, 400, "{bad}");
        assert!(r.json()["error"]["code"]
            .as_str()
            .unwrap()
            .starts_with("InvalidParameter"));
    }

    t.mock.update_knobs(|k| k.list_enabled = false);
    let r = t.api("GET", "/contents/generations/tasks", None).await;
    assert_error(&r, 404, "InvalidEndpoint.NotFound");
    assert_eq!(t.mock.stats().requests.task_list, 8);
    t.mock.shutdown().await;
}

#[tokio::test]
async fn delete_semantics() {
    let knobs = Knobs {
        queued_ms: 10_000,
        ..Knobs::default()
    };
    let t = T::new(knobs).await;
    let path = |id: &str| format!("/contents/generations/tasks/{id}");

    // queued -> cancelled, then deleted.
    let q = t.create_task("q", json!({})).await;
    let r = t.api("DELETE", &path(&q), None).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(t.task(&q).await["status"], "cancelled");
    assert_eq!(t.api("DELETE", &path(&q), None).await.status, 200);
    assert_error(
        &t.api("GET", &path(&q), None).await,
        404,
        "ResourceNotFound",
    );
    assert_error(
        &t.api("DELETE", &path(&q), None).await,
        404,
        "ResourceNotFound",
    );

    // running -> refused.
    t.mock.update_knobs(|k| {
        k.queued_ms = 0;
        k.running_ms = 10_000;
    });
    let running = t.create_task("r", json!({})).await;
    let r = t.api("DELETE", &path(&running), None).await;
    assert_error(&r, 409, "InvalidAction.TaskRunning");
    assert_eq!(t.task(&running).await["status"], "running");

    // succeeded -> deleted.
    t.mock.update_knobs(|k| k.running_ms = 0);
    let done = t.create_task("d", json!({})).await;
    assert_eq!(t.task(&done).await["status"], "succeeded");
    assert_eq!(t.api("DELETE", &path(&done), None).await.status, 200);
    assert_error(
        &t.api("GET", &path(&done), None).await,
        404,
        "ResourceNotFound",
    );
    assert_eq!(t.mock.stats().requests.task_delete, 5);
    t.mock.shutdown().await;
}

#[tokio::test]
async fn max_in_flight_counts_concurrent_requests() {
    let mut knobs = Knobs::default();
    knobs.latency.images = Latency::fixed(200);
    let t = T::new(knobs).await;
    let started = std::time::Instant::now();
    let results = futures_join4(
        t.images(image_body("p1", 1, "2K")),
        t.images(image_body("p2", 1, "2K")),
        t.images(image_body("p3", 1, "2K")),
        t.images(image_body("p4", 1, "2K")),
    )
    .await;
    assert!(results.iter().all(|s| *s == 200));
    assert!(started.elapsed() >= Duration::from_millis(200));
    let s = t.mock.stats();
    assert_eq!(s.images_max_in_flight, 4);
    assert_eq!(s.max_in_flight, 4);
    assert_eq!((s.in_flight, s.images_in_flight), (0, 0));

    // Per-request latency trigger and reset.
    let started = std::time::Instant::now();
    assert_eq!(
        t.images(image_body("[latency:20]", 1, "2K")).await.status,
        200
    );
    assert!(started.elapsed() < Duration::from_millis(190));
    let r = t.req("POST", "/__mock/reset", None, None).await;
    assert_eq!(r.status, 200);
    let stats_json = t.req("GET", "/__mock/stats", None, None).await.json();
    let s: mock_provider::Stats = serde_json::from_value(stats_json).unwrap();
    assert_eq!(s.requests.images, 0);
    assert_eq!(s.max_in_flight, 0);
    t.mock.shutdown().await;
}

async fn futures_join4(
    a: impl std::future::Future<Output = Resp>,
    b: impl std::future::Future<Output = Resp>,
    c: impl std::future::Future<Output = Resp>,
    d: impl std::future::Future<Output = Resp>,
) -> [u16; 4] {
    let (a, b, c, d) = tokio::join!(a, b, c, d);
    [a.status, b.status, c.status, d.status]
}

#[tokio::test]
async fn streaming_images() {
    let t = T::new(Knobs::default()).await;
    let mut body = image_body("s [reject:1]", 2, "2K");
    body["stream"] = json!(true);
    let r = t.images(body).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.content_type, "text/event-stream");
    let text = String::from_utf8_lossy(&r.body);
    assert!(text.contains("image_generation.partial_failed"));
    assert!(text.contains("image_generation.partial_succeeded"));
    assert!(text.contains("image_generation.completed"));
    assert!(text.trim_end().ends_with("data: [DONE]"));
    t.mock.shutdown().await;
}

#[test]
fn binary_prints_port_and_serves() {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mock-provider"))
        .args(["--addr", "127.0.0.1:0", "--api-key", "k2", "--seed", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn mock-provider");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
        .to_string();
    let mut s = std::net::TcpStream::connect(&base).unwrap();
    write!(
        s,
        "GET /api/v3/contents/generations/tasks HTTP/1.1\r\nHost: {base}\r\nAuthorization: Bearer k2\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    child.kill().ok();
    child.wait().ok();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"total\":0"), "{out}");
}
