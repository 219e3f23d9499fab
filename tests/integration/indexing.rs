//! `quarry index`, `status` and `remove` run as a user would, on synthetic scenes with the small
//! fixture model, checked through the library: what is acknowledged is searchable, unchanged
//! files cost no model work, moves re-embed nothing, deletions leave search, bad files are
//! reported and retried alone, and `kill -9` at any moment loses nothing acknowledged.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use quarry::library::{Library, LibraryError};
use quarry::store::StoreError;
use quarry::text::TextKind;

use crate::support::{retrieval_fixtures, scenes, small_model};

fn quarry(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quarry"))
        .args(args)
        .output()
        .unwrap()
}

fn index_json(paths: &[&Path], store: &Path, extra: &[&str]) -> (Vec<serde_json::Value>, Output) {
    let mut args: Vec<String> = vec!["index".into()];
    args.extend(paths.iter().map(|p| p.to_string_lossy().into_owned()));
    args.extend(["--store".into(), store.to_string_lossy().into_owned()]);
    args.extend(["--model".into(), small_model(), "--json".into()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = quarry(&refs);
    assert!(
        out.status.success(),
        "index failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (lines, out)
}

fn summary(lines: &[serde_json::Value]) -> &serde_json::Value {
    let last = lines.last().expect("a summary line");
    assert_eq!(last["event"], "summary");
    last
}

fn status(store: &Path) -> serde_json::Value {
    let out = quarry(&["status", "--store", store.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Whether `path` is found by its own vectors (HNSW) and by its file name (BM25).
pub fn searchable(library: &Library, path: &Path) -> Result<(), String> {
    let store = library.store();
    let record = store
        .image_by_path(path)
        .unwrap()
        .ok_or_else(|| format!("{} has no record", path.display()))?;
    let vectors = store.vectors(record.id).unwrap().ok_or("no vectors")?;
    // Identical content (copies) ties at the top; the record must be among the best.
    let hits = library.image_index().search_set(&vectors, 8).unwrap();
    let best = hits.first().map_or(f32::NAN, |h| h.score);
    if !hits
        .iter()
        .any(|h| h.owner == record.id && h.score >= best - 1e-5)
    {
        return Err(format!("{}: ANN top hit {hits:?}", path.display()));
    }
    let stem = path.file_stem().unwrap().to_string_lossy();
    let words = library
        .words()
        .search(&stem, 5, &[TextKind::Image])
        .unwrap();
    if !words.iter().any(|h| h.id == record.id) {
        return Err(format!("{}: BM25 misses it: {words:?}", path.display()));
    }
    Ok(())
}

/// sled, HNSW and tantivy hold the same images.
pub fn assert_counts_agree(library: &Library) {
    let counts = library.counts().unwrap();
    assert_eq!(
        library.image_index().owners() as u64,
        counts.images,
        "HNSW vs sled"
    );
    let user_texts = library
        .store()
        .texts()
        .filter(|t| t.as_ref().unwrap().source == quarry::store::TextSource::User)
        .count() as u64;
    assert_eq!(
        library.words().num_docs(),
        counts.images + user_texts,
        "tantivy vs sled"
    );
    assert_eq!(
        library.text_index().owners() as u64,
        counts.texts,
        "text HNSW vs sled"
    );
    let problems = library.store().check_consistency().unwrap();
    assert!(problems.is_empty(), "store inconsistent: {problems:?}");
}

#[test]
fn second_run_does_no_model_work_moves_reembed_nothing_and_deletions_leave_search() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("Photos");
    scenes(&photos, 12, 5);
    let store = tmp.path().join("store");

    let (lines, _) = index_json(&[&photos], &store, &["--batch", "5"]);
    assert_eq!(summary(&lines)["indexed"], 12);
    let s = status(&store);
    assert_eq!(
        (s["images"].as_u64(), s["vectors"].as_u64()),
        (Some(12), Some(12))
    );
    assert!(s["feature_cache_bytes"].as_u64().unwrap() > 0);

    let (lines, _) = index_json(&[&photos], &store, &[]);
    let again = summary(&lines);
    assert_eq!(
        again["indexed"], 0,
        "unchanged library re-embedded: {again}"
    );
    assert_eq!(again["plan"]["unchanged"], 12);
    assert_eq!(again["model_busy_seconds"], 0.0);

    // Move the folder: every path changes, nothing is embedded, search follows the move.
    let moved = tmp.path().join("Archive");
    std::fs::rename(&photos, &moved).unwrap();
    let (lines, _) = index_json(&[tmp.path()], &store, &["--exclude", "**/store/**"]);
    let after_move = summary(&lines);
    assert_eq!(after_move["indexed"], 0, "{after_move}");
    assert_eq!(after_move["plan"]["moved"], 12, "{after_move}");

    // Delete two files: they leave the store and search.
    let gone = [
        moved.join("images/000003.png"),
        moved.join("images/000007.png"),
    ];
    for g in &gone {
        std::fs::remove_file(g).unwrap();
    }
    let (lines, _) = index_json(&[tmp.path()], &store, &["--exclude", "**/store/**"]);
    assert_eq!(summary(&lines)["plan"]["deleted"], 2);
    assert_eq!(status(&store)["images"], 10);

    let library = Library::open_existing(&store).unwrap();
    assert_counts_agree(&library);
    for entry in std::fs::read_dir(moved.join("images")).unwrap() {
        searchable(&library, &entry.unwrap().path()).unwrap();
    }
    for g in &gone {
        assert!(library.store().image_by_path(g).unwrap().is_none());
        let stem = g.file_stem().unwrap().to_string_lossy();
        let hits = library
            .words()
            .search(&stem, 5, &[TextKind::Image])
            .unwrap();
        assert!(
            hits.is_empty(),
            "deleted {} still found: {hits:?}",
            g.display()
        );
    }
    drop(library);

    // `quarry remove` takes a file out of search.
    let victim = moved.join("images/000001.png");
    let out = quarry(&[
        "remove",
        "--store",
        store.to_str().unwrap(),
        victim.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(status(&store)["images"], 9);
}

#[test]
fn identical_new_files_are_embedded_once_and_both_searchable() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("Photos");
    scenes(&photos, 3, 6);
    let images = photos.join("images");
    for copy in ["copy-a.png", "copy-b.png"] {
        std::fs::copy(images.join("000001.png"), images.join(copy)).unwrap();
    }
    let store = tmp.path().join("store");
    let (lines, _) = index_json(&[&photos], &store, &[]);
    let s = summary(&lines);
    // Three contents went through the model; the two extra copies of one copied its record.
    assert_eq!(s["indexed"], 3, "{s}");
    assert_eq!(s["plan"]["new"], 3, "{s}");
    assert_eq!(s["plan"]["copied"], 2, "{s}");
    assert!(s["failed"].as_array().unwrap().is_empty(), "{s}");
    assert_eq!(status(&store)["images"], 5);
    let library = Library::open_existing(&store).unwrap();
    assert_counts_agree(&library);
    let original = library
        .store()
        .image_by_path(&images.join("000001.png"))
        .unwrap()
        .unwrap();
    let original_vectors = library.store().vectors(original.id).unwrap();
    for name in [
        "000000.png",
        "000001.png",
        "000002.png",
        "copy-a.png",
        "copy-b.png",
    ] {
        searchable(&library, &images.join(name)).unwrap();
    }
    for copy in ["copy-a.png", "copy-b.png"] {
        let record = library
            .store()
            .image_by_path(&images.join(copy))
            .unwrap()
            .unwrap();
        assert_ne!(record.id, original.id);
        assert_eq!(
            library.store().vectors(record.id).unwrap(),
            original_vectors
        );
    }
}

/// A PNG whose header claims `width`×`height` (the pixel limit must refuse it unread).
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    png.extend(13u32.to_be_bytes());
    png.extend(&ihdr);
    png.extend(crc32(&ihdr).to_be_bytes());
    png
}

#[test]
fn bad_files_are_reported_by_path_the_rest_indexed_and_a_rerun_retries_only_them() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("Photos");
    scenes(&photos, 4, 8);
    let good = std::fs::read(photos.join("images/000000.png")).unwrap();
    let mut bad: Vec<PathBuf> = Vec::new();
    let put = |name: &str, bytes: &[u8]| {
        let p = photos.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    bad.push(put("zero.jpg", b""));
    bad.push(put("text.jpg", b"just some notes, not a photo"));
    bad.push(put("bomb.png", &png_claiming(30_000, 30_000)));
    let jpeg = {
        let img =
            image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 3, y as u8 * 4, 90]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
        out.into_inner()
    };
    bad.push(put("truncated.jpg", &jpeg[..jpeg.len() / 2]));
    // Odd names are fine files, not failures (new content, so they go through the model).
    let png = |index: usize| {
        let (img, _) = quarry::synth::scene_at(99, index, 72);
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    };
    let odd = [
        put("Ünïcödé 写真 🐕.png", &png(0)),
        put("line\nbreak.png", &png(1)),
    ];
    std::os::unix::fs::symlink(&photos, photos.join("loop")).unwrap();
    let unreadable = put("locked.png", &good);
    std::fs::set_permissions(
        &unreadable,
        std::os::unix::fs::PermissionsExt::from_mode(0o000),
    )
    .unwrap();
    let root_reads_anyway = std::fs::read(&unreadable).is_ok();
    if root_reads_anyway {
        eprintln!(
            "running as root: chmod 000 does not stop reading, so locked.png is a good file here"
        );
    } else {
        bad.push(unreadable.clone());
    }

    let store = tmp.path().join("store");
    let (lines, _) = index_json(&[&photos], &store, &["--batch", "3"]);
    let failed: BTreeSet<PathBuf> = lines
        .iter()
        .filter(|l| l["event"] == "batch")
        .flat_map(|l| l["failed"].as_array().unwrap().clone())
        .map(|f| {
            assert!(!f["reason"].as_str().unwrap().is_empty(), "{f}");
            PathBuf::from(f["path"].as_str().unwrap())
        })
        .collect();
    for b in &bad {
        assert!(
            failed.contains(b),
            "{} not reported; failed: {failed:?}",
            b.display()
        );
    }
    assert!(
        failed.iter().any(|p| p.ends_with("loop")),
        "the symlink loop is not reported: {failed:?}"
    );
    let s = summary(&lines);
    let good_files = 4 + odd.len() as u64 + u64::from(root_reads_anyway);
    // Copies of one file are copied records, not embeddings.
    let indexed = s["indexed"].as_u64().unwrap() + s["plan"]["copied"].as_u64().unwrap();
    assert_eq!(indexed, good_files, "{s}");

    // Nothing else is lost: the re-run retries exactly the failures.
    let (lines, _) = index_json(&[&photos], &store, &[]);
    let rerun = summary(&lines);
    assert_eq!(rerun["indexed"], 0, "{rerun}");
    assert_eq!(
        rerun["plan"]["unchanged"].as_u64().unwrap(),
        good_files,
        "{rerun}"
    );
    let library = Library::open_existing(&store).unwrap();
    for p in &odd {
        searchable(&library, p).unwrap();
    }
    assert_counts_agree(&library);
    assert!(library.counts().unwrap().failed >= bad.len() as u64);
    drop(library);

    // An indexed photo overwritten with text is reported, and the run still completes.
    let damaged = photos.join("images/000002.png");
    std::fs::write(&damaged, b"oops, not a picture any more").unwrap();
    let (lines, _) = index_json(&[&photos], &store, &[]);
    let reported = lines
        .iter()
        .filter(|l| l["event"] == "batch")
        .flat_map(|l| l["failed"].as_array().unwrap().clone())
        .any(|f| f["path"].as_str() == damaged.to_str());
    assert!(reported, "the damaged file is not reported: {lines:?}");
}

#[test]
fn a_store_in_use_or_made_by_another_model_is_refused_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("p");
    scenes(&photos, 2, 1);
    let store = tmp.path().join("store");
    index_json(&[&photos], &store, &[]);

    let other = retrieval_fixtures().join("small_b");
    let out = quarry(&[
        "index",
        photos.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
        "--model",
        other.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("small_a") && err.contains("--store"), "{err}");

    let held = Library::open_existing(&store).unwrap();
    let out = quarry(&["status", "--store", store.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use"), "{err}");
    drop(held);
    assert!(quarry(&["status", "--store", store.to_str().unwrap()])
        .status
        .success());
}

#[test]
fn captions_are_stored_searchable_by_word_and_embedded_for_image_to_text() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("p");
    scenes(&photos, 3, 2);
    let store = tmp.path().join("store");
    let captioner = retrieval_fixtures()
        .parent()
        .unwrap()
        .join("captioning/opt_current");
    let (lines, _) = index_json(
        &[&photos],
        &store,
        &[
            "--caption-model",
            captioner.to_str().unwrap(),
            "--caption-max-tokens",
            "4",
        ],
    );
    assert_eq!(summary(&lines)["store"]["captions"], 3);

    // A captioner added to a store indexed without one captions the images already there.
    let later = tmp.path().join("later");
    scenes(&later, 2, 3);
    let store_later = tmp.path().join("store_later");
    index_json(&[&later], &store_later, &[]);
    assert_eq!(status(&store_later)["captions"], 0);
    let (lines, _) = index_json(
        &[&later],
        &store_later,
        &[
            "--caption-model",
            captioner.to_str().unwrap(),
            "--caption-max-tokens",
            "4",
        ],
    );
    assert_eq!(summary(&lines)["plan"]["recaption"], 2);
    assert_eq!(summary(&lines)["store"]["captions"], 2);
    assert_eq!(summary(&lines)["store"]["images"], 2);

    let library = Library::open_existing(&store).unwrap();
    assert_counts_agree(&library);
    for record in library.store().images() {
        let record = record.unwrap();
        let caption = record.caption.clone().expect("a caption");
        let text = library
            .store()
            .text(record.caption_text.unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(text.text, caption);
        let norm: f32 = text.embedding.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "caption embedding norm {norm}");
        if let Some(word) = caption
            .split_whitespace()
            .find(|w| w.chars().all(char::is_alphanumeric))
        {
            let hits = library
                .words()
                .search(word, 10, &[TextKind::Image])
                .unwrap();
            assert!(
                hits.iter().any(|h| h.id == record.id),
                "{word:?} misses {caption:?}"
            );
        }
    }
}

/// Kills `quarry index` with SIGKILL at random moments (seed printed; `CRASH_SEED` replays),
/// then checks that the store opens, sled/HNSW/tantivy agree and every image acknowledged
/// before the kill is searchable; a final run completes the set.
#[test]
fn kill_9_at_random_moments_loses_nothing_acknowledged() {
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash test seed {seed} (replay with CRASH_SEED={seed})");
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    // 24 in the suite. CRASH_RUNS sets more for a long run: three new photos then arrive before
    // each run past the 24th, and the kill is drawn from the time the pending work takes, so
    // every kill interrupts indexing rather than a run with nothing left to do.
    let runs: usize = std::env::var("CRASH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("p");
    scenes(&photos, 60, 4);
    let extra = runs.saturating_sub(24) * 3;
    let mut pool: Vec<PathBuf> = Vec::new();
    if extra > 0 {
        scenes(&tmp.path().join("pool"), extra, 9);
        pool = std::fs::read_dir(tmp.path().join("pool/images"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        pool.sort();
    }
    let mut total = 60usize;
    let store = tmp.path().join("store");

    // One uninterrupted run times the window the kills are drawn from; a second, with nothing
    // to do, times start-up and recovery alone.
    let timing = tempfile::tempdir().unwrap();
    let started = Instant::now();
    index_json(&[&photos], &timing.path().join("s"), &["--batch", "2"]);
    let full_run = started.elapsed();
    let started = Instant::now();
    index_json(&[&photos], &timing.path().join("s"), &["--batch", "2"]);
    let idle_run = started.elapsed();

    let mut acknowledged: BTreeSet<PathBuf> = BTreeSet::new();
    let mut in_store = 0usize;
    for run in 0..runs {
        if run >= 24 {
            for photo in pool.drain(..3.min(pool.len())) {
                let name = format!("pool-{}", photo.file_name().unwrap().to_string_lossy());
                std::fs::rename(&photo, photos.join("images").join(name)).unwrap();
                total += 1;
            }
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_quarry"))
            .args(["index", photos.to_str().unwrap(), "--store"])
            .arg(&store)
            .args(["--model", &small_model(), "--json", "--batch", "2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut acked = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    break; // a line cut by the kill acknowledges nothing
                };
                if v["event"] == "batch" {
                    for p in v["indexed"].as_array().unwrap() {
                        acked.push(PathBuf::from(p.as_str().unwrap()));
                    }
                }
            }
            acked
        });
        // Spread over the whole run, start-up and recovery included (in a long run, over the
        // work still pending).
        let window = if run >= 24 && extra > 0 {
            let pending = total.saturating_sub(in_store).max(1) as u64;
            idle_run.as_millis() as u64 + full_run.as_millis() as u64 * pending / 60 + 50
        } else {
            full_run.as_millis() as u64 * 11 / 10 + 50
        };
        let delay = Duration::from_millis(next() % window / (1 + run as u64 % 3));
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        acknowledged.extend(reader.join().unwrap());

        let library = match Library::open_existing(&store) {
            Ok(library) => library,
            // Killed before the new store's first write reached disk: there is no store yet,
            // which is only right while nothing has been acknowledged.
            Err(LibraryError::Store(StoreError::NotFound { .. })) if acknowledged.is_empty() => {
                eprintln!("run {run}: killed after {delay:?}, before the store was created");
                continue;
            }
            Err(e) => panic!("run {run} (killed after {delay:?}): store does not open: {e}"),
        };
        assert_counts_agree(&library);
        for path in &acknowledged {
            searchable(&library, path)
                .unwrap_or_else(|e| panic!("run {run}, killed after {delay:?}: {e}"));
        }
        in_store = library.counts().unwrap().images as usize;
        eprintln!(
            "run {run}: killed after {delay:?}, {} acknowledged, {in_store} of {total} in store, \
             recovery {:?}",
            acknowledged.len(),
            library.recovery()
        );
    }
    let (lines, _) = index_json(&[&photos], &store, &["--batch", "2"]);
    assert_eq!(summary(&lines)["store"]["images"], total);
    let library = Library::open_existing(&store).unwrap();
    assert_counts_agree(&library);
    for entry in std::fs::read_dir(photos.join("images")).unwrap() {
        searchable(&library, &entry.unwrap().path()).unwrap();
    }
}
