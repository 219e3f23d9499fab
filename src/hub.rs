//! Models named by their Hugging Face hub id (`Salesforce/blip2-itm-vit-g`, `name@revision`).
//!
//! A name is resolved through the cache that transformers and `huggingface-cli` fill
//! (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`), so a model a user
//! already downloaded with Python is found without a network; its layout is
//! `models--{org}--{name}/refs/{revision}` (the commit a branch or tag points at),
//! `snapshots/{commit}/{file}` (links to `blobs/{etag}`). What is missing is downloaded with
//! `hf-hub` into that same layout (`HF_ENDPOINT`, `HF_TOKEN` or the saved token honoured), with
//! a progress bar, only the files quarry reads (configs, tokenizers, safetensors weights; not
//! PyTorch `.bin` copies). A download goes to `blobs/{etag}.sync.part` and is renamed into
//! place when complete, so an interrupted one never leaves half a file where a reader looks,
//! and the next run resumes it from where it stopped (an HTTP range request). Weights whose
//! etag is their SHA-256 (the hub's LFS files) are checked against it before use.
//!
//! A local folder always wins over a hub name: `--model Salesforce/blip2-itm-vit-g` means the
//! folder of that name when one exists (as transformers' `from_pretrained` does).
//! `HF_HUB_OFFLINE=1` allows the cache only.

use std::io::Read;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Repo, RepoType};
use sha2::{Digest, Sha256};

/// Where hub names are looked up and fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSettings {
    /// The hub cache folder (the one holding `models--…` folders).
    pub cache: PathBuf,
    /// The hub's address, `https://huggingface.co` unless `HF_ENDPOINT` says otherwise.
    pub endpoint: String,
    /// A bearer token for gated or private repositories.
    pub token: Option<String>,
    /// Only the cache may be used (`HF_HUB_OFFLINE`).
    pub offline: bool,
}

impl HubSettings {
    /// Settings from the environment variables huggingface_hub reads.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let hf_home = var("HF_HOME").map(PathBuf::from).or_else(|| {
            var("XDG_CACHE_HOME")
                .map(|x| PathBuf::from(x).join("huggingface"))
                .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache/huggingface")))
        });
        let cache = var("HF_HUB_CACHE")
            .map(PathBuf::from)
            .or_else(|| hf_home.as_ref().map(|h| h.join("hub")))
            .unwrap_or_else(|| PathBuf::from(".cache/huggingface/hub"));
        let token = var("HF_TOKEN").or_else(|| {
            let file = var("HF_TOKEN_PATH")
                .map(PathBuf::from)
                .or_else(|| hf_home.as_ref().map(|h| h.join("token")))?;
            std::fs::read_to_string(file)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        });
        Self {
            cache,
            endpoint: var("HF_ENDPOINT")
                .unwrap_or_else(|| "https://huggingface.co".into())
                .trim_end_matches('/')
                .to_string(),
            token,
            offline,
        }
    }
}

/// A model repository on the hub and the revision wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubModelId {
    /// `org/name`.
    pub repo: String,
    /// A branch, tag or commit; `main` unless given after `@`.
    pub revision: String,
}

impl HubModelId {
    /// Parses `org/name` or `org/name@revision`; `None` for anything else (a path).
    pub fn parse(spec: &str) -> Option<Self> {
        let (repo, revision) = match spec.split_once('@') {
            Some((repo, rev)) => (repo, rev),
            None => (spec, "main"),
        };
        let (org, name) = repo.split_once('/')?;
        let part_ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 96
                && !p.starts_with(['.', '-'])
                && !p.ends_with('.')
                && !p.contains("..")
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        let rev_ok = !revision.is_empty()
            && revision.len() <= 128
            && !revision.contains("..")
            && !revision.starts_with('/')
            && revision
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
        (part_ok(org) && part_ok(name) && rev_ok).then(|| Self {
            repo: repo.to_string(),
            revision: revision.to_string(),
        })
    }

    /// Whether the revision is a full commit id (looked up in `snapshots/` directly).
    fn revision_is_commit(&self) -> bool {
        self.revision.len() == 40 && self.revision.chars().all(|c| c.is_ascii_hexdigit())
    }

