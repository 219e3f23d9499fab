//! The faults a NAS or a laptop disk sees, injected for real: a disk that fills up (a tmpfs
//! of a fixed size, during `quarry index` and during a server's indexing job) and a disk whose
//! fsync fails (an `LD_PRELOAD` shim, `tests/faults/fail_fsync.c`, built with the system C
//! compiler). Each time: the run stops with an error that says what happened and what to do,
//! nothing acknowledged is lost, the store opens, and the next run completes.
//!
//! quarry keeps `RESERVE_BYTES` free on the store's disk (see `quarry::store::space`): the
//! disk fills to that reserve here, and once to the last byte by "another program".
//!
//! Mounting a tmpfs needs root or passwordless sudo (CI has both); elsewhere the two disk-full
//! tests fail with a message saying so, unless `QUARRY_SKIP_MOUNT_TESTS=1` skips them loudly.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use quarry::library::Library;
use quarry::store::space::RESERVE_BYTES;
use serde_json::Value;

use crate::indexing::{assert_counts_agree, searchable};
use crate::serve::Server;
use crate::support::{scenes, small_model};

/// `quarry index --json` with `env`; returns (exit code, files acknowledged by batch events,
/// stderr). Events are read as they come, as a person watching the progress would.
fn index_run(
    photos: &Path,
    store: &Path,
    env: &[(&str, &str)],
) -> (Option<i32>, BTreeSet<PathBuf>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args(["index", photos.to_str().unwrap(), "--store"])
        .arg(store)
        .args(["--model", &small_model(), "--json", "--batch", "4"])
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked = BTreeSet::new();
    for line in BufReader::new(stdout).lines() {
        let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
        if v["event"] == "batch" {
            for p in v["indexed"].as_array().unwrap() {
                acked.insert(PathBuf::from(p.as_str().unwrap()));
            }
        }
    }
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    (status.code(), acked, stderr)
}

/// The store opens, its parts agree, and every acknowledged file is searchable.
fn nothing_acknowledged_lost(store: &Path, acked: &BTreeSet<PathBuf>, what: &str) {
    let library = match Library::open_existing(store) {
        Ok(library) => library,
        // Stopped before the new store's first write reached the disk: right only while
        // nothing was acknowledged.
        Err(quarry::library::LibraryError::Store(quarry::store::StoreError::NotFound {
            ..
        })) if acked.is_empty() => {
            return;
        }
        Err(e) => panic!("{what}: store does not open: {e}"),
    };
    assert_counts_agree(&library);
    for path in acked {
        searchable(&library, path).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
}

/// Builds the fsync shim into `dir`.
fn fail_fsync_shim(dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/faults/fail_fsync.c");
    let shim = dir.join("fail_fsync.so");
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&shim)
        .arg(&source)
        .arg("-ldl")
        .output()
        .expect("a C compiler (cc) builds the fsync shim");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    shim
}

/// fsync fails (EIO) from the Nth sync of the store's files on, for N spread over start-up
/// (sled's, tantivy's first syncs) and the commits: every run stops with exit code 1, an error
/// naming the I/O failure and a hint, never a panic or a hang; the store then opens with every
/// acknowledged image, and a run on a healthy disk completes the set.
#[test]
fn a_failing_fsync_stops_the_run_clearly_and_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    scenes(&photos, 40, 21);
    let shim = fail_fsync_shim(tmp.path());
    let mut stopped_mid_run = 0;
    for after in [0, 3, 5, 11, 13, 21, 40, 70] {
        let store = tmp.path().join(format!("store-{after}"));
        let started = Instant::now();
        let (code, acked, stderr) = index_run(
            &photos,
            &store,
            &[
                ("LD_PRELOAD", shim.to_str().unwrap()),
                ("FAIL_FSYNC_UNDER", store.to_str().unwrap()),
                ("FAIL_FSYNC_AFTER", &after.to_string()),
            ],
        );
        let what = format!("fsync failing after {after}");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{what}: took {:?}",
            started.elapsed()
        );
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
        // Exit code 1 with the disk hint; tantivy sometimes reports only that its worker
        // thread died of an I/O error (no OS error code to recognise): then code 2.
        let clear = (code == Some(1)
            && stderr.contains("hint: the disk holding the store reported an I/O error"))
            || (code == Some(2) && stderr.contains("io::Error"));
        assert!(
            clear && stderr.starts_with("error: "),
            "{what}: {code:?} {stderr}"
        );
        if !acked.is_empty() {
            stopped_mid_run += 1;
        }
        nothing_acknowledged_lost(&store, &acked, &what);
        let (code, _, stderr) = index_run(&photos, &store, &[]);
        assert_eq!(code, Some(0), "{what}, then a healthy disk: {stderr}");
        let library = Library::open_existing(&store).unwrap();
        assert_eq!(library.counts().unwrap().images, 40, "{what}");
        assert_counts_agree(&library);
    }
    assert!(
        stopped_mid_run >= 2,
        "only {stopped_mid_run} runs had committed before the fault"
    );
}

