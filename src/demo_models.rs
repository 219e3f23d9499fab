//! The built-in demo models: a small retrieval model and a small captioner, compiled into the
//! binary and unpacked into the cache folder on first use.
//!
//! Why they exist: the real BLIP-2 checkpoints are 4.7 GB (retrieval) and 15 GB (captioning)
//! downloads. A fresh install should run every command, and `quarry demo` should index,
//! caption and serve sample scenes, before anyone downloads anything; so a model small enough
//! to ship inside the binary (trained on the synthetic scenes of [`crate::synth`]) is the
//! default of every command that takes `--model`.
//!
//! Why they are unpacked to disk rather than read from memory: the only code that reads a model
//! folder ([`crate::checkpoint`]) works on files — it memory-maps `model.safetensors` and reads
//! the tokenizer and configs by path — exactly as for a downloaded checkpoint, so the demo
//! model takes the same, tested path as a real one.
//!
//! How: each model unpacks into `models/demo-<kind>-<hash>` in quarry's cache folder
//! ([`crate::cache_dir::cache_dir`]), where `<hash>` is the xxh3 of the embedded files. A new
//! quarry with other demo weights therefore gets a new folder and never reads stale files. The
//! files are written into a temporary sibling folder, fsynced and renamed into place in one
//! step, so a folder under the final name is always complete: a crash leaves at most a
//! temporary folder (cleaned up later), and a second process unpacking at the same moment
//! either wins the rename or finds the winner's folder and uses it. A complete folder is
//! reused, never rewritten.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use xxhash_rust::xxh3::Xxh3;

use crate::cache_dir::cache_dir;

/// Temporary folders older than this are left behind by a crashed process and are removed.
const STALE_PARTIAL: Duration = Duration::from_secs(600);

/// Why a demo model could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum DemoModelError {
    /// Creating, writing or renaming a file of the unpacked folder failed.
    #[error(
        "cannot unpack the built-in demo {kind} model into {path}: {source}. Set \
         QUARRY_CACHE_DIR to a writable folder, or pass --model DIR with a downloaded model"
    )]
    Io {
        /// "retrieval" or "captioner".
        kind: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// One file of an embedded model folder.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedFile {
    /// File name inside the folder.
    pub name: &'static str,
    /// Its contents.
    pub bytes: &'static [u8],
}

/// A model folder compiled into the binary.
#[derive(Debug)]
pub struct EmbeddedModel {
    kind: &'static str,
    files: &'static [EmbeddedFile],
    hash: OnceLock<u64>,
}

macro_rules! embedded_folder {
    ($dir:literal: $($name:literal),+ $(,)?) => {
        &[$(EmbeddedFile {
            name: $name,
            bytes: include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"), "/models/demo/", $dir, "/", $name
            )),
        }),+]
    };
}

/// The demo retrieval model (`Blip2ForImageTextRetrieval`), from `models/demo/retrieval`.
pub static DEMO_RETRIEVAL: EmbeddedModel = EmbeddedModel::new(
    "retrieval",
    embedded_folder!("retrieval":
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "preprocessor_config.json",
        "itm_fusion.json",
        "search_fusion.json",
    ),
);

/// The demo captioner (`Blip2ForConditionalGeneration` with OPT), from `models/demo/captioner`.
pub static DEMO_CAPTIONER: EmbeddedModel = EmbeddedModel::new(
    "captioner",
    embedded_folder!("captioner":
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "preprocessor_config.json",
    ),
);

/// Where demo models are unpacked: `models` in quarry's cache folder.
pub fn demo_models_root() -> PathBuf {
    cache_dir().join("models")
}

/// The folder of the demo retrieval model, unpacked on first use (see the module docs).
pub fn demo_retrieval_dir() -> Result<PathBuf, DemoModelError> {
    DEMO_RETRIEVAL.unpack_into(&demo_models_root())
}

/// The folder of the demo captioner, unpacked on first use (see the module docs).
pub fn demo_captioner_dir() -> Result<PathBuf, DemoModelError> {
    DEMO_CAPTIONER.unpack_into(&demo_models_root())
}

/// Distinguishes the temporary folders of threads of one process.
static UNPACK_SEQUENCE: AtomicU64 = AtomicU64::new(0);

impl EmbeddedModel {
    /// A model folder made of `files`; `kind` names it in folder names and messages.
    pub const fn new(kind: &'static str, files: &'static [EmbeddedFile]) -> Self {
        Self {
            kind,
            files,
            hash: OnceLock::new(),
        }
    }

