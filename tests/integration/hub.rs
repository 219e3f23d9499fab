//! Models named by hub id, resolved the way a user's machine would: against a local HTTP server
//! that answers as huggingface.co does (`/api/models/{repo}/revision/{rev}` for the file list,
//! `/{repo}/resolve/{rev}/{file}` with `x-repo-commit`, `etag`/`x-linked-etag` and range
//! requests), and a Hugging Face cache laid out as huggingface_hub writes it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::support::retrieval_fixtures;

const COMMIT: &str = "5d3c2f1e0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d";

/// One repository the fake hub serves.
struct FakeRepo {
    /// Branch and tag names that resolve to [`COMMIT`] (the commit itself always does).
    aliases: Vec<&'static str>,
    files: Vec<(String, Vec<u8>)>,
    /// A file whose first full download is cut off halfway.
    cut_once: Option<String>,
    /// A file served with a SHA-256 etag that its bytes do not have.
    lying_etag: Option<String>,
    /// A gated repository: answered only with `Authorization: Bearer {token}`.
    token: Option<&'static str>,
}

/// What the fake hub was asked: "GET path [range]".
type Log = Arc<Mutex<Vec<String>>>;

struct FakeHub {
    endpoint: String,
    log: Log,
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

impl FakeHub {
    fn start(repos: HashMap<&'static str, FakeRepo>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let log: Log = Arc::default();
        let repos = Arc::new(Mutex::new(repos));
        let thread_log = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let _ = answer(stream, &repos, &thread_log);
            }
        });
        Self { endpoint, log }
    }

    fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

fn answer(
    mut stream: TcpStream,
    repos: &Mutex<HashMap<&'static str, FakeRepo>>,
    log: &Log,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut range = None;
    let mut authorization = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_string());
            }
            if name.eq_ignore_ascii_case("authorization") {
                authorization = Some(value.trim().to_string());
            }
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    log.lock()
        .unwrap()
        .push(format!("GET {path} {}", range.clone().unwrap_or_default()));
    let not_found = |stream: &mut TcpStream| {
        stream.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 20\r\nConnection: close\r\n\r\nRepository not found",
        )
    };
    let mut repos = repos.lock().unwrap();
    let resolves = |repo: &FakeRepo, rev: &str| rev == COMMIT || repo.aliases.contains(&rev);
    let gated = |repo: &FakeRepo| {
        repo.token
            .is_some_and(|t| authorization.as_deref() != Some(&format!("Bearer {t}")))
    };
    let unauthorized = |stream: &mut TcpStream| {
        stream.write_all(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 12\r\nConnection: close\r\n\r\nAccess to it",
        )
    };

    if let Some(rest) = path.strip_prefix("/api/models/") {
        let Some((name, rev)) = rest.split_once("/revision/") else {
            return not_found(&mut stream);
        };
        let Some(repo) = repos.get(name).filter(|r| resolves(r, rev)) else {
            return not_found(&mut stream);
        };
        if gated(repo) {
            return unauthorized(&mut stream);
        }
        let siblings: Vec<_> = repo
            .files
            .iter()
            .map(|(f, _)| serde_json::json!({ "rfilename": f }))
            .collect();
        let body = serde_json::json!({ "sha": COMMIT, "siblings": siblings }).to_string();
        return write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
    // /{org}/{name}/resolve/{rev}/{file}
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    if parts.len() != 5 || parts[2] != "resolve" {
        return not_found(&mut stream);
    }
    let name = format!("{}/{}", parts[0], parts[1]);
    let (rev, file) = (parts[3], parts[4]);
    let Some(repo) = repos.get_mut(name.as_str()).filter(|r| resolves(r, rev)) else {
        return not_found(&mut stream);
    };
    let Some(bytes) = repo
        .files
        .iter()
        .find(|(f, _)| f == file)
        .map(|(_, b)| b.clone())
    else {
        return not_found(&mut stream);
    };
    let size = bytes.len();
    let (start, end) = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
        Some(r) => {
            let (a, b) = r.split_once('-').unwrap();
            let a: usize = a.parse().unwrap();
            let b: usize = if b.is_empty() {
                size - 1
            } else {
                b.parse().unwrap()
            };
            (a, b.min(size - 1))
        }
        None => (0, size - 1),
    };
    // LFS files (weights) carry their SHA-256 as the linked etag; small files a git hash.
    let lfs = file.ends_with(".safetensors");
    let etag = if repo.lying_etag.as_deref() == Some(file) {
        sha256_hex(b"something else")
    } else if lfs {
        sha256_hex(&bytes)
    } else {
        sha256_hex(&bytes)[..40].to_string()
    };
    let etag_header = if lfs { "X-Linked-Etag" } else { "ETag" };
    let body = &bytes[start..=end];
    write!(
        stream,
        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{end}/{size}\r\n\
         X-Repo-Commit: {COMMIT}\r\n{etag_header}: \"{etag}\"\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    let cut = end > start && repo.cut_once.as_deref() == Some(file);
    if cut {
        repo.cut_once = None;
        stream.write_all(&body[..body.len() / 2])?;
        stream.flush()?;
        return stream.shutdown(std::net::Shutdown::Both);
    }
    stream.write_all(body)
}

