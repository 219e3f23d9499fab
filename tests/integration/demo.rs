//! The no-download path: `quarry demo`, every command without `--model` (the built-in demo
//! models) and `quarry eval-captions`. Each test has its own cache folder
//! (`QUARRY_CACHE_DIR`), so the demo models are unpacked fresh. Nothing here depends on the
//! demo models' quality, only on the pipeline running with them.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::serve::Server;

/// How long `quarry demo` (which indexes first) or `serve` may take to answer its health check.
const SERVER_READY: Duration = Duration::from_secs(120);

/// Runs quarry with `cache` as its cache folder.
fn quarry(cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args(args)
        .env("QUARRY_CACHE_DIR", cache)
        .output()
        .unwrap()
}

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn last_json(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().expect("no output");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The folder the demo retrieval model was unpacked into.
fn unpacked(cache: &Path, kind: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(cache.join("models"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("demo-{kind}-"))
        })
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found.into_iter().next().unwrap()
}

#[test]
fn demo_indexes_and_captions_scenes_and_a_second_run_does_no_model_work() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let ws = tmp.path().join("ws");
    let args = [
        "demo",
        "--no-serve",
        "--n",
        "12",
        "--dir",
        ws.to_str().unwrap(),
        "--json",
    ];
    let first = ok(quarry(&cache, &args), "first demo");
    let summary = last_json(&first);
    assert_eq!(summary["event"], "summary", "{summary}");
    assert_eq!(summary["indexed"], 12, "{summary}");
    assert!(stderr(&first).contains("generating 12 sample scenes"));
    let store = ws.join("store");
    let status = last_json(&ok(
        quarry(
            &cache,
            &["status", "--store", store.to_str().unwrap(), "--json"],
        ),
        "status",
    ));
    for key in ["images", "vectors", "captions", "texts"] {
        assert_eq!(status[key], 12, "{key} in {status}");
    }
    assert_eq!(status["failed"], 0);
    // The store records both demo models.
    let readable = ok(
        quarry(&cache, &["status", "--store", store.to_str().unwrap()]),
        "status",
    );
    let readable = String::from_utf8_lossy(&readable.stdout);
    assert!(readable.contains("demo-retrieval-"), "{readable}");
    assert!(readable.contains("demo-captioner-"), "{readable}");

    let second = ok(quarry(&cache, &args), "second demo");
    let summary = last_json(&second);
    assert_eq!(summary["indexed"], 0, "{summary}");
    assert_eq!(summary["batches"], 0, "{summary}");
    assert_eq!(summary["plan"]["unchanged"], 12, "{summary}");
    assert_eq!(summary["store"]["captions"], 12, "{summary}");
    assert!(
        stderr(&second).contains("reusing 12 sample scenes"),
        "{}",
        stderr(&second)
    );
}

