//! Watched folders with real file operations: `quarry index --watch` and `quarry serve --watch`
//! follow a temporary library as files are copied in, moved, deleted, replaced and written
//! slowly, and nothing is embedded twice.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::serve::Server;
use crate::support::{scenes, small_model};

/// Far above what each step takes (seconds); only a hang fails on it.
const PATIENCE: Duration = Duration::from_secs(90);

/// Synthetic scenes in `dir/images`, listed in order.
fn images(dir: &Path, count: usize, seed: u64) -> Vec<PathBuf> {
    scenes(dir, count, seed);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

/// `quarry index LIB --watch --json`, its stdout lines delivered on a channel.
struct Watching {
    child: Child,
    lines: Receiver<Value>,
}

impl Watching {
    fn start(library: &Path, store: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_quarry"))
            .args([
                "index",
                library.to_str().unwrap(),
                "--store",
                store.to_str().unwrap(),
            ])
            .args(["--model", &small_model(), "--json", "--watch"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                    break;
                }
            }
        });
        let mut watching = Self { child, lines };
        watching.next_summary(); // the initial walk
        watching
    }

    /// Lines up to the next summary: (the watcher's batches, the summary).
    fn next_summary(&mut self) -> (Vec<Value>, Value) {
        let mut seen = Vec::new();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let line = self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("no summary within {PATIENCE:?}; saw {seen:#?}"));
            if line["event"] == "summary" {
                return (seen, line);
            }
            seen.push(line);
        }
    }

    /// Runs `change`, then collects summaries until `done` says the store caught up; the time
    /// that took and the summaries' plans added up.
    fn after(
        &mut self,
        what: &str,
        change: impl FnOnce(),
        done: impl Fn(&Value) -> bool,
    ) -> (Duration, Totals) {
        let started = Instant::now();
        change();
        let mut totals = Totals::default();
        loop {
            let (_, summary) = self.next_summary();
            totals.add(&summary);
            if done(&summary) {
                let took = started.elapsed();
                println!("{what}: {took:.2?}, {totals:?}");
                return (took, totals);
            }
        }
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Default)]
struct Totals {
    embedded: u64,
    new: u64,
    modified: u64,
    moved: u64,
    deleted: u64,
    failed: u64,
}

impl Totals {
    fn add(&mut self, summary: &Value) {
        let n = |v: &Value| v.as_u64().unwrap_or(0);
        self.embedded += n(&summary["indexed"]);
        self.failed += summary["failed"].as_array().map_or(0, |a| a.len() as u64);
        let plan = &summary["plan"];
        self.new += n(&plan["new"]);
        self.modified += n(&plan["modified"]);
        self.moved += n(&plan["moved"]);
        self.deleted += n(&plan["deleted"]);
    }
}

fn store_images(summary: &Value) -> u64 {
    summary["store"]["images"].as_u64().unwrap()
}

