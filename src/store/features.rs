//! The ITM feature cache: each image's ViT output (tokens × width, f16) in append-only files
//! `DIR/features/NNNNNN.f16`, located by `feat:` entries in sled.
//!
//! Why files and not sled values: at 257×1408 f16 an image's features are 0.7 MB, far larger
//! than anything else in the store; sled keeps large values as separate blob files and its
//! space amplification is high, while an append-only file costs exactly the bytes written.
//!
//! Crash safety: a commit appends the bytes and fsyncs them *before* the sled batch that
//! records their locations and the new file tail (`State::feature_file/feature_len`). At open,
//! bytes past the committed tail (a commit that never reached sled) are cut off and files
//! beyond the tail file are deleted, so the files hold exactly what sled references, plus the
//! dead bytes of removed images, which [`crate::store::Store::compact_features`] reclaims.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::records::{FeatureLocation, ImageFeatures, State};
use super::StoreError;

/// The feature files of one store.
pub(crate) struct FeatureFiles {
    dir: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The file name of feature file `n`.
fn file_name(n: u32) -> String {
    format!("{n:06}.f16")
}

fn parse_file_name(name: &str) -> Option<u32> {
    let stem = name.strip_suffix(".f16")?;
    (stem.len() == 6 && stem.bytes().all(|b| b.is_ascii_digit())).then(|| stem.parse().ok())?
}

/// Bytes of `tokens × width` f16 values, little-endian.
fn encode(features: &ImageFeatures) -> Vec<u8> {
    features
        .data
        .iter()
        .flat_map(|v| v.to_bits().to_le_bytes())
        .collect()
}

impl FeatureFiles {
    /// Opens `dir` (creating it) and cuts it back to what `state` says was committed.
    pub(crate) fn open(dir: PathBuf, state: &State) -> Result<Self, StoreError> {
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let files = FeatureFiles { dir };
        files.recover(state)?;
        Ok(files)
    }

    fn path(&self, n: u32) -> PathBuf {
        self.dir.join(file_name(n))
    }

    /// Deletes files beyond the tail or below the first live file, truncates the tail file to
    /// its committed length.
    fn recover(&self, state: &State) -> Result<(), StoreError> {
        for entry in fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let entry = entry.map_err(io(&self.dir))?;
            let Some(n) = entry.file_name().to_str().and_then(parse_file_name) else {
                continue;
            };
            let path = entry.path();
            if n > state.feature_file || n < state.feature_first_file {
                fs::remove_file(&path).map_err(io(&path))?;
            } else if n == state.feature_file {
                let len = entry.metadata().map_err(io(&path))?.len();
                if len > state.feature_len {
                    let file = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io(&path))?;
                    file.set_len(state.feature_len).map_err(io(&path))?;
                    file.sync_all().map_err(io(&path))?;
                }
            }
        }
        sync_dir(&self.dir)
    }

    /// Appends `items` after the committed tail of `state` (starting a new file when the
    /// current one would pass `limit`), fsyncs, and returns their locations. `state`'s
    /// feature fields are advanced; the caller commits them in the same sled batch, or calls
    /// [`FeatureFiles::rollback`] with the old state when that batch fails.
    pub(crate) fn append(
        &self,
        state: &mut State,
        limit: u64,
        items: &[&ImageFeatures],
    ) -> Result<Vec<FeatureLocation>, StoreError> {
        let mut locations = Vec::with_capacity(items.len());
        let mut open: Option<(u32, File)> = None;
        for features in items {
            let bytes = encode(features);
            if state.feature_len > 0 && state.feature_len + bytes.len() as u64 > limit {
                if let Some((n, file)) = open.take() {
                    file.sync_all().map_err(io(&self.path(n)))?;
                }
                state.feature_file += 1;
                state.feature_len = 0;
            }
            if open.as_ref().map(|(n, _)| *n) != Some(state.feature_file) {
                let path = self.path(state.feature_file);
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(io(&path))?;
                open = Some((state.feature_file, file));
            }
            let (n, file) = open.as_mut().expect("opened above");
            file.write_all(&bytes).map_err(io(&self.path(*n)))?;
            locations.push(FeatureLocation {
                file: state.feature_file,
                offset: state.feature_len,
                len: bytes.len() as u64,
                tokens: features.tokens as u32,
                width: features.width as u32,
            });
            state.feature_len += bytes.len() as u64;
            state.feature_live_bytes += bytes.len() as u64;
        }
        if let Some((n, file)) = open {
            file.sync_all().map_err(io(&self.path(n)))?;
            sync_dir(&self.dir)?;
        }
        Ok(locations)
    }

    /// Undoes an [`FeatureFiles::append`] whose sled commit failed.
    pub(crate) fn rollback(&self, committed: &State) -> Result<(), StoreError> {
        self.recover(committed)
    }

    /// Reads the features at `location`.
    pub(crate) fn read(&self, location: &FeatureLocation) -> Result<ImageFeatures, StoreError> {
        let path = self.path(location.file);
        let mut file = File::open(&path).map_err(io(&path))?;
        let mut bytes = vec![0u8; location.len as usize];
        file.seek(SeekFrom::Start(location.offset))
            .and_then(|_| file.read_exact(&mut bytes))
            .map_err(io(&path))?;
        let data = bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])))
            .collect();
        Ok(ImageFeatures {
            tokens: location.tokens as usize,
            width: location.width as usize,
            data,
        })
    }

    /// Total size of the feature files on disk.
    pub(crate) fn bytes_on_disk(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        for entry in fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let entry = entry.map_err(io(&self.dir))?;
            if entry
                .file_name()
                .to_str()
                .and_then(parse_file_name)
                .is_some()
            {
                total += entry.metadata().map_err(io(&entry.path()))?.len();
            }
        }
        Ok(total)
    }

    /// Deletes the files numbered below `first` (after a compaction moved their live bytes).
    pub(crate) fn remove_below(&self, first: u32) -> Result<(), StoreError> {
        for entry in fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let entry = entry.map_err(io(&self.dir))?;
            if let Some(n) = entry.file_name().to_str().and_then(parse_file_name) {
                if n < first {
                    fs::remove_file(entry.path()).map_err(io(&entry.path()))?;
                }
            }
        }
        sync_dir(&self.dir)
    }
}