#[test]
fn commands_without_model_use_the_unpacked_demo_models() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let text = ok(
        quarry(&cache, &["embed-text", "--json", "a red circle"]),
        "embed-text",
    );
    assert!(
        stderr(&text).contains("no --model given: using the built-in demo retrieval model"),
        "{}",
        stderr(&text)
    );
    let retrieval = unpacked(&cache, "retrieval");
    let default = last_json(&text);
    let embed = default["embed"].as_array().unwrap();
    assert!(!embed.is_empty());
    let norm: f64 = embed.iter().map(|x| x.as_f64().unwrap().powi(2)).sum();
    assert!(
        (norm - 1.0).abs() < 1e-4,
        "not a unit vector: |v|² = {norm}"
    );
    // The default is exactly the unpacked folder.
    let explicit = last_json(&ok(
        quarry(
            &cache,
            &[
                "embed-text",
                "--json",
                "--model",
                retrieval.to_str().unwrap(),
                "a red circle",
            ],
        ),
        "embed-text --model",
    ));
    assert_eq!(default, explicit);

    // index with no model flags: the demo captioner too, so captions out of the box.
    let scenes = tmp.path().join("scenes");
    ok(
        quarry(
            &cache,
            &[
                "synth",
                "--out",
                scenes.to_str().unwrap(),
                "--n",
                "3",
                "--size",
                "64",
            ],
        ),
        "synth",
    );
    let store = tmp.path().join("store");
    let index = ok(
        quarry(
            &cache,
            &[
                "index",
                scenes.to_str().unwrap(),
                "--store",
                store.to_str().unwrap(),
                "--json",
            ],
        ),
        "index",
    );
    let summary = last_json(&index);
    assert_eq!(summary["store"]["images"], 3, "{summary}");
    assert_eq!(summary["store"]["captions"], 3, "{summary}");
    unpacked(&cache, "captioner");

    // serve with no model flags: the demo model, re-ranking 16 candidates by default with the
    // fusion fitted for it (as `quarry demo` does); a request can ask for another depth.
    let server = Server::spawn(
        &["serve", "--store", store.to_str().unwrap()],
        Some(&cache),
        SERVER_READY,
    );
    let stats = server.call("GET", "/api/v1/stats", &[], &[]);
    let default_search = server.call("GET", "/api/v1/search?q=a%20red%20circle&k=3", &[], &[]);
    let asked = server.call(
        "GET",
        "/api/v1/search?q=a%20red%20circle&k=3&rerank=2",
        &[],
        &[],
    );
    let (status, serve_log) = server.stop();
    assert!(status.success(), "serve exited with {status}");
    // The demo folder carries a search fusion fitted for the demo captioner's captions.
    assert!(
        !serve_log.contains("no search fusion is fitted"),
        "{serve_log}"
    );
    assert_eq!(stats.0, 200, "{}", stats.1);
    // The default depth is the one the fit chose.
    assert_eq!(
        stats.1["rerank_default"], stats.1["fusion"]["rerank"],
        "{}",
        stats.1
    );
    assert!(
        stats.1["rerank_default"].as_u64().unwrap() > 0,
        "{}",
        stats.1
    );
    assert_eq!(stats.1["fusion"]["fitted"], true, "{}", stats.1);
    assert!(
        stats.1["caption_quality"]["captions"].as_u64().unwrap() > 0,
        "{}",
        stats.1
    );
    let (code, hits) = default_search;
    assert_eq!(code, 200, "{hits}");
    assert!(hits["reranked"].as_u64().unwrap() > 0, "{hits}");
    assert!(hits["hits"][0]["scores"]["itm"].is_number(), "{hits}");
    let (code, hits) = asked;
    assert_eq!(code, 200, "{hits}");
    assert_eq!(hits["reranked"], 2, "{hits}");
    assert!(hits["hits"][0]["scores"]["itm"].is_number(), "{hits}");

    // The demo weights named by path carry the same fitted fusion.
    let by_path = concat!(env!("CARGO_MANIFEST_DIR"), "/models/demo/retrieval");
    let captioner = concat!(env!("CARGO_MANIFEST_DIR"), "/models/demo/captioner");
    let server = Server::spawn(
        &[
            "serve",
            "--store",
            store.to_str().unwrap(),
            "--model",
            by_path,
            "--caption-model",
            captioner,
        ],
        Some(&cache),
        SERVER_READY,
    );
    let stats = server.call("GET", "/api/v1/stats", &[], &[]);
    let (status, serve_log) = server.stop();
    assert!(
        status.success(),
        "serve --model exited with {status}: {serve_log}"
    );
    assert_eq!(stats.0, 200, "{}", stats.1);
    assert_eq!(
        stats.1["rerank_default"], stats.1["fusion"]["rerank"],
        "{}",
        stats.1
    );
    assert_eq!(stats.1["fusion"]["fitted"], true, "{}", stats.1);

    // caption without --model.
    let image = scenes.join("images/000000.png");
    let caption = last_json(&ok(
        quarry(
            &cache,
            &[
                "caption",
                "--json",
                "--num-beams",
                "1",
                "--max-new-tokens",
                "4",
                "--min-new-tokens",
                "1",
                image.to_str().unwrap(),
            ],
        ),
        "caption",
    ));
    assert!(caption["caption"].is_string(), "{caption}");

    // A store made with another model: the message says the demo model was the default.
    let other = retrieval_fixture("small_b");
    let other_store = tmp.path().join("other");
    ok(
        quarry(
            &cache,
            &[
                "index",
                scenes.to_str().unwrap(),
                "--store",
                other_store.to_str().unwrap(),
                "--model",
                other.to_str().unwrap(),
            ],
        ),
        "index small_b",
    );
    let refused = quarry(
        &cache,
        &[
            "index",
            scenes.to_str().unwrap(),
            "--store",
            other_store.to_str().unwrap(),
        ],
    );
    assert_eq!(refused.status.code(), Some(1));
    let message = stderr(&refused);
    assert!(
        message.contains("no --model was given, so the built-in demo model was used")
            && message.contains("small_b"),
        "{message}"
    );
}