    /// "retrieval" or "captioner".
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The embedded files.
    pub fn files(&self) -> &'static [EmbeddedFile] {
        self.files
    }

    /// xxh3 over every file's name, length and bytes (computed once).
    pub fn content_hash(&self) -> u64 {
        *self.hash.get_or_init(|| {
            let mut h = Xxh3::new();
            for f in self.files {
                h.update(f.name.as_bytes());
                h.update(&[0]);
                h.update(&(f.bytes.len() as u64).to_le_bytes());
                h.update(f.bytes);
            }
            h.digest()
        })
    }

    /// The unpacked folder's name: `demo-<kind>-<16 hex digits of the hash>`.
    pub fn folder_name(&self) -> String {
        format!("demo-{}-{:016x}", self.kind, self.content_hash())
    }

    /// Unpacks the files into `root/<folder_name>` unless a complete folder is already there,
    /// and returns that folder. Safe against crashes and concurrent callers (module docs).
    pub fn unpack_into(&self, root: &Path) -> Result<PathBuf, DemoModelError> {
        let name = self.folder_name();
        let target = root.join(&name);
        if self.is_complete(&target) {
            return Ok(target);
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            let kind = self.kind;
            move |source| DemoModelError::Io { kind, path, source }
        };
        fs::create_dir_all(root).map_err(io(root))?;
        remove_stale_partials(root, &name);
        let unique = format!(
            "{}-{}-{}",
            std::process::id(),
            UNPACK_SEQUENCE.fetch_add(1, Ordering::Relaxed),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        );
        // A folder appears under the final name only complete (by rename), so one that exists
        // now was either just renamed into place by a concurrent caller (complete: use it) or
        // damaged from outside (edited, truncated): move that aside in one step, so that no
        // reader sees it half-deleted, and rewrite it.
        if self.is_complete(&target) {
            return Ok(target);
        }
        if target.exists() {
            let damaged = root.join(format!(".{name}.damaged-{unique}"));
            match fs::rename(&target, &damaged) {
                Ok(()) => {
                    let _ = fs::remove_dir_all(&damaged);
                }
                // Another process moved it first.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&target)(e)),
            }
        }
        let partial = root.join(format!(".{name}.partial-{unique}"));
        if let Err(e) = self.write_files(&partial) {
            let _ = fs::remove_dir_all(&partial);
            return Err(e);
        }
        match fs::rename(&partial, &target) {
            Ok(()) => {
                sync_dir(root);
                Ok(target)
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&partial);
                // A concurrent process renamed its complete copy into place first.
                if self.is_complete(&target) {
                    Ok(target)
                } else {
                    Err(io(&target)(e))
                }
            }
        }
    }

    /// Whether `dir` holds these very files, byte for byte: the demo model passed by path
    /// (`--model models/demo/retrieval`, or an unpacked copy) rather than by default. Lengths
    /// are compared first, so a real checkpoint's gigabytes are never read.
    pub fn is_copy_in(&self, dir: &Path) -> bool {
        self.is_complete(dir)
            && self
                .files
                .iter()
                .all(|f| fs::read(dir.join(f.name)).is_ok_and(|bytes| bytes == f.bytes))
    }

    /// Whether `dir` holds every file with its embedded length. (Lengths, not contents: the
    /// folder name already carries the content hash, and only an outside edit could change a
    /// file without changing its length; reading 20 MB on every command to rule that out would
    /// cost more than it protects.)
    fn is_complete(&self, dir: &Path) -> bool {
        self.files.iter().all(|f| {
            fs::metadata(dir.join(f.name))
                .is_ok_and(|m| m.is_file() && m.len() == f.bytes.len() as u64)
        })
    }

    fn write_files(&self, dir: &Path) -> Result<(), DemoModelError> {
        let io = |path: PathBuf| {
            let kind = self.kind;
            move |source| DemoModelError::Io { kind, path, source }
        };
        fs::create_dir(dir).map_err(io(dir.to_path_buf()))?;
        for f in self.files {
            let path = dir.join(f.name);
            let mut file = fs::File::create(&path).map_err(io(path.clone()))?;
            file.write_all(f.bytes).map_err(io(path.clone()))?;
            file.sync_all().map_err(io(path))?;
        }
        sync_dir(dir);
        Ok(())
    }
}