/// The files of a small sharded checkpoint as a hub repository holds them, plus a PyTorch copy
/// quarry must not fetch.
fn small_b_files() -> Vec<(String, Vec<u8>)> {
    let dir = retrieval_fixtures().join("small_b");
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with("reference"))
        .map(|n| (n.clone(), std::fs::read(dir.join(&n)).unwrap()))
        .collect();
    files.push(("pytorch_model.bin".into(), vec![0u8; 1000]));
    files.push((
        ".gitattributes".into(),
        b"*.safetensors filter=lfs".to_vec(),
    ));
    files.sort();
    files
}

fn repo(cut_once: Option<&str>, lying_etag: Option<&str>) -> FakeRepo {
    FakeRepo {
        aliases: vec!["main", "v1.0"],
        files: small_b_files(),
        cut_once: cut_once.map(String::from),
        lying_etag: lying_etag.map(String::from),
        token: None,
    }
}

#[test]
fn a_gated_repository_needs_the_token_from_hf_token_or_the_saved_token_file() {
    let gated = FakeRepo {
        token: Some("hf_secret"),
        ..repo(None, None)
    };
    let hub = FakeHub::start(HashMap::from([("org/gated", gated)]));
    let home = tempfile::tempdir().unwrap();
    let out = embed_text(home.path(), &hub.endpoint, false, "org/gated");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("401") && stderr(&out).contains("HF_TOKEN"),
        "{}",
        stderr(&out)
    );
    // The token huggingface-cli login saves in HF_HOME/token.
    std::fs::write(home.path().join("token"), "hf_secret\n").unwrap();
    let out = embed_text(home.path(), &hub.endpoint, false, "org/gated");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, local_embedding());
    // HF_TOKEN, with a fresh cache.
    let fresh = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args([
            "embed-text",
            "--model",
            "org/gated",
            "--json",
            "a red circle",
        ])
        .env("HF_HOME", fresh.path())
        .env("HF_ENDPOINT", &hub.endpoint)
        .env("HF_TOKEN", "hf_secret")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_HUB_CACHE")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

fn quarry(hf_home: &Path, endpoint: &str, offline: bool, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quarry"));
    cmd.args(args)
        .env("HF_HOME", hf_home)
        .env("HF_ENDPOINT", endpoint)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE");
    if offline {
        cmd.env("HF_HUB_OFFLINE", "1");
    }
    cmd.output().unwrap()
}

fn embed_text(hf_home: &Path, endpoint: &str, offline: bool, model: &str) -> Output {
    quarry(
        hf_home,
        endpoint,
        offline,
        &["embed-text", "--model", model, "--json", "a red circle"],
    )
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// What the local folder gives: the reference for every hub run.
fn local_embedding() -> Vec<u8> {
    let dir = retrieval_fixtures().join("small_b");
    let out = Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args([
            "embed-text",
            "--model",
            dir.to_str().unwrap(),
            "--json",
            "a red circle",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    out.stdout
}

/// An address nothing listens on: any network use fails.
fn dead_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

fn snapshot(hf_home: &Path, repo: &str) -> PathBuf {
    hf_home
        .join("hub")
        .join(format!("models--{}", repo.replace('/', "--")))
        .join("snapshots")
        .join(COMMIT)
}

#[test]
fn a_hub_name_downloads_once_then_runs_offline_from_the_cache() {
    let hub = FakeHub::start(HashMap::from([("org/tiny", repo(None, None))]));
    let home = tempfile::tempdir().unwrap();
    let want = local_embedding();

    let out = embed_text(home.path(), &hub.endpoint, false, "org/tiny");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, want, "the downloaded model is the local one");
    let requests = hub.requests();
    assert!(
        requests
            .iter()
            .all(|r| !r.contains("pytorch_model.bin") && !r.contains(".gitattributes")),
        "only files quarry reads are fetched: {requests:#?}"
    );
    for shard in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        assert_eq!(
            requests
                .iter()
                .filter(|r| r.contains(shard) && !r.ends_with("bytes=0-0"))
                .count(),
            1,
            "{shard} downloaded once: {requests:#?}"
        );
    }
    // The layout huggingface_hub reads: refs/main names the commit, snapshot files link to blobs.
    let folder = home.path().join("hub/models--org--tiny");
    assert_eq!(
        std::fs::read_to_string(folder.join("refs/main"))
            .unwrap()
            .trim(),
        COMMIT
    );
    let config = snapshot(home.path(), "org/tiny").join("config.json");
    assert!(std::fs::symlink_metadata(&config)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(std::fs::canonicalize(&config)
        .unwrap()
        .starts_with(std::fs::canonicalize(folder.join("blobs")).unwrap()));

    // Again, online: nothing is downloaded again (the cache answers without a request).
    let before = hub.requests().len();
    let out = embed_text(home.path(), &hub.endpoint, false, "org/tiny");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        hub.requests().len(),
        before,
        "a complete cached model needs no network"
    );

    // Offline, with no hub reachable at all.
    let out = embed_text(home.path(), &dead_endpoint(), true, "org/tiny");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, want);
}