/// A tmpfs of `bytes`, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

/// Runs a privileged command: directly as root, else through passwordless sudo.
fn privileged(program: &str, args: &[&str]) -> std::io::Result<std::process::Output> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if root {
        Command::new(program).args(args).output()
    } else {
        Command::new("sudo")
            .args(["-n", program])
            .args(args)
            .output()
    }
}

impl Tmpfs {
    /// Mounts one at `dir`; `None` when skipped by `QUARRY_SKIP_MOUNT_TESTS=1`.
    fn mount(dir: &Path, bytes: u64) -> Option<Tmpfs> {
        if std::env::var_os("QUARRY_SKIP_MOUNT_TESTS").is_some() {
            eprintln!("SKIPPED: QUARRY_SKIP_MOUNT_TESTS is set, the disk-full test did not run");
            return None;
        }
        std::fs::create_dir_all(dir).unwrap();
        let size = format!("size={bytes}");
        let out = privileged(
            "mount",
            &["-t", "tmpfs", "-o", &size, "tmpfs", dir.to_str().unwrap()],
        );
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs {
                dir: dir.to_owned(),
            }),
            other => panic!(
                "the disk-full tests mount a tmpfs, which needs root or passwordless sudo \
                 ({other:?}); set QUARRY_SKIP_MOUNT_TESTS=1 to skip them"
            ),
        }
    }

    fn free_bytes(&self) -> u64 {
        let out = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&self.dir)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Fills the disk until `leave` bytes are free, with a file that [`Tmpfs::free`] deletes.
    fn fill(&self, leave: u64) {
        let mut file = std::fs::File::create(self.dir.join("filler")).unwrap();
        let chunk = vec![0u8; 64 << 10];
        while self.free_bytes() > leave {
            let n = (self.free_bytes() - leave).min(chunk.len() as u64) as usize;
            if file.write_all(&chunk[..n]).is_err() {
                break;
            }
            file.flush().unwrap();
        }
    }

    /// Deletes the filler: space returns.
    fn free(&self) {
        std::fs::remove_file(self.dir.join("filler")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = privileged("umount", &["-l", self.dir.to_str().unwrap()]);
    }
}

/// The disk fills up during `quarry index`: exit code 1 with the disk-full hint and no panic;
/// while it is full, `quarry status` either opens the store or says the disk is full; once
/// space returns, the store holds every acknowledged image and the next run completes.
#[test]
fn a_full_disk_stops_indexing_clearly_and_the_run_resumes_when_space_returns() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    scenes(&photos, 200, 22);
    let Some(disk) = Tmpfs::mount(&tmp.path().join("disk"), RESERVE_BYTES + (96 << 20)) else {
        return;
    };
    let store = disk.dir.join("store");
    // A first run creates the store on the empty disk; the disk then fills up.
    let first = tmp.path().join("first");
    std::fs::create_dir_all(first.join("images")).unwrap();
    for entry in std::fs::read_dir(photos.join("images")).unwrap().take(8) {
        let path = entry.unwrap().path();
        std::fs::rename(&path, first.join("images").join(path.file_name().unwrap())).unwrap();
    }
    let (code, mut acked, stderr) = index_run(&first, &store, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    disk.fill(RESERVE_BYTES + (1 << 20));
    let (code, more, stderr) = index_run(&photos, &store, &[]);
    acked.extend(more.iter().cloned());
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("hint: the disk holding the store is full"),
        "{stderr}"
    );
    assert!(
        !more.is_empty() && more.len() < 192,
        "the disk should fill part way through: {} of 192 acknowledged; {stderr}",
        more.len()
    );
    let status = Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args(["status", "--store", store.to_str().unwrap()])
        .output()
        .unwrap();
    let status_err = String::from_utf8_lossy(&status.stderr);
    assert!(
        status.status.success() || status_err.contains("the disk holding the store is full"),
        "status on a full disk: {status_err}"
    );
    // Another program fills the disk to the last byte: quarry refuses to open the store
    // (sled writes at open, and a write cut short by a full disk corrupts it), writing nothing.
    disk.free();
    disk.fill(0);
    let (code, none, stderr) = index_run(&photos, &store, &[]);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!((code, none.len()), (Some(1), 0), "{stderr}");
    assert!(
        stderr.contains("hint: the disk holding the store is full"),
        "{stderr}"
    );
    disk.free();
    nothing_acknowledged_lost(&store, &acked, "after the disk filled");
    let (code, _, stderr) = index_run(&photos, &store, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let library = Library::open_existing(&store).unwrap();
    assert_eq!(library.counts().unwrap().images, 200);
    assert_counts_agree(&library);
    eprintln!(
        "disk full: {} of 192 acknowledged before the disk filled, all kept",
        more.len()
    );
}