#[test]
fn index_watch_follows_copies_moves_deletes_replacements_and_slow_writers() {
    let dir = tempfile::tempdir().unwrap();
    let source = images(&dir.path().join("scenes"), 52, 41);
    let library = dir.path().join("library");
    std::fs::create_dir_all(&library).unwrap();
    let mut watch = Watching::start(&library, &dir.path().join("store"));

    // 50 photos copied in: each embedded once, none failed.
    let (_, t) = watch.after(
        "copy 50",
        || {
            for f in &source[..50] {
                std::fs::copy(f, library.join(f.file_name().unwrap())).unwrap();
            }
        },
        |s| store_images(s) == 50,
    );
    assert_eq!((t.embedded, t.new, t.failed), (50, 50, 0), "{t:?}");

    // A folder of 10 made and filled by moves, then the folder moved: records follow, nothing
    // is embedded again.
    let trip = library.join("trip");
    let (_, t) = watch.after(
        "move 10 into a folder",
        || {
            std::fs::create_dir(&trip).unwrap();
            for f in &source[..10] {
                let name = f.file_name().unwrap();
                std::fs::rename(library.join(name), trip.join(name)).unwrap();
            }
        },
        |s| s["plan"]["moved"].as_u64() > Some(0) && store_images(s) == 50,
    );
    assert_eq!((t.embedded, t.moved, t.deleted), (0, 10, 0), "{t:?}");
    let (_, t) = watch.after(
        "move the folder",
        || {
            std::fs::create_dir(library.join("2024")).unwrap();
            std::fs::rename(&trip, library.join("2024/trip")).unwrap();
        },
        |s| s["plan"]["moved"].as_u64() > Some(0),
    );
    assert_eq!((t.embedded, t.moved), (0, 10), "{t:?}");

    // Five deleted leave search.
    let (_, t) = watch.after(
        "delete 5",
        || {
            for f in &source[40..45] {
                std::fs::remove_file(library.join(f.file_name().unwrap())).unwrap();
            }
        },
        |s| store_images(s) == 45,
    );
    assert_eq!((t.embedded, t.deleted), (0, 5), "{t:?}");

    // One replaced by another photo: embedded again, once.
    let replaced = library.join(source[30].file_name().unwrap());
    let (_, t) = watch.after(
        "replace 1",
        || std::fs::write(&replaced, std::fs::read(&source[50]).unwrap()).unwrap(),
        |s| s["plan"]["modified"].as_u64() == Some(1),
    );
    assert_eq!((t.embedded, t.modified, t.failed), (1, 1, 0), "{t:?}");

    // A photo written in two halves with a pause: taken once it is complete, never as a
    // truncated failure.
    let slow = library.join("slow.png");
    let bytes = std::fs::read(&source[51]).unwrap();
    let (_, t) = watch.after(
        "slow writer",
        || {
            let mut file = std::fs::File::create(&slow).unwrap();
            file.write_all(&bytes[..bytes.len() / 2]).unwrap();
            file.flush().unwrap();
            std::thread::sleep(Duration::from_secs(4));
            file.write_all(&bytes[bytes.len() / 2..]).unwrap();
        },
        |s| store_images(s) == 46,
    );
    assert_eq!((t.embedded, t.new, t.failed), (1, 1, 0), "{t:?}");

    // A non-image saved into the library is ignored, as a walk ignores it.
    std::fs::write(library.join("notes.txt"), "shopping list").unwrap();
    std::fs::write(library.join(".hidden.png"), "x").unwrap();
    std::thread::sleep(Duration::from_secs(4));
    if let Ok(line) = watch.lines.try_recv() {
        // A batch may report the text file; it must not record a failure or embed anything.
        assert!(line["event"] == "watch", "{line}");
        let (_, summary) = watch.next_summary();
        assert_eq!(summary["failed"].as_array().unwrap().len(), 0, "{summary}");
        assert_eq!(summary["indexed"], 0, "{summary}");
    }
}

#[test]
fn serve_watch_indexes_what_lands_and_the_job_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let source = images(&dir.path().join("scenes"), 6, 43);
    let library = dir.path().join("library");
    std::fs::create_dir_all(&library).unwrap();
    std::fs::copy(&source[0], library.join("before.png")).unwrap();
    let store = dir.path().join("store");
    let model = small_model();
    let server = Server::spawn(
        &[
            "serve",
            "--store",
            store.to_str().unwrap(),
            "--model",
            &model,
            "--watch",
            library.to_str().unwrap(),
        ],
        None,
        Duration::from_secs(60),
    );
    let images =
        |server: &Server| server.call("GET", "/api/v1/stats", &[], &[]).1["images"].as_u64();
    let wait_for = |n: u64| {
        let started = Instant::now();
        while images(&server) != Some(n) {
            assert!(
                started.elapsed() < PATIENCE,
                "the store never reached {n} images"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        started.elapsed()
    };
    // What was there at start is walked at once.
    wait_for(1);
    let started = Instant::now();
    for f in &source[1..] {
        std::fs::copy(f, library.join(f.file_name().unwrap())).unwrap();
    }
    let took = wait_for(6);
    println!(
        "serve --watch: 5 copied in, searchable after {:.2?}",
        started.elapsed().max(took)
    );
    // Search follows: every photo that landed is found, under its path in the library.
    let (status, found) = server.call("GET", "/api/v1/search?q=a%20red%20circle&k=10", &[], &[]);
    assert_eq!(status, 200, "{found}");
    let mut paths: Vec<PathBuf> = found["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| PathBuf::from(h["path"].as_str().unwrap()))
        .collect();
    paths.sort();
    let mut expected: Vec<PathBuf> = std::fs::read_dir(&library)
        .unwrap()
        .map(|e| std::path::absolute(e.unwrap().path()).unwrap())
        .collect();
    expected.sort();
    assert_eq!(paths, expected);
    let (status, job) = server.call("GET", "/api/v1/index", &[], &[]);
    assert_eq!(status, 200);
    assert_eq!(job["origin"], "watch", "{job}");
    assert_eq!(
        job["watching"][0].as_str().map(PathBuf::from),
        Some(std::path::absolute(&library).unwrap()),
        "{job}"
    );
    std::fs::remove_file(library.join("before.png")).unwrap();
    wait_for(5);
    let (status, _) = server.stop();
    assert!(status.success());
}
