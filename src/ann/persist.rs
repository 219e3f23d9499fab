//! Saving and loading a [`MultiVectorIndex`] crash-safely.
//!
//! hnsw_rs can only dump to files, overwrites them in place, and panics (rather than erring) on a
//! truncated or mismatched graph/data pair. So a save never touches the live copy:
//!
//! 1. everything is written into a sibling folder `.<name>.tmp`: the graph (`graph.hnsw.graph`,
//!    `graph.hnsw.data`, f16 points), `owners.bin` (owner ids, tombstones, the f32 vectors used
//!    for exact re-scoring) and, last, `MANIFEST.json` with the store batch id, the parameters
//!    and the length and xxh3-64 checksum of every file; each file and the folder are fsynced;
//! 2. the current folder is renamed to `.<name>.old`, the new one to `<name>`, the parent is
//!    fsynced and `.<name>.old` removed.
//!
//! A crash at any point leaves either the previous or the new complete copy (a crash between
//! the two renames leaves only `.<name>.old`, which [`MultiVectorIndex::load`] then uses). Load
//! verifies lengths and checksums before handing the graph to hnsw_rs, and still runs hnsw_rs's
//! loader under `catch_unwind`, so damage becomes [`AnnError::Corrupt`], which the caller answers
//! by rebuilding from the store.
//!
//! The loaded graph borrows its `HnswIo` reader for its whole life (hnsw_rs's signature ties the
//! two lifetimes even without mmap). The reader is therefore leaked: a few hundred bytes per
//! load, once per process open.
//!
//! Persisted format: changing any of these files needs a new [`FORMAT`] number; older numbers are
//! refused as `Corrupt`, which means "rebuild" — the index is derived data.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use hnsw_rs::api::AnnT;
use hnsw_rs::hnswio::HnswIo;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use super::distance::DotF16;
use super::index::{new_graph, validate_params, Graph, MultiVectorIndex, Slot};
use super::{AnnError, AnnParams};

/// On-disk format version of the index folder.
pub const FORMAT: u32 = 1;
const MANIFEST: &str = "MANIFEST.json";
const OWNERS: &str = "owners.bin";
const GRAPH_BASE: &str = "graph";
const OWNERS_MAGIC: &[u8; 8] = b"QRYANNO1";

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: u32,
    batch_id: u64,
    dim: usize,
    params: AnnParams,
    owners: usize,
    points: usize,
    files: Vec<FileSum>,
}

#[derive(Debug, Serialize, Deserialize)]
struct FileSum {
    name: String,
    len: u64,
    xxh3: u64,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AnnError + '_ {
    move |source| AnnError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn sibling(dir: &Path, suffix: &str) -> Result<PathBuf, AnnError> {
    let name = dir.file_name().ok_or_else(|| AnnError::Io {
        path: dir.to_path_buf(),
        source: std::io::Error::other("index folder path has no final component"),
    })?;
    Ok(dir.with_file_name(format!(".{}.{suffix}", name.to_string_lossy())))
}

fn fsync_dir(dir: &Path) -> Result<(), AnnError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io_err(dir))
}

/// Length and xxh3 of a file, streamed.
fn file_sum(path: &Path) -> Result<(u64, u64), AnnError> {
    let mut f = BufReader::with_capacity(1 << 20, File::open(path).map_err(io_err(path))?);
    let mut h = Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
    Ok((len, h.digest()))
}