/// The disk fills up during a server's own indexing job: the job fails with the disk-full
/// message, the server keeps answering searches and health, and a job started once space
/// returns indexes the rest; after a clean stop the store agrees with itself.
#[test]
fn a_full_disk_fails_a_server_job_clearly_and_the_server_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let first = tmp.path().join("first");
    let later = tmp.path().join("later");
    scenes(&first, 16, 23);
    scenes(&later, 64, 24);
    let Some(disk) = Tmpfs::mount(&tmp.path().join("disk"), RESERVE_BYTES + (96 << 20)) else {
        return;
    };
    let store = disk.dir.join("store");
    let (code, _, stderr) = index_run(&first, &store, &[]);
    assert_eq!(code, Some(0), "{stderr}");
    let server = Server::spawn(
        &[
            "serve",
            "--store",
            store.to_str().unwrap(),
            "--model",
            &small_model(),
            "--token",
            "T",
        ],
        None,
        Duration::from_secs(60),
    );
    let auth = ("Authorization", "Bearer T");
    let json = ("Content-Type", "application/json");
    let body = serde_json::json!({"paths": [later.to_str().unwrap()]}).to_string();
    let wait_for_job = || loop {
        let (_, job) = server.call("GET", "/api/v1/index", &[], &[]);
        if job["state"] != "running" {
            return job;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    disk.fill(RESERVE_BYTES + (64 << 10));
    let (status, started) = server.call("POST", "/api/v1/index", &[auth, json], body.as_bytes());
    assert_eq!(status, 202, "{started}");
    let job = wait_for_job();
    assert_eq!(job["state"], "failed", "{job}");
    let message = job["message"].as_str().unwrap();
    assert!(
        message.contains("the disk holding the store is full"),
        "{message}"
    );
    // Still serving: health, a search, the stats.
    let (status, _) = server.call("GET", "/api/v1/health", &[], &[]);
    assert_eq!(status, 200);
    let (status, hits) = server.call("GET", "/api/v1/search?q=red%20circle&k=5", &[], &[]);
    assert_eq!(status, 200, "{hits}");
    assert!(!hits["hits"].as_array().unwrap().is_empty(), "{hits}");
    let (_, stats) = server.call("GET", "/api/v1/stats", &[], &[]);
    let before = stats["images"].as_u64().unwrap();
    assert!(
        before >= 16 + job["done"].as_u64().unwrap(),
        "{stats} {job}"
    );
    // Space returns: the same job completes the set.
    disk.free();
    let (status, started) = server.call("POST", "/api/v1/index", &[auth, json], body.as_bytes());
    assert_eq!(status, 202, "{started}");
    let job = wait_for_job();
    assert_eq!(job["state"], "done", "{job}");
    let (_, stats) = server.call("GET", "/api/v1/stats", &[], &[]);
    assert_eq!(stats["images"], 80, "{stats}");
    let (status, stderr) = server.stop();
    assert!(status.success(), "{stderr}");
    let library = Library::open_existing(&store).unwrap();
    assert_eq!(library.counts().unwrap().images, 80);
    assert_counts_agree(&library);
    for entry in std::fs::read_dir(later.join("images")).unwrap() {
        searchable(&library, &entry.unwrap().path()).unwrap();
    }
    eprintln!("server job on a full disk: {before} images before space returned, 80 after");
}