    /// `models--org--name` in the cache.
    fn cache_folder(&self, cache: &Path) -> PathBuf {
        cache.join(format!("models--{}", self.repo.replace('/', "--")))
    }
}

impl std::fmt::Display for HubModelId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.revision == "main" {
            f.write_str(&self.repo)
        } else {
            write!(f, "{}@{}", self.repo, self.revision)
        }
    }
}

/// Why a hub name could not give a model folder.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// Offline, and the cache does not hold the model.
    #[error(
        "{id} is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE is set: run once \
         with network access, or `huggingface-cli download {repo}`, or pass a local folder"
    )]
    NotCached {
        /// The model asked for (`org/name[@revision]`).
        id: String,
        /// The cache folder searched.
        cache: PathBuf,
        /// The repository, for the suggested command.
        repo: String,
    },
    /// The hub says the repository or revision does not exist (or is private without a token).
    #[error("no model {id} on {endpoint} (HTTP {status}): check the name and revision{hint}")]
    NotFound {
        /// The model asked for (`org/name[@revision]`).
        id: String,
        /// The hub asked.
        endpoint: String,
        /// The HTTP status.
        status: u16,
        /// What else could explain it.
        hint: &'static str,
    },
    /// The repository has no weights quarry can read.
    #[error("{id} has no .safetensors weights (quarry reads safetensors only; files: {files})")]
    NoSafetensors {
        /// The model asked for (`org/name[@revision]`).
        id: String,
        /// What the repository holds.
        files: String,
    },
    /// A downloaded file does not hash to its etag.
    #[error(
        "{file} of {id} is damaged (SHA-256 {actual}, the hub says {expected}); it was removed: \
         run again to download it anew"
    )]
    Corrupt {
        /// The model (`org/name[@revision]`).
        id: String,
        /// The file.
        file: String,
        /// What the hub's etag says.
        expected: String,
        /// What the bytes hash to.
        actual: String,
    },
    /// The network or the hub failed; a partial download is kept and resumed next time.
    #[error("downloading {what} of {id} from {endpoint} failed: {reason} ({hint})")]
    Download {
        /// The model (`org/name[@revision]`).
        id: String,
        /// The file or request.
        what: String,
        /// The hub asked.
        endpoint: String,
        /// The underlying error.
        reason: String,
        /// What happens to what arrived, and the offline alternative.
        hint: &'static str,
    },
    /// The cache folder could not be read or written.
    #[error("Hugging Face cache {path}: {source}")]
    Cache {
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl HubError {
    /// Whether the user can fix it (a name, a revision, being offline) rather than a fault here.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            HubError::NotCached { .. } | HubError::NotFound { .. } | HubError::NoSafetensors { .. }
        )
    }
}

/// The folder of a `--model` argument: the folder itself when it exists or is not a hub name,
/// else the hub snapshot (from the cache, downloaded when missing).
pub fn resolve_model_folder(spec: &Path, settings: &HubSettings) -> Result<PathBuf, HubError> {
    if spec.is_dir() {
        return Ok(spec.to_path_buf());
    }
    let Some(id) = spec.to_str().and_then(HubModelId::parse) else {
        return Ok(spec.to_path_buf());
    };
    if let Some(snapshot) = cached_snapshot(&id, &settings.cache) {
        return Ok(snapshot);
    }
    if settings.offline {
        return Err(HubError::NotCached {
            cache: settings.cache.clone(),
            repo: id.repo.clone(),
            id: id.to_string(),
        });
    }
    download(&id, settings)
}

/// The cached snapshot of `id` when it holds a complete model (a config and every weight file).
pub fn cached_snapshot(id: &HubModelId, cache: &Path) -> Option<PathBuf> {
    let folder = id.cache_folder(cache);
    let commit = if id.revision_is_commit() {
        id.revision.clone()
    } else {
        std::fs::read_to_string(folder.join("refs").join(&id.revision))
            .ok()?
            .trim()
            .to_string()
    };
    let snapshot = folder.join("snapshots").join(commit);
    snapshot_complete(&snapshot).then_some(snapshot)
}