fn retrieval_fixture(name: &str) -> PathBuf {
    crate::support::retrieval_fixtures().join(name)
}

#[test]
fn eval_captions_reports_every_fraction() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let scenes = tmp.path().join("scenes");
    ok(
        quarry(
            &cache,
            &[
                "synth",
                "--out",
                scenes.to_str().unwrap(),
                "--n",
                "5",
                "--size",
                "64",
            ],
        ),
        "synth",
    );
    let out = ok(
        quarry(
            &cache,
            &[
                "eval-captions",
                "--data",
                scenes.to_str().unwrap(),
                "--batch",
                "2",
                "--limit",
                "4",
                "--max-new-tokens",
                "6",
                "--json",
            ],
        ),
        "eval-captions",
    );
    let report = last_json(&out);
    assert_eq!(report["images"], 4, "{report}");
    for key in ["color_right", "shape_right", "object_right", "exact_match"] {
        let x = report[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key}: {report}"));
        assert!((0.0..=1.0).contains(&x), "{key} = {x}");
    }
    let by_kind = report["by_kind"].as_object().unwrap();
    let total: u64 = by_kind
        .values()
        .map(|v| v["images"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 4, "{report}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("| all | 4 |"), "{table}");

    // A folder that is not a synth output is refused with a reason.
    let refused = quarry(
        &cache,
        &["eval-captions", "--data", tmp.path().to_str().unwrap()],
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("annotations.json"),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn demo_serves_the_page_and_says_when_the_port_is_taken() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let ws = tmp.path().join("ws");

    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let refused = quarry(
        &cache,
        &[
            "demo",
            "--n",
            "4",
            "--dir",
            ws.to_str().unwrap(),
            "--bind",
            &addr,
        ],
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains(&format!("{addr} is already in use")),
        "{}",
        stderr(&refused)
    );
    assert!(!ws.exists(), "a refused demo must not start work");
    drop(taken);

    let server = Server::spawn(
        &["demo", "--n", "4", "--dir", ws.to_str().unwrap()],
        Some(&cache),
        SERVER_READY,
    );
    let health = server.call("GET", "/api/v1/health", &[], &[]).1;
    let (code, hits) = server.call("GET", "/api/v1/search?q=a%20red%20circle&k=3", &[], &[]);
    let page = server.try_request("GET", "/", &[], &[]);
    let (status, _) = server.stop();
    assert!(health.is_object(), "{health}");
    assert_eq!(code, 200, "{hits}");
    assert_eq!(hits["hits"].as_array().unwrap().len(), 3, "{hits}");
    // The demo re-ranks with ITM by default (the fitted depth; 4 scenes are fewer).
    assert!(hits["hits"][0]["scores"]["itm"].is_number(), "{hits}");
    assert!(hits["reranked"].as_u64().unwrap() > 0, "{hits}");
    let (code, _, body) = page.unwrap();
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&body).contains("<html"));
    assert!(status.success(), "demo exited with {status}");
}
