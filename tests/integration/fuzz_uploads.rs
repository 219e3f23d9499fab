//! A mutation fuzzer for uploads: multipart bodies (the boundary lines, the part headers, the
//! image bytes, the closing boundary) and their `Content-Type`, sent over a real socket to the
//! two upload routes of a running `quarry serve`. Every answer must be a success or a 4xx with
//! the JSON error body (never a 5xx), and the server must stay up. Deterministic by seed:
//! `QUARRY_FUZZ_UPLOAD_CASES` (default 300) and `QUARRY_FUZZ_SEED`; a long run is reported in
//! the closing note of the reliability issue.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::fuzz_files::{env_number, mutate, Rng};
use crate::serve::{build_store, multipart, Server};

#[test]
fn mutated_multipart_uploads_get_a_4xx_never_a_5xx() {
    let cases = env_number("QUARRY_FUZZ_UPLOAD_CASES", 300);
    let seed = env_number("QUARRY_FUZZ_SEED", 11);
    let dir = tempfile::tempdir().unwrap();
    let (store, images) = build_store(dir.path(), 8);
    let server = Server::spawn(
        &[
            "serve",
            "--store",
            store.to_str().unwrap(),
            "--model",
            &crate::support::small_model(),
        ],
        None,
        Duration::from_secs(60),
    );
    let png = std::fs::read(images.join("000003.png")).unwrap();
    let valid = multipart("image", &png);
    let routes = ["/api/v1/image-to-text?k=3", "/api/v1/image-to-image?k=3"];
    let content_types = [
        "multipart/form-data; boundary=quarryboundaryXyZ",
        "multipart/form-data; boundary=quarryboundaryXyZ; charset=utf-8",
        "multipart/form-data; boundary=\"quarryboundaryXyZ\"",
        "multipart/form-data; boundary=other",
        "multipart/form-data",
        "multipart/mixed; boundary=quarryboundaryXyZ",
        "image/png",
        "",
    ];
    let mut rng = Rng(seed);
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    for case in 0..cases {
        // Mostly the head of the body (boundary and part headers), sometimes anywhere.
        let region = if rng.below(4) == 0 { valid.len() } else { 300 };
        let body = if rng.below(10) == 0 {
            valid.clone()
        } else {
            mutate(&mut rng, &valid, region)
        };
        let content_type = if rng.below(5) == 0 {
            content_types[rng.below(content_types.len())]
        } else {
            content_types[0]
        };
        let route = routes[rng.below(routes.len())];
        let headers: Vec<(&str, &str)> = if content_type.is_empty() {
            Vec::new()
        } else {
            vec![("Content-Type", content_type)]
        };
        let (status, _, answer) = server
            .try_request("POST", route, &headers, &body)
            .unwrap_or_else(|e| panic!("case {case} (seed {seed}): no answer: {e}"));
        *statuses.entry(status).or_default() += 1;
        let kept = || {
            let path = std::env::temp_dir().join(format!("quarry-fuzz-upload-{seed}-{case}"));
            std::fs::write(&path, &body).unwrap();
            path
        };
        assert!(
            status < 500,
            "case {case} (seed {seed}) {route} {content_type:?}: {status} {}; body kept in {}",
            String::from_utf8_lossy(&answer),
            kept().display()
        );
        if status >= 400 {
            let error: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_else(|e| {
                panic!(
                    "case {case}: {status} without a JSON error ({e}); body kept in {}",
                    kept().display()
                )
            });
            assert!(
                error["error"].is_string() && error["message"].is_string(),
                "{error}"
            );
        }
    }
    let (status, _) = server.call("GET", "/api/v1/health", &[], &[]);
    assert_eq!(status, 200, "the server stopped answering");
    eprintln!("upload fuzz: {cases} cases (seed {seed}), answers by status: {statuses:?}");
    assert!(
        statuses.keys().any(|s| *s == 200) && statuses.keys().any(|s| (400..500).contains(s)),
        "the cases should reach both outcomes: {statuses:?}"
    );
}