impl MultiVectorIndex {
    /// Saves the index into `dir` (created if needed), tagged with `batch_id`, the last store
    /// batch whose changes it contains. Atomic: `dir` holds either the old or the new index.
    pub fn save(&self, dir: &Path, batch_id: u64) -> Result<(), AnnError> {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let tmp = sibling(dir, "tmp")?;
        let old = sibling(dir, "old")?;
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        fs::create_dir(&tmp).map_err(io_err(&tmp))?;

        let mut files = Vec::new();
        if !self.point_slot.is_empty() {
            // hnsw_rs cannot reload an empty graph; an empty index has no graph files.
            // hnsw_rs panics (instead of erring) on some I/O failures, e.g. a full disk.
            let dumped = catch_unwind(AssertUnwindSafe(|| self.graph.file_dump(&tmp, GRAPH_BASE)));
            let base = match dumped {
                Ok(Ok(base)) => base,
                Ok(Err(e)) => format!("hnsw dump failed: {e}"),
                Err(_) => "hnsw dump panicked (disk full or unwritable?)".to_string(),
            };
            if base != GRAPH_BASE {
                let _ = fs::remove_dir_all(&tmp);
                return Err(AnnError::Io {
                    path: tmp.clone(),
                    source: std::io::Error::other(format!("writing the graph: {base}")),
                });
            }
            for ext in ["hnsw.graph", "hnsw.data"] {
                let name = format!("{GRAPH_BASE}.{ext}");
                let path = tmp.join(&name);
                File::open(&path)
                    .and_then(|f| f.sync_all())
                    .map_err(io_err(&path))?;
                let (len, xxh3) = file_sum(&path)?;
                files.push(FileSum { name, len, xxh3 });
            }
        }
        let owners_path = tmp.join(OWNERS);
        let (len, xxh3) = self.write_owners(&owners_path)?;
        files.push(FileSum {
            name: OWNERS.into(),
            len,
            xxh3,
        });
        let manifest = Manifest {
            format: FORMAT,
            batch_id,
            dim: self.dim,
            params: self.params,
            owners: self.live.len(),
            points: self.point_slot.len(),
            files,
        };
        let manifest_path = tmp.join(MANIFEST);
        let json = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
        let mut f = File::create(&manifest_path).map_err(io_err(&manifest_path))?;
        f.write_all(&json)
            .and_then(|_| f.sync_all())
            .map_err(io_err(&manifest_path))?;
        fsync_dir(&tmp)?;

        // Swap: a crash between the renames leaves only `old`, which load falls back to.
        if dir.exists() {
            if old.exists() {
                fs::remove_dir_all(&old).map_err(io_err(&old))?;
            }
            fs::rename(dir, &old).map_err(io_err(dir))?;
        }
        fs::rename(&tmp, dir).map_err(io_err(dir))?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fsync_dir(parent)?;
        }
        if old.exists() {
            fs::remove_dir_all(&old).map_err(io_err(&old))?;
        }
        Ok(())
    }

    /// Writes `owners.bin` (little endian): magic, dim u32, slots u64, points u64, the slot of
    /// every point (u32 each), then per slot owner u64, count u32, live u8 and, if live,
    /// `count × dim` f32. Returns its length and xxh3.
    fn write_owners(&self, path: &Path) -> Result<(u64, u64), AnnError> {
        let file = File::create(path).map_err(io_err(path))?;
        let mut w = HashingWriter {
            inner: BufWriter::with_capacity(1 << 20, file),
            hash: Xxh3::new(),
            len: 0,
        };
        let mut write = || -> std::io::Result<()> {
            w.write_all(OWNERS_MAGIC)?;
            w.write_all(&(self.dim as u32).to_le_bytes())?;
            w.write_all(&(self.slots.len() as u64).to_le_bytes())?;
            w.write_all(&(self.point_slot.len() as u64).to_le_bytes())?;
            for s in &self.point_slot {
                w.write_all(&s.to_le_bytes())?;
            }
            for s in &self.slots {
                w.write_all(&s.owner.to_le_bytes())?;
                w.write_all(&s.count.to_le_bytes())?;
                w.write_all(&[s.live as u8])?;
                if s.live {
                    for x in s.vectors.iter() {
                        w.write_all(&x.to_le_bytes())?;
                    }
                }
            }
            w.inner.flush()?;
            w.inner.get_ref().sync_all()
        };
        write().map_err(io_err(path))?;
        Ok((w.len, w.hash.digest()))
    }

    /// Loads an index saved by [`Self::save`]. `Ok(None)`: nothing was ever saved there.
    /// `Err(AnnError::Corrupt)`: the copy is damaged or of another format — rebuild it from the
    /// store. On success, returns the index and the batch id it was saved with.
    pub fn load(dir: &Path) -> Result<Option<(Self, u64)>, AnnError> {
        // hnsw_rs has had trouble with relative paths; resolve them first.
        let dir = &std::path::absolute(dir).map_err(io_err(dir))?;
        let old = sibling(dir, "old")?;
        let src = if dir.join(MANIFEST).exists() {
            dir.to_path_buf()
        } else if !dir.exists() && old.join(MANIFEST).exists() {
            old
        } else if !dir.exists() {
            return Ok(None);
        } else {
            return Err(corrupt(dir, "MANIFEST.json is missing"));
        };
        load_from(&src).map(Some)
    }
}