/// Makes a folder's entries durable (a no-op where folders cannot be opened, e.g. Windows).
fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Removes temporary folders of `name` that a crashed process left behind.
fn remove_stale_partials(root: &Path, name: &str) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    let prefixes = [format!(".{name}.partial-"), format!(".{name}.damaged-")];
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        if !prefixes.iter().any(|p| file_name.starts_with(p.as_str())) {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_PARTIAL);
        if old {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static SMALL: EmbeddedModel = EmbeddedModel::new(
        "test",
        &[
            EmbeddedFile {
                name: "config.json",
                bytes: b"{\"a\": 1}",
            },
            EmbeddedFile {
                name: "model.safetensors",
                bytes: &[7; 4096],
            },
        ],
    );

    fn assert_complete(dir: &Path) {
        assert_eq!(fs::read(dir.join("config.json")).unwrap(), b"{\"a\": 1}");
        assert_eq!(
            fs::read(dir.join("model.safetensors")).unwrap(),
            vec![7; 4096]
        );
    }

    #[test]
    fn unpacks_once_under_a_content_named_folder_and_reuses_it() {
        let root = tempfile::tempdir().unwrap();
        let dir = SMALL.unpack_into(root.path()).unwrap();
        assert_eq!(dir, root.path().join(SMALL.folder_name()));
        assert!(SMALL.folder_name().starts_with("demo-test-"));
        assert_complete(&dir);
        let before = fs::metadata(dir.join("model.safetensors"))
            .unwrap()
            .modified()
            .unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(SMALL.unpack_into(root.path()).unwrap(), dir);
        let after = fs::metadata(dir.join("model.safetensors"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(before, after, "a complete folder must not be rewritten");
        // Nothing but the folder is left in the root.
        let entries: Vec<_> = fs::read_dir(root.path()).unwrap().collect();
        assert_eq!(entries.len(), 1);
    }

    #[test]
    fn a_copy_is_recognised_by_its_bytes_not_its_name() {
        let root = tempfile::tempdir().unwrap();
        let unpacked = SMALL.unpack_into(root.path()).unwrap();
        assert!(SMALL.is_copy_in(&unpacked));
        // The same files anywhere else are the demo model too.
        let elsewhere = root.path().join("my-model");
        fs::create_dir(&elsewhere).unwrap();
        for f in SMALL.files() {
            fs::write(elsewhere.join(f.name), f.bytes).unwrap();
        }
        assert!(SMALL.is_copy_in(&elsewhere));
        // One changed byte (same length) or a missing file makes it another model.
        let mut weights = vec![7u8; 4096];
        weights[4095] = 8;
        fs::write(elsewhere.join("model.safetensors"), &weights).unwrap();
        assert!(!SMALL.is_copy_in(&elsewhere));
        fs::remove_file(unpacked.join("config.json")).unwrap();
        assert!(!SMALL.is_copy_in(&unpacked));
        assert!(!SMALL.is_copy_in(&root.path().join("absent")));
    }

    #[test]
    fn a_damaged_folder_is_replaced() {
        let root = tempfile::tempdir().unwrap();
        let dir = SMALL.unpack_into(root.path()).unwrap();
        fs::write(dir.join("model.safetensors"), b"truncated").unwrap();
        fs::remove_file(dir.join("config.json")).unwrap();
        assert_eq!(SMALL.unpack_into(root.path()).unwrap(), dir);
        assert_complete(&dir);
    }

    #[test]
    fn concurrent_unpacks_all_get_the_complete_folder() {
        let root = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| SMALL.unpack_into(root.path()).unwrap()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for d in &dirs {
            assert_eq!(d, &dirs[0]);
        }
        assert_complete(&dirs[0]);
        let leftovers: Vec<String> = fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(
            leftovers.is_empty(),
            "temporary folders left: {leftovers:?}"
        );
    }

    #[test]
    fn the_hash_covers_names_and_bytes() {
        static RENAMED: EmbeddedModel = EmbeddedModel::new(
            "test",
            &[
                EmbeddedFile {
                    name: "config2.json",
                    bytes: b"{\"a\": 1}",
                },
                EmbeddedFile {
                    name: "model.safetensors",
                    bytes: &[7; 4096],
                },
            ],
        );
        assert_ne!(SMALL.content_hash(), RENAMED.content_hash());
        assert_eq!(SMALL.content_hash(), SMALL.content_hash());
    }

    #[test]
    fn the_embedded_demo_folders_have_what_a_model_folder_needs() {
        for model in [&DEMO_RETRIEVAL, &DEMO_CAPTIONER] {
            for needed in ["config.json", "model.safetensors", "tokenizer.json"] {
                let file = model.files().iter().find(|f| f.name == needed);
                assert!(
                    file.is_some_and(|f| !f.bytes.is_empty()),
                    "{} lacks {needed}",
                    model.kind()
                );
            }
        }
        assert_ne!(DEMO_RETRIEVAL.folder_name(), DEMO_CAPTIONER.folder_name());
    }
}