/// A config and weights: one `model.safetensors`, or an index whose every shard is present.
fn snapshot_complete(dir: &Path) -> bool {
    if !dir.join("config.json").is_file() {
        return false;
    }
    if dir.join("model.safetensors").is_file() {
        return true;
    }
    let Ok(index) = std::fs::read_to_string(dir.join("model.safetensors.index.json")) else {
        return false;
    };
    let Ok(index) = serde_json::from_str::<serde_json::Value>(&index) else {
        return false;
    };
    let Some(map) = index.get("weight_map").and_then(|m| m.as_object()) else {
        return false;
    };
    !map.is_empty()
        && map
            .values()
            .filter_map(|v| v.as_str())
            .all(|shard| dir.join(shard).is_file())
}

/// Whether quarry reads this repository file: top-level configs, tokenizers and safetensors.
fn wanted(file: &str) -> bool {
    !file.contains('/')
        && (file.ends_with(".safetensors")
            || file.ends_with(".json")
            || file.ends_with(".txt")
            || file.ends_with(".model"))
}

fn download(id: &HubModelId, settings: &HubSettings) -> Result<PathBuf, HubError> {
    let failed = |what: &str, e: ApiError| classify(id, settings, what, e);
    let api = ApiBuilder::new()
        .with_cache_dir(settings.cache.clone())
        .with_endpoint(settings.endpoint.clone())
        .with_token(settings.token.clone())
        .with_progress(true)
        .build()
        .map_err(|e| failed("the client", e))?;
    let repo = api.repo(Repo::with_revision(
        id.repo.clone(),
        RepoType::Model,
        id.revision.clone(),
    ));
    let info = repo.info().map_err(|e| failed("the file list", e))?;
    let files: Vec<String> = info
        .siblings
        .iter()
        .map(|s| s.rfilename.clone())
        .filter(|f| wanted(f))
        .collect();
    if !files.iter().any(|f| f.ends_with(".safetensors")) {
        return Err(HubError::NoSafetensors {
            id: id.to_string(),
            files: info
                .siblings
                .iter()
                .map(|s| s.rfilename.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let snapshot = id
        .cache_folder(&settings.cache)
        .join("snapshots")
        .join(&info.sha);
    eprintln!(
        "downloading {id} ({} files) from {} into {}",
        files.len(),
        settings.endpoint,
        settings.cache.display()
    );
    for file in &files {
        if snapshot.join(file).is_file() {
            continue;
        }
        let path = repo.download(file).map_err(|e| failed(file, e))?;
        verify_blob(id, file, &path)?;
    }
    // The ref the name resolves through next time, offline (hf-hub writes it per file; this
    // also covers a snapshot that was complete already).
    let refs = id.cache_folder(&settings.cache).join("refs");
    if !id.revision_is_commit() {
        let write = std::fs::create_dir_all(refs.join(&id.revision).parent().unwrap_or(&refs))
            .and_then(|()| std::fs::write(refs.join(&id.revision), &info.sha));
        write.map_err(|source| HubError::Cache {
            path: refs.clone(),
            source,
        })?;
    }
    if !snapshot_complete(&snapshot) {
        return Err(HubError::NoSafetensors {
            id: id.to_string(),
            files: files.join(", "),
        });
    }
    Ok(snapshot)
}

/// Checks a downloaded file against its blob name when that is a SHA-256 (LFS files); a
/// mismatching blob and its snapshot link are removed so the next run downloads it again.
fn verify_blob(id: &HubModelId, file: &str, path: &Path) -> Result<(), HubError> {
    let blob = std::fs::canonicalize(path).map_err(|source| HubError::Cache {
        path: path.to_path_buf(),
        source,
    })?;
    let Some(expected) = blob
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| n.len() == 64 && n.chars().all(|c| c.is_ascii_hexdigit()))
        .map(str::to_ascii_lowercase)
    else {
        return Ok(());
    };
    let io = |source| HubError::Cache {
        path: blob.clone(),
        source,
    };
    let mut reader = std::fs::File::open(&blob).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let actual = format!("{:x}", hasher.finalize());
    if actual == expected {
        return Ok(());
    }
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(&blob);
    Err(HubError::Corrupt {
        id: id.to_string(),
        file: file.to_string(),
        expected,
        actual,
    })
}

/// Turns hf-hub's error into one that says what to do.
fn classify(id: &HubModelId, settings: &HubSettings, what: &str, e: ApiError) -> HubError {
    if let ApiError::RequestError(ref boxed) = e {
        if let ureq::Error::Status(status @ (401 | 403 | 404), _) = **boxed {
            return HubError::NotFound {
                id: id.to_string(),
                endpoint: settings.endpoint.clone(),
                status,
                hint: if settings.token.is_some() {
                    " (a private or gated repository also needs access granted to your token)"
                } else {
                    " (a private or gated repository also needs HF_TOKEN)"
                },
            };
        }
    }
    HubError::Download {
        id: id.to_string(),
        what: what.to_string(),
        endpoint: settings.endpoint.clone(),
        reason: e.to_string(),
        hint: if what.starts_with("the ") {
            "HF_HUB_OFFLINE=1 uses the cache only"
        } else {
            "what arrived is kept and the next run resumes; HF_HUB_OFFLINE=1 uses the cache only"
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_are_org_slash_name_with_an_optional_revision() {
        let id = HubModelId::parse("Salesforce/blip2-itm-vit-g").unwrap();
        assert_eq!(
            (id.repo.as_str(), id.revision.as_str()),
            ("Salesforce/blip2-itm-vit-g", "main")
        );
        let id = HubModelId::parse("Salesforce/blip2-opt-2.7b@refs/pr/3").unwrap();
        assert_eq!(id.revision, "refs/pr/3");
        assert_eq!(id.to_string(), "Salesforce/blip2-opt-2.7b@refs/pr/3");
        for path in [
            "models/blip2",
            "/abs/path",
            "./models",
            "../x/y",
            "a/b/c",
            "org/",
            "/name",
            "org/name@",
            "org/na me",
            "org/name@../../etc",
            "models",
        ] {
            let parsed = HubModelId::parse(path);
            // "models/blip2" has the shape of a hub id; it is a path only when the folder exists,
            // which resolve_model_folder checks first.
            if path != "models/blip2" {
                assert_eq!(parsed, None, "{path}");
            }
        }
    }

    #[test]
    fn the_cache_layout_is_read_as_huggingface_hub_writes_it() {
        let cache = tempfile::tempdir().unwrap();
        let id = HubModelId::parse("org/tiny").unwrap();
        let folder = cache.path().join("models--org--tiny");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let snap = folder.join("snapshots").join(commit);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(folder.join("refs")).unwrap();
        std::fs::write(folder.join("refs/main"), format!("{commit}\n")).unwrap();
        assert_eq!(cached_snapshot(&id, cache.path()), None, "no config yet");
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        std::fs::write(
            snap.join("model.safetensors.index.json"),
            r#"{"weight_map": {"a": "m-1.safetensors", "b": "m-2.safetensors"}}"#,
        )
        .unwrap();
        std::fs::write(snap.join("m-1.safetensors"), "x").unwrap();
        assert_eq!(
            cached_snapshot(&id, cache.path()),
            None,
            "a shard is missing"
        );
        std::fs::write(snap.join("m-2.safetensors"), "x").unwrap();
        assert_eq!(cached_snapshot(&id, cache.path()), Some(snap.clone()));
        let by_commit = HubModelId::parse(&format!("org/tiny@{commit}")).unwrap();
        assert_eq!(cached_snapshot(&by_commit, cache.path()), Some(snap));
        let other_branch = HubModelId::parse("org/tiny@dev").unwrap();
        assert_eq!(cached_snapshot(&other_branch, cache.path()), None);
    }

    #[test]
    fn only_files_quarry_reads_are_fetched() {
        for f in [
            "config.json",
            "model.safetensors",
            "model-00001-of-00002.safetensors",
            "tokenizer.json",
            "vocab.txt",
            "spiece.model",
        ] {
            assert!(wanted(f), "{f}");
        }
        for f in [
            "pytorch_model.bin",
            "tf_model.h5",
            "onnx/model.json",
            ".gitattributes",
            "README.md",
        ] {
            assert!(!wanted(f), "{f}");
        }
    }
}