fn corrupt(path: &Path, reason: impl Into<String>) -> AnnError {
    AnnError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn load_from(dir: &Path) -> Result<(MultiVectorIndex, u64), AnnError> {
    let manifest_path = dir.join(MANIFEST);
    let bytes = fs::read(&manifest_path).map_err(io_err(&manifest_path))?;
    let m: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| corrupt(dir, format!("unreadable MANIFEST.json: {e}")))?;
    if m.format != FORMAT {
        return Err(corrupt(
            dir,
            format!("format {} (this build reads {FORMAT})", m.format),
        ));
    }
    validate_params(m.dim, &m.params).map_err(|e| corrupt(dir, e.to_string()))?;
    let expected: &[&str] = if m.points > 0 {
        &["graph.hnsw.graph", "graph.hnsw.data", OWNERS]
    } else {
        &[OWNERS]
    };
    for name in expected {
        let sum = m
            .files
            .iter()
            .find(|f| f.name == *name)
            .ok_or_else(|| corrupt(dir, format!("manifest lists no {name}")))?;
        let path = dir.join(name);
        if !path.exists() {
            return Err(corrupt(dir, format!("{name} is missing")));
        }
        let (len, xxh3) = file_sum(&path)?;
        if len != sum.len || xxh3 != sum.xxh3 {
            return Err(corrupt(dir, format!("{name} fails its checksum")));
        }
    }

    let owners_path = dir.join(OWNERS);
    let raw = fs::read(&owners_path).map_err(io_err(&owners_path))?;
    let (slots, point_slot) =
        parse_owners(&raw, m.dim).map_err(|r| corrupt(dir, format!("owners.bin: {r}")))?;
    if point_slot.len() != m.points {
        return Err(corrupt(dir, "owners.bin and manifest disagree on points"));
    }

    let graph: Graph = if m.points == 0 {
        new_graph(&m.params, 0)
    } else {
        let loaded = catch_unwind(AssertUnwindSafe(|| {
            let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(dir, GRAPH_BASE)));
            io.load_hnsw::<u16, DotF16>()
        }));
        let graph = match loaded {
            Ok(Ok(g)) => g,
            Ok(Err(e)) => return Err(corrupt(dir, format!("hnsw load failed: {e}"))),
            Err(_) => return Err(corrupt(dir, "hnsw load panicked on the graph files")),
        };
        if graph.get_nb_point() != m.points {
            return Err(corrupt(dir, "graph point count disagrees with owners.bin"));
        }
        if graph.get_point_indexation().get_data_dimension() != m.dim {
            return Err(corrupt(dir, "graph dimension disagrees with the manifest"));
        }
        graph
    };

    let mut live = HashMap::new();
    let (mut dead_points, mut live_points) = (0, 0);
    for (i, s) in slots.iter().enumerate() {
        if s.live {
            if live.insert(s.owner, i as u32).is_some() {
                return Err(corrupt(dir, format!("owner {} is live twice", s.owner)));
            }
            live_points += s.count as usize;
        } else {
            dead_points += s.count as usize;
        }
    }
    let index = MultiVectorIndex {
        dim: m.dim,
        params: m.params,
        graph,
        slots,
        live,
        point_slot,
        dead_points,
        live_points,
    };
    Ok((index, m.batch_id))
}

/// Parses and cross-checks `owners.bin`; the error is a reason for [`AnnError::Corrupt`].
fn parse_owners(raw: &[u8], dim: usize) -> Result<(Vec<Slot>, Vec<u32>), String> {
    let mut r = ByteReader { raw, pos: 0 };
    if r.take(8)? != OWNERS_MAGIC {
        return Err("bad magic".into());
    }
    if r.u32()? as usize != dim {
        return Err("dimension differs from the manifest".into());
    }
    let n_slots = r.u64()? as usize;
    let n_points = r.u64()? as usize;
    if n_points.saturating_mul(4) > raw.len() || n_slots.saturating_mul(13) > raw.len() {
        return Err("counts exceed the file size".into());
    }
    let mut point_slot = Vec::with_capacity(n_points);
    let mut per_slot = vec![0u32; n_slots];
    for _ in 0..n_points {
        let s = r.u32()?;
        *per_slot
            .get_mut(s as usize)
            .ok_or("a point names a slot that does not exist")? += 1;
        point_slot.push(s);
    }
    let mut slots = Vec::with_capacity(n_slots);
    for expected in per_slot {
        let owner = r.u64()?;
        let count = r.u32()?;
        let live = match r.take(1)?[0] {
            0 => false,
            1 => true,
            _ => return Err("bad live flag".into()),
        };
        if count != expected {
            return Err(format!(
                "owner {owner}: {count} vectors but {expected} points"
            ));
        }
        let vectors: Box<[f32]> = if live {
            let bytes = r.take(count as usize * dim * 4)?;
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect()
        } else {
            Box::new([])
        };
        slots.push(Slot {
            owner,
            vectors,
            count,
            live,
        });
    }
    if r.pos != raw.len() {
        return Err("trailing bytes".into());
    }
    Ok((slots, point_slot))
}

struct ByteReader<'a> {
    raw: &'a [u8],
    pos: usize,
}

impl<'a> ByteReader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.raw.len());
        let end = end.ok_or_else(|| "truncated".to_string())?;
        let s = &self.raw[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

/// Hashes bytes as they are written, so saving reads nothing back.
struct HashingWriter<W: Write> {
    inner: W,
    hash: Xxh3,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
