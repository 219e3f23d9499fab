//! A damaged store: one file of a copy of a real store (sled's `conf` and log, the feature
//! file, the HNSW dumps, tantivy's segments and meta) bit-flipped, cut, zeroed or deleted,
//! then opened by `quarry status` in a child process. The parts derived from sled (HNSW, the
//! word index) must be rebuilt from it, with every image; damage to sled itself must be
//! refused with a message that says what to do; never a panic, an abort or an internal error.
//! `QUARRY_FUZZ_STORE_CASES` (default 60) and `QUARRY_FUZZ_SEED` set the run.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::fuzz_files::{env_number, Rng};
use crate::serve::build_store;

fn files(dir: &Path, under: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, under, out);
        } else if !path.to_string_lossy().ends_with(".lock") {
            out.push(path.strip_prefix(under).unwrap().to_owned());
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

#[test]
fn a_damaged_store_is_rebuilt_from_sled_or_refused_with_what_to_do() {
    let cases = env_number("QUARRY_FUZZ_STORE_CASES", 60);
    let seed = env_number("QUARRY_FUZZ_SEED", 5);
    let tmp = tempfile::tempdir().unwrap();
    let (base, _) = build_store(tmp.path(), 24);
    let mut all = Vec::new();
    files(&base, &base, &mut all);
    all.sort();
    let mut rng = Rng(seed);
    let (mut rebuilt, mut refused) = (0, 0);
    for case in 0..cases {
        let copy = tmp.path().join("copy");
        let _ = std::fs::remove_dir_all(&copy);
        copy_dir(&base, &copy);
        let file = &all[rng.below(all.len())];
        let path = copy.join(file);
        let mut bytes = std::fs::read(&path).unwrap();
        let damage = match rng.below(4) {
            0 => {
                std::fs::remove_file(&path).unwrap();
                "deleted"
            }
            1 if !bytes.is_empty() => {
                for _ in 0..1 + rng.below(8) {
                    let at = rng.below(bytes.len());
                    bytes[at] ^= 1 << rng.below(8);
                }
                "bits flipped"
            }
            2 => {
                bytes.truncate(rng.below(bytes.len()));
                "cut"
            }
            _ => {
                let at = rng.below(bytes.len().max(1));
                let end = (at + 64).min(bytes.len());
                bytes[at..end].fill(0);
                "zeroed"
            }
        };
        if damage != "deleted" {
            std::fs::write(&path, &bytes).unwrap();
        }
        let what = format!("case {case} (seed {seed}): {} {damage}", file.display());
        let out = Command::new(env!("CARGO_BIN_EXE_quarry"))
            .args(["status", "--json", "--store"])
            .arg(&copy)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
        let derived = file.starts_with("ann") || file.starts_with("text");
        match out.status.code() {
            Some(0) => {
                let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                let images = status["images"].as_u64().unwrap();
                if derived {
                    // Rebuilt from sled, every image there.
                    assert_eq!(images, 24, "{what}: {status}");
                    rebuilt += 1;
                } else {
                    // sled reads a damaged log tail as a write torn by a crash and drops it.
                    assert!(images <= 24, "{what}: {status}");
                }
            }
            Some(1) if !derived => {
                assert!(
                    stderr.contains("restore the store folder from a backup")
                        || stderr.contains("create one with `quarry index"),
                    "{what}: the refusal must say what to do: {stderr}"
                );
                refused += 1;
            }
            other => panic!("{what}: exit {other:?}: {stderr}"),
        }
    }
    eprintln!(
        "damaged store: {cases} cases (seed {seed}), {rebuilt} derived parts rebuilt, {refused} \
         refused with what to do"
    );
}
