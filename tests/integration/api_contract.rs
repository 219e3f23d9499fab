//! The API against its own OpenAPI document, checked from outside by schemathesis: a real
//! `quarry serve --token` on a real socket, every schemathesis check (no 5xx, status codes,
//! content types, headers and bodies as documented, missing or wrong tokens refused,
//! schema-invalid input refused, schema-valid input accepted, 405 with `Allow` for methods a
//! route does not serve), with the exceptions `tests/api/schemathesis.toml` explains.
//!
//! Bounded here (deterministic examples, a few per operation); a long run with a random seed
//! is reported in README ("API contract"). schemathesis comes from PyPI: `.ci/run` installs
//! it into `.ci/venv` and points `QUARRY_SCHEMATHESIS` at it; without it this test fails and
//! says what to install, unless `QUARRY_SKIP_SCHEMATHESIS=1` skips it knowingly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::serve::Server;
use crate::support::retrieval_fixtures;

fn schemathesis() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("QUARRY_SCHEMATHESIS") {
        return Some(PathBuf::from(path));
    }
    let on_path = Command::new("schemathesis").arg("--version").output();
    on_path
        .is_ok_and(|o| o.status.success())
        .then(|| PathBuf::from("schemathesis"))
}

fn config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/api/schemathesis.toml")
}

#[test]
fn the_served_api_follows_its_openapi_document() {
    if std::env::var("QUARRY_SKIP_SCHEMATHESIS").as_deref() == Ok("1") {
        eprintln!("QUARRY_SKIP_SCHEMATHESIS=1: the API contract check is skipped");
        return;
    }
    let Some(st) = schemathesis() else {
        panic!(
            "schemathesis is needed for the API contract test: \
             python3 -m venv .ci/venv && .ci/venv/bin/pip install 'schemathesis==4.32.5' and \
             QUARRY_SCHEMATHESIS=.ci/venv/bin/schemathesis (or QUARRY_SKIP_SCHEMATHESIS=1)"
        );
    };
    let dir = tempfile::tempdir().unwrap();
    let library = dir.path().join("library");
    std::fs::create_dir_all(&library).unwrap();
    for name in ["small_rgb.png", "alpha.png", "photo.jpg"] {
        std::fs::copy(
            retrieval_fixtures().join("images").join(name),
            library.join(name),
        )
        .unwrap();
    }
    let store = dir.path().join("store");
    let model = retrieval_fixtures().join("small_a");
    let out = Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args(["index", library.to_str().unwrap(), "--store"])
        .arg(&store)
        .arg("--model")
        .arg(&model)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let server = Server::spawn(
        &[
            "serve",
            "--store",
            store.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--token",
            "contract-token",
            "--index-root",
            library.to_str().unwrap(),
        ],
        None,
        Duration::from_secs(60),
    );
    let url = format!("http://{}/api/v1/openapi.json", server.addr());
    let out = Command::new(&st)
        .arg("--config-file")
        .arg(config())
        .args(["run", &url])
        .args(["-H", "Authorization: Bearer contract-token"])
        .args(["--max-examples", "12", "--generation-deterministic"])
        .args(["--max-failures", "50", "--request-timeout", "60"])
        .current_dir(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", st.display()));
    let report = String::from_utf8_lossy(&out.stdout);
    let summary: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("generated") || l.contains("passed") || l.contains("failures"))
        .collect();
    println!("{}", summary.join("\n"));
    assert!(
        out.status.success(),
        "schemathesis found contract failures:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The fuzzing left the server up and answering.
    let (status, _) = server.call("GET", "/api/v1/health", &[], &[]);
    assert_eq!(status, 200);
    let (status, stderr) = server.stop();
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
