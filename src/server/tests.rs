//! In-process API tests (actix's test service) on a real store of synthetic scenes and the
//! small fixture model: every route, every error path, and the server still answering after.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::test::{call_service, init_service, read_body, TestRequest};
use actix_web::{web, App};
use serde_json::Value;

use super::*;
use crate::search::test_store::{build, small_models};

const BOUNDARY: &str = "quarryboundary7MA4YWxkTrZu0gW";

fn multipart(field: &str, name: &str, bytes: &[u8]) -> Vec<u8> {
    let mut body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

fn config(token: Option<&str>) -> ServerConfig {
    ServerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        token: token.map(String::from),
        workers: 1,
        model_permits: 1,
        busy_wait: Duration::from_secs(30),
        search: SearchSettings::for_device(&candle_core::Device::Cpu),
        limits: Limits {
            max_upload_bytes: 256 * 1024,
            ..Limits::default()
        },
        index_roots: Vec::new(),
    }
}

macro_rules! app {
    ($state:expr) => {
        init_service(App::new().configure(configure($state.clone()))).await
    };
}

async fn json_of(resp: actix_web::dev::ServiceResponse) -> (StatusCode, Value) {
    let status = resp.status();
    let body = read_body(resp).await;
    let value = serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "{status}: body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&body)
        )
    });
    (status, value)
}

fn assert_error(status: StatusCode, body: &Value, want: StatusCode, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| m.len() > 10),
        "{body}"
    );
}