#[test]
fn an_interrupted_download_resumes_and_never_leaves_half_a_file_in_place() {
    let shard = "model-00002-of-00002.safetensors";
    let hub = FakeHub::start(HashMap::from([("org/tiny", repo(Some(shard), None))]));
    let home = tempfile::tempdir().unwrap();

    let out = embed_text(home.path(), &hub.endpoint, false, "org/tiny");
    assert_eq!(
        out.status.code(),
        Some(2),
        "a network failure: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains(shard) && stderr(&out).contains("resumes"),
        "{}",
        stderr(&out)
    );
    assert!(
        !snapshot(home.path(), "org/tiny").join(shard).exists(),
        "no half file where a reader looks"
    );
    let blobs = home.path().join("hub/models--org--tiny/blobs");
    let partial: Vec<_> = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "part"))
        .collect();
    assert_eq!(partial.len(), 1, "what arrived is kept: {partial:?}");
    let arrived = std::fs::metadata(&partial[0]).unwrap().len();
    assert!(arrived > 0);

    let out = embed_text(home.path(), &hub.endpoint, false, "org/tiny");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, local_embedding());
    let resumed = format!("bytes={arrived}-");
    assert!(
        hub.requests()
            .iter()
            .any(|r| r.contains(shard) && r.ends_with(&resumed)),
        "the second run asks only for the rest ({resumed}): {:#?}",
        hub.requests()
    );
}

#[test]
fn revisions_prefilled_caches_and_bad_names() {
    let hub = FakeHub::start(HashMap::from([
        ("org/tiny", repo(None, None)),
        (
            "org/liar",
            repo(None, Some("model-00001-of-00002.safetensors")),
        ),
    ]));
    let home = tempfile::tempdir().unwrap();
    let want = local_embedding();

    // A tag: fetched under its commit, and the tag's ref is recorded.
    let out = embed_text(home.path(), &hub.endpoint, false, "org/tiny@v1.0");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, want);
    assert!(hub.requests().iter().any(|r| r.contains("/resolve/v1.0/")));
    let refs = home.path().join("hub/models--org--tiny/refs/v1.0");
    assert_eq!(std::fs::read_to_string(refs).unwrap().trim(), COMMIT);
    // A commit id works offline: snapshots/{commit} is read directly.
    let out = embed_text(
        home.path(),
        &dead_endpoint(),
        true,
        &format!("org/tiny@{COMMIT}"),
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // Unknown repository, unknown revision: the user's mistake (exit 1), said plainly.
    for (name, says) in [
        ("org/missing", "no model org/missing"),
        ("org/tiny@nope", "no model org/tiny@nope"),
    ] {
        let out = embed_text(home.path(), &hub.endpoint, false, name);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(says) && stderr(&out).contains("404"),
            "{name}: {}",
            stderr(&out)
        );
    }
    // Offline and not cached.
    let out = embed_text(home.path(), &dead_endpoint(), true, "org/other");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("HF_HUB_OFFLINE")
            && stderr(&out).contains("not in the Hugging Face cache"),
        "{}",
        stderr(&out)
    );
    // A blob that does not hash to its etag is refused and removed, never used.
    let out = embed_text(home.path(), &hub.endpoint, false, "org/liar");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("damaged"), "{}", stderr(&out));
    assert!(!snapshot(home.path(), "org/liar")
        .join("model-00001-of-00002.safetensors")
        .exists());

    // A cache written by Python's huggingface_hub (relative links into blobs/), used offline.
    let py_home = tempfile::tempdir().unwrap();
    let folder = py_home.path().join("hub/models--Salesforce--blip2-tiny");
    std::fs::create_dir_all(folder.join("blobs")).unwrap();
    std::fs::create_dir_all(folder.join("refs")).unwrap();
    let snap = folder.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snap).unwrap();
    for (name, bytes) in small_b_files() {
        let blob = sha256_hex(&bytes);
        std::fs::write(folder.join("blobs").join(&blob), &bytes).unwrap();
        std::os::unix::fs::symlink(Path::new("../../blobs").join(&blob), snap.join(&name)).unwrap();
    }
    std::fs::write(folder.join("refs/main"), COMMIT).unwrap();
    let out = embed_text(
        py_home.path(),
        &dead_endpoint(),
        true,
        "Salesforce/blip2-tiny",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, want);

    // A local folder of the same shape wins over the hub name.
    let cwd = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(cwd.path().join("org")).unwrap();
    std::os::unix::fs::symlink(
        retrieval_fixtures().join("small_b"),
        cwd.path().join("org/local"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_quarry"))
        .current_dir(cwd.path())
        .args([
            "embed-text",
            "--model",
            "org/local",
            "--json",
            "a red circle",
        ])
        .env("HF_HOME", home.path())
        .env("HF_ENDPOINT", dead_endpoint())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, want);
}
