//! The web page in a real browser: Debian's Chromium, headless, driven by playwright-core
//! (`web/tests/browser.test.mjs`) against a real `quarry serve` on a store indexed from
//! synthetic scenes with the small fixture models. Screenshots land in `web/tests/screenshots/`.
//!
//! Needs `node` and `/usr/bin/chromium` (`.ci/run` installs both). Without them the test fails
//! and says what to install; `QUARRY_SKIP_BROWSER=1` opts out explicitly (and says so).

use std::path::{Path, PathBuf};
use std::process::Command;

use quarry::synth::{generate, SynthOptions};

use crate::support::retrieval_fixtures;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn search_slider_detail_and_image_drop_work_in_chromium() {
    if std::env::var_os("QUARRY_SKIP_BROWSER").is_some() {
        eprintln!("QUARRY_SKIP_BROWSER is set: the browser test did NOT run");
        return;
    }
    let chromium = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "the browser test needs Chromium at {chromium}: `apt-get install chromium` (or set \
         CHROMIUM_PATH, or QUARRY_SKIP_BROWSER=1 to skip it knowingly)"
    );
    assert!(
        Command::new("node").arg("--version").output().is_ok(),
        "the browser test needs node >= 20"
    );

    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    generate(
        &photos,
        SynthOptions {
            count: 12,
            seed: 21,
            size: 96,
        },
    )
    .unwrap();
    let store = tmp.path().join("store");
    let model = retrieval_fixtures().join("small_a");
    let captioner = retrieval_fixtures()
        .parent()
        .unwrap()
        .join("captioning/opt_current");
    let index = Command::new(env!("CARGO_BIN_EXE_quarry"))
        .arg("index")
        .arg(&photos)
        .arg("--store")
        .arg(&store)
        .arg("--model")
        .arg(&model)
        .arg("--caption-model")
        .arg(&captioner)
        .args(["--caption-max-tokens", "6"])
        .output()
        .unwrap();
    assert!(
        index.status.success(),
        "{}",
        String::from_utf8_lossy(&index.stderr)
    );

    let run = Command::new("bash")
        .arg(repo().join("web/tests/run.sh"))
        .arg(env!("CARGO_BIN_EXE_quarry"))
        .arg(&store)
        .arg(&model)
        .env("QUARRY_DROP_IMAGE", photos.join("images/000003.png"))
        .env(
            "QUARRY_SERVE_ARGS",
            format!("--caption-model {}", captioner.display()),
        )
        .env("CHROMIUM_PATH", &chromium)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    eprintln!("{stdout}\n{stderr}");
    assert!(run.status.success(), "browser test failed (output above)");
    // node:test prints "# fail 0" when every step passed.
    assert!(stdout.contains("# fail 0"), "unexpected node:test summary");
}