#[actix_web::test]
async fn every_route_answers_and_bad_input_gets_4xx_json() {
    let dir = tempfile::tempdir().unwrap();
    let models = small_models();
    let (library, captions) = build(dir.path(), &models, 10, true);
    let store_dir = library.dir();
    let state = web::Data::new(AppState::new(library, models, &config(Some("s3cret"))));
    let app = app!(state);

    let (s, b) =
        json_of(call_service(&app, TestRequest::get().uri("/api/v1/health").to_request()).await)
            .await;
    assert_eq!(
        (s, b["status"].as_str(), b["images"].as_u64()),
        (StatusCode::OK, Some("ok"), Some(10))
    );

    let (s, b) =
        json_of(call_service(&app, TestRequest::get().uri("/api/v1/stats").to_request()).await)
            .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["images"], 10);
    assert_eq!(b["captions"], 10);
    assert_eq!(b["model"]["retrieval"], "small_a");
    assert_eq!(b["limits"]["max_upload_bytes"], 256 * 1024);
    assert_eq!(b["rerank_default"], 16);

    // Search, GET and POST.
    let q = captions[0].replace(' ', "%20");
    let req = TestRequest::get()
        .uri(&format!("/api/v1/search?q={q}&k=5&rerank=3"))
        .to_request();
    let (s, get) = json_of(call_service(&app, req).await).await;
    assert_eq!(s, StatusCode::OK, "{get}");
    let hits = get["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 5);
    assert_eq!(get["reranked"], 3);
    for key in [
        "id",
        "path",
        "caption",
        "width",
        "height",
        "format",
        "captured_at",
        "thumbnail",
        "file",
    ] {
        assert!(hits[0].get(key).is_some(), "missing {key}");
    }
    for key in ["itc", "itc_rank", "bm25", "bm25_rank", "fused", "itm"] {
        assert!(hits[0]["scores"].get(key).is_some(), "missing scores.{key}");
    }
    assert!(get["timing_ms"]["total"].as_f64().unwrap() > 0.0);
    let req = TestRequest::post()
        .uri("/api/v1/search")
        .set_json(serde_json::json!({"q": captions[0], "k": 5.0, "rerank": 3}))
        .to_request();
    let (s, post) = json_of(call_service(&app, req).await).await;
    assert_eq!(s, StatusCode::OK);
    let ids = |v: &Value| {
        v["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["id"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&get), ids(&post));

    // Search errors.
    for (uri, want, code) in [
        (
            "/api/v1/search?q=&k=5",
            StatusCode::BAD_REQUEST,
            "empty_query",
        ),
        ("/api/v1/search?k=5", StatusCode::BAD_REQUEST, "empty_query"),
        (
            "/api/v1/search?q=red&k=1000000000",
            StatusCode::BAD_REQUEST,
            "k_out_of_range",
        ),
        (
            "/api/v1/search?q=red&k=0",
            StatusCode::BAD_REQUEST,
            "k_out_of_range",
        ),
        (
            "/api/v1/search?q=red&k=ten",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/api/v1/search?q=red&min_match=2",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/api/v1/search?q=red&from=2021-13-01",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/api/v1/search?q=red&type=exe",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/api/v1/search?q=red&sort=size",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/api/v1/search?q=red&colour=blue",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/api/v1/search?q=red&rerank=100000",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/api/v1/images/999/file",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        ("/api/v1/images/999", StatusCode::NOT_FOUND, "not_found"),
        (
            "/api/v1/images/999/thumbnail",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "/api/v1/images/999/similar",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        ("/api/v1/images/abc", StatusCode::BAD_REQUEST, "bad_request"),
        (
            "/api/v1/images/..%2F..%2F..%2Fetc%2Fpasswd/file",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/api/v1/images/-1/file",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/assets/..%2F..%2FCargo.toml",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        ("/api/v1/nothing", StatusCode::NOT_FOUND, "not_found"),
        // Empty values of typed parameters are bad input, not "not given".
        (
            "/api/v1/search?q=red&k=",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/api/v1/search?q=red&type=",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/api/v1/search?q=red&from=",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/api/v1/search?q=red&sort=",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/api/v1/search?q=red&rerank=",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/api/v1/search?q=%20%20",
            StatusCode::BAD_REQUEST,
            "empty_query",
        ),
        (
            "/api/v1/images/4/similar?k=",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/api/v1/images/18446744073709551616",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ] {
        let (s, b) =
            json_of(call_service(&app, TestRequest::get().uri(uri).to_request()).await).await;
        assert_error(s, &b, want, code);
    }
    let long = format!("/api/v1/search?q={}", "a".repeat(1001));
    let (s, b) =
        json_of(call_service(&app, TestRequest::get().uri(&long).to_request()).await).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "query_too_long");
    for (body, ctype, want, code) in [
        (
            "{\"q\": ",
            "application/json",
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "[1, 2]",
            "application/json",
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "{\"q\": \"red\", \"k\": 1000000000}",
            "application/json",
            StatusCode::BAD_REQUEST,
            "k_out_of_range",
        ),
        (
            "q=red",
            "text/plain",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media",
        ),
        // Typed as the document says: numbers are JSON numbers, q a string.
        (
            "{\"q\": \"red\", \"k\": \"5\"}",
            "application/json",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "{\"q\": null}",
            "application/json",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "{\"q\": \"red\", \"colour\": \"blue\"}",
            "application/json",
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ] {
        let req = TestRequest::post()
            .uri("/api/v1/search")
            .insert_header(("Content-Type", ctype))
            .set_payload(body)
            .to_request();
        let (s, b) = json_of(call_service(&app, req).await).await;
        assert_error(s, &b, want, code);
    }

    // Metadata, thumbnail (generated once, cached), original file.
    let id = hits[0]["id"].as_u64().unwrap();
    let (s, meta) = json_of(
        call_service(
            &app,
            TestRequest::get()
                .uri(&format!("/api/v1/images/{id}"))
                .to_request(),
        )
        .await,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(meta["id"], id);
    assert!(meta["size"].as_u64().unwrap() > 0);
    let resp = call_service(
        &app,
        TestRequest::get()
            .uri(&format!("/api/v1/images/{id}/thumbnail"))
            .to_request(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers().get("content-type").unwrap(), "image/jpeg");
    let thumb = image::load_from_memory(&read_body(resp).await).unwrap();
    assert!(thumb.width().max(thumb.height()) <= 256);
    let cached: Vec<_> = std::fs::read_dir(store_dir.join("thumbnails"))
        .unwrap()
        .collect();
    assert_eq!(cached.len(), 1);
    let resp = call_service(
        &app,
        TestRequest::get()
            .uri(&format!("/api/v1/images/{id}/file"))
            .to_request(),
    )
    .await;
    assert_eq!(resp.headers().get("content-type").unwrap(), "image/png");
    let path = meta["path"].as_str().unwrap().to_string();
    assert_eq!(
        read_body(resp).await.to_vec(),
        std::fs::read(&path).unwrap()
    );
    let (s, sim) = json_of(
        call_service(
            &app,
            TestRequest::get()
                .uri(&format!("/api/v1/images/{id}/similar?k=3"))
                .to_request(),
        )
        .await,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(sim["hits"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["id"] != id && h["scores"]["similarity"].is_number()));

    // Uploads.
    let png = std::fs::read(&path).unwrap();
    let upload = |route: &str, body: Vec<u8>| {
        TestRequest::post()
            .uri(route)
            .insert_header((
                "Content-Type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            ))
            .set_payload(body)
            .to_request()
    };
    let (s, b) = json_of(
        call_service(
            &app,
            upload(
                "/api/v1/image-to-image?k=2",
                multipart("image", "a.png", &png),
            ),
        )
        .await,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["hits"][0]["id"], id);
    let (s, b) = json_of(
        call_service(
            &app,
            upload(
                "/api/v1/image-to-text?k=4",
                multipart("image", "a.png", &png),
            ),
        )
        .await,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["hits"].as_array().unwrap().len(), 4);
    assert_eq!(b["hits"][0]["source"], "caption");
    assert!(b["hits"][0]["image_id"].is_u64());
    for (req, want, code) in [
        (
            upload(
                "/api/v1/image-to-text",
                multipart("image", "big.png", &vec![0u8; 300 * 1024]),
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            upload("/api/v1/image-to-text", b"--nope\r\ngarbage".to_vec()),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            upload("/api/v1/image-to-text", multipart("photo", "a.png", &png)),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            upload(
                "/api/v1/image-to-image",
                multipart("image", "a.png", b"not an image at all"),
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media",
        ),
        (
            upload(
                "/api/v1/image-to-text?k=1000000000",
                multipart("image", "a.png", &png),
            ),
            StatusCode::BAD_REQUEST,
            "k_out_of_range",
        ),
        (
            TestRequest::post()
                .uri("/api/v1/image-to-text")
                .set_json(serde_json::json!({}))
                .to_request(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media",
        ),
    ] {
        let (s, b) = json_of(call_service(&app, req).await).await;
        assert_error(s, &b, want, code);
    }

    // Methods a route does not serve: 405 with Allow, whatever the route.
    for (method, uri, allow) in [
        (actix_web::http::Method::PUT, "/api/v1/search", "GET, POST"),
        (actix_web::http::Method::POST, "/api/v1/stats", "GET"),
        (actix_web::http::Method::DELETE, "/api/v1/images/1", "GET"),
        (actix_web::http::Method::GET, "/api/v1/texts", "POST"),
        (actix_web::http::Method::TRACE, "/api/v1/index", "GET, POST"),
    ] {
        let resp = call_service(
            &app,
            TestRequest::default()
                .method(method.clone())
                .uri(uri)
                .to_request(),
        )
        .await;
        assert_eq!(
            resp.headers().get("allow").unwrap(),
            allow,
            "{method} {uri}"
        );
        let (s, b) = json_of(resp).await;
        assert_error(s, &b, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    }

    // Same-origin only: a preflight from another site is refused and nothing grants CORS.
    let preflight = TestRequest::default()
        .method(actix_web::http::Method::OPTIONS)
        .uri("/api/v1/texts")
        .insert_header(("Origin", "https://evil.example"))
        .insert_header(("Access-Control-Request-Method", "POST"))
        .to_request();
    let resp = call_service(&app, preflight).await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    let cross = TestRequest::get()
        .uri("/api/v1/stats")
        .insert_header(("Origin", "https://evil.example"))
        .to_request();
    let resp = call_service(&app, cross).await;
    assert!(resp
        .headers()
        .keys()
        .all(|h| !h.as_str().starts_with("access-control-")));

    // Writes need the token, checked before the body is read: a malformed body without the
    // token is 401, not 400.
    for (uri, body) in [("/api/v1/texts", "{\"texts\": "), ("/api/v1/index", "[1]")] {
        let req = TestRequest::post()
            .uri(uri)
            .insert_header(("Content-Type", "application/json"))
            .set_payload(body)
            .to_request();
        let (s, b) = json_of(call_service(&app, req).await).await;
        assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let texts = serde_json::json!({"texts": ["a purple elephant reading a newspaper"]});
    let (s, b) = json_of(
        call_service(
            &app,
            TestRequest::post()
                .uri("/api/v1/texts")
                .set_json(&texts)
                .to_request(),
        )
        .await,
    )
    .await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");
    let (s, b) = json_of(
        call_service(
            &app,
            TestRequest::post()
                .uri("/api/v1/texts")
                .insert_header(("Authorization", "Bearer wrong!"))
                .set_json(&texts)
                .to_request(),
        )
        .await,
    )
    .await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");
    let (s, b) = json_of(
        call_service(
            &app,
            TestRequest::post()
                .uri("/api/v1/texts")
                .insert_header(("Authorization", "Bearer s3cret"))
                .set_json(&texts)
                .to_request(),
        )
        .await,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let new_id = b["ids"][0].as_u64().unwrap();
    let (s, b) = json_of(
        call_service(
            &app,
            upload(
                "/api/v1/image-to-text?k=11",
                multipart("image", "a.png", &png),
            ),
        )
        .await,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(b["hits"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h["id"] == new_id && h["source"] == "user"));
    let (s, b) = json_of(
        call_service(
            &app,
            TestRequest::post()
                .uri("/api/v1/texts")
                .insert_header(("Authorization", "Bearer s3cret"))
                .set_json(serde_json::json!({"texts": []}))
                .to_request(),
        )
        .await,
    )
    .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "bad_request");
    let (s, b) = json_of(
        call_service(
            &app,
            TestRequest::post()
                .uri("/api/v1/texts")
                .insert_header(("Authorization", "Bearer s3cret"))
                .set_json(serde_json::json!({"text": "x"}))
                .to_request(),
        )
        .await,
    )
    .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_json");

    // Indexing job: new scenes in a new folder become searchable.
    let more = dir.path().join("more");
    crate::synth::generate(
        &more,
        crate::synth::SynthOptions {
            count: 3,
            seed: 99,
            size: 64,
        },
    )
    .unwrap();
    let (s, b) = json_of(
        call_service(
            &app,
            TestRequest::post()
                .uri("/api/v1/index")
                .set_json(serde_json::json!({"paths": [more]}))
                .to_request(),
        )
        .await,
    )
    .await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");
    let auth = ("Authorization", "Bearer s3cret");
    let (s, b) = json_of(
        call_service(
            &app,
            TestRequest::post()
                .uri("/api/v1/index")
                .insert_header(auth)
                .set_json(serde_json::json!({"paths": ["relative/dir"]}))
                .to_request(),
        )
        .await,
    )
    .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "bad_request");
    let (s, b) = json_of(
        call_service(
            &app,
            TestRequest::post()
                .uri("/api/v1/index")
                .insert_header(auth)
                .set_json(serde_json::json!({"paths": [more]}))
                .to_request(),
        )
        .await,
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    assert_eq!(b["job"], 1);
    let mut last = Value::Null;
    for _ in 0..600 {
        let (_, b) =
            json_of(call_service(&app, TestRequest::get().uri("/api/v1/index").to_request()).await)
                .await;
        if b["state"] != "running" {
            last = b;
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last["state"], "done", "{last}");
    assert_eq!(last["done"], 3);
    let (_, b) =
        json_of(call_service(&app, TestRequest::get().uri("/api/v1/health").to_request()).await)
            .await;
    assert_eq!(b["images"], 13);

    // The OpenAPI document and the page.
    let (s, doc) = json_of(
        call_service(
            &app,
            TestRequest::get().uri("/api/v1/openapi.json").to_request(),
        )
        .await,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    for p in [
        "/search",
        "/image-to-text",
        "/image-to-image",
        "/images/{id}",
        "/images/{id}/thumbnail",
        "/images/{id}/file",
        "/images/{id}/similar",
        "/texts",
        "/index",
        "/health",
        "/stats",
    ] {
        assert!(doc["paths"].get(p).is_some(), "openapi lacks {p}");
    }
    for (uri, ctype) in [
        ("/", "text/html; charset=utf-8"),
        ("/assets/app.js", "text/javascript; charset=utf-8"),
        ("/assets/style.css", "text/css; charset=utf-8"),
        ("/assets/icon.svg", "image/svg+xml"),
    ] {
        let resp = call_service(&app, TestRequest::get().uri(uri).to_request()).await;
        assert_eq!(resp.status(), StatusCode::OK, "{uri}");
        assert_eq!(resp.headers().get("content-type").unwrap(), ctype);
        assert!(resp
            .headers()
            .get("content-security-policy")
            .unwrap()
            .to_str()
            .unwrap()
            .contains("script-src 'self'"));
    }

    // Still serving after all of that.
    let (s, _) =
        json_of(call_service(&app, TestRequest::get().uri("/api/v1/health").to_request()).await)
            .await;
    assert_eq!(s, StatusCode::OK);
}

#[actix_web::test]
async fn saturated_model_slots_answer_busy_and_health_stays_fast() {
    let pool = ModelPool::new(1, Duration::from_millis(100));
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let holder = {
        let pool = pool.clone();
        actix_web::rt::spawn(async move { pool.run(move || rx.recv().ok()).await })
    };
    // Wait until the first job holds the permit.
    for _ in 0..100 {
        if pool.in_use() == 1 {
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(pool.in_use(), 1);
    let started = std::time::Instant::now();
    let err = pool.run(|| ()).await.unwrap_err();
    assert_eq!(
        (err.status, err.code),
        (StatusCode::SERVICE_UNAVAILABLE, "busy")
    );
    assert!(started.elapsed() >= Duration::from_millis(100));
    tx.send(()).unwrap();
    assert!(holder.await.unwrap().is_ok());
    assert!(pool.run(|| 7).await.unwrap() == 7);
}

#[actix_web::test]
async fn uploads_beyond_the_gate_wait_then_answer_busy_and_nothing_is_read() {
    let gate = UploadGate::new(2, Duration::from_millis(100));
    let first = gate.enter().await.unwrap();
    let second = gate.enter().await.unwrap();
    assert_eq!(gate.in_use(), 2);
    let started = std::time::Instant::now();
    let err = gate.enter().await.unwrap_err();
    assert_eq!(
        (err.status, err.code),
        (StatusCode::SERVICE_UNAVAILABLE, "busy")
    );
    assert!(started.elapsed() >= Duration::from_millis(100));
    drop(first);
    let third = gate.enter().await.unwrap();
    drop((second, third));
    assert_eq!(gate.in_use(), 0);

    // Through the route: with every upload permit held, an upload is answered 503 without its
    // body being buffered; once one is free, it is served.
    let dir = tempfile::tempdir().unwrap();
    let models = small_models();
    let (library, _) = build(dir.path(), &models, 2, false);
    let mut cfg = config(None);
    cfg.busy_wait = Duration::from_millis(100);
    let state = web::Data::new(AppState::new(library, models, &cfg));
    let app = app!(state);
    let held: Vec<_> =
        futures_util::future::join_all((0..state.uploads.size()).map(|_| state.uploads.enter()))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    let mut png = Vec::new();
    image::DynamicImage::new_rgb8(8, 8)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let request = || {
        TestRequest::post()
            .uri("/api/v1/image-to-image?k=1")
            .insert_header((
                "Content-Type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            ))
            .set_payload(multipart("image", "a.png", &png))
            .to_request()
    };
    let (s, b) = json_of(call_service(&app, request()).await).await;
    assert_error(s, &b, StatusCode::SERVICE_UNAVAILABLE, "busy");
    drop(held);
    let (s, b) = json_of(call_service(&app, request()).await).await;
    assert_eq!(s, StatusCode::OK, "{b}");
}