/// fsyncs a directory so that created and deleted names survive a power loss.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(tokens: usize, width: usize, seed: f32) -> ImageFeatures {
        let values: Vec<f32> = (0..tokens * width).map(|i| seed + i as f32 * 0.5).collect();
        ImageFeatures::from_f32(tokens, width, &values)
    }

    #[test]
    fn append_rolls_files_and_recovery_cuts_uncommitted_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("features");
        let mut state = State::default();
        let files = FeatureFiles::open(dir.clone(), &state).unwrap();
        let (a, b, c) = (
            features(3, 4, 1.0),
            features(3, 4, 2.0),
            features(2, 4, 3.0),
        );
        // 24 bytes each: a and b fit the 48-byte limit together, c starts file 1.
        let locations = files.append(&mut state, 48, &[&a, &b, &c]).unwrap();
        assert_eq!(
            locations
                .iter()
                .map(|l| (l.file, l.offset))
                .collect::<Vec<_>>(),
            [(0, 0), (0, 24), (1, 0)]
        );
        assert_eq!((state.feature_file, state.feature_len), (1, 16));
        assert_eq!(files.read(&locations[1]).unwrap(), b);
        assert_eq!(files.read(&locations[2]).unwrap(), c);
        assert_eq!(files.bytes_on_disk().unwrap(), 64);

        // An append that was never committed: bytes in file 1 and a new file 2.
        let committed = state.clone();
        files.append(&mut state, 48, &[&a, &b]).unwrap();
        assert!(files.bytes_on_disk().unwrap() > 64);
        let reopened = FeatureFiles::open(dir.clone(), &committed).unwrap();
        assert_eq!(reopened.bytes_on_disk().unwrap(), 64);
        assert!(!dir.join("000002.f16").exists());
        assert_eq!(reopened.read(&locations[2]).unwrap(), c);
    }

    #[test]
    fn file_names_round_trip_and_strangers_are_ignored() {
        assert_eq!(parse_file_name(&file_name(42)), Some(42));
        assert_eq!(parse_file_name("notes.txt"), None);
        assert_eq!(parse_file_name("12.f16"), None);
    }
}
