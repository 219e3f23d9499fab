//! Crash test: an acknowledged commit survives `kill -9`, and a killed store reopens
//! consistent.
//!
//! The test re-executes its own test binary as a child (selected by [`CHILD_ENV`]) that
//! commits batches in a loop — new images with captions and features, removals, moves,
//! failures — and prints one JSON line per batch *after* `commit` returned. The parent kills
//! the child with SIGKILL at a random time, reopens the store, and checks that every
//! acknowledged batch is there (the one batch that may have been committed but not yet
//! acknowledged is taken from the change log), nothing else is, and the store is consistent.
//! The seed is printed; `QUARRY_CRASH_SEED=N` replays a run's timings and batch shapes.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::tests::{fingerprint, new_image, D};
use super::*;

const CHILD_ENV: &str = "QUARRY_STORE_CRASH_CHILD";
const SEED_ENV: &str = "QUARRY_STORE_CRASH_CHILD_SEED";
const RUNS: u64 = 12;
const TOKENS: usize = 3;
const WIDTH: usize = 8;

/// splitmix64: a tiny seeded generator (no `rand` dependency in the library).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn identity() -> ModelIdentity {
    ModelIdentity {
        retrieval: fingerprint("crash", "c"),
        captioner: Some(fingerprint("cap", "k")),
    }
}

fn settings() -> StoreSettings {
    // Small files, so that runs cross file boundaries.
    StoreSettings {
        feature_cache: true,
        feature_file_limit: 1024,
    }
}

fn feature_values(n: u64) -> Vec<f32> {
    (0..TOKENS * WIDTH)
        .map(|i| (n % 97) as f32 + i as f32 * 0.5)
        .collect()
}

/// The child: commit forever, acknowledging each batch on stdout.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let seed: u64 = std::env::var(SEED_ENV).unwrap().parse().unwrap();
    let mut rng = Rng(seed);
    let store = Store::create_or_open_with(Path::new(&dir), &identity(), &settings()).unwrap();
    let mut counter = store.last_batch() * 100;
    let stdout = std::io::stdout();
    // A safety net: the parent kills the child long before this, but a child whose parent
    // died must not commit forever.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        let live: Vec<ImageRecord> = store.images().map(Result::unwrap).collect();
        let mut write = BatchWrite::default();
        let mut added_paths = Vec::new();
        for _ in 0..1 + rng.below(4) {
            counter += 1;
            let path = format!("r{seed}/i{counter}.jpg");
            let mut image = new_image(&path, counter as u128, counter);
            if rng.below(2) == 0 {
                image.caption = Some(NewCaption {
                    text: format!("caption {counter}"),
                    embedding: vec![0.5; D],
                });
            }
            let with_features = rng.below(2) == 0;
            if with_features {
                image.features = Some(ImageFeatures::from_f32(
                    TOKENS,
                    WIDTH,
                    &feature_values(counter),
                ));
            }
            added_paths.push((path, counter, with_features));
            write.new_images.push(image);
        }
        if !live.is_empty() && rng.below(3) == 0 {
            let victim = &live[rng.below(live.len() as u64) as usize];
            write.removals.push(victim.id);
        }
        let mut moved = Vec::new();
        if let Some(image) = live.iter().find(|i| !write.removals.contains(&i.id)) {
            if rng.below(3) == 0 {
                counter += 1;
                let to = PathBuf::from(format!("r{seed}/m{counter}.jpg"));
                write.path_updates.push(PathUpdate {
                    from: image.path.clone(),
                    to: to.clone(),
                    size: image.size,
                    modified_ns: image.modified_ns,
                });
                moved.push((image.id, to));
            }
        }
        if rng.below(4) == 0 {
            counter += 1;
            write.failures.push(NewFailure {
                path: format!("r{seed}/bad{counter}.jpg").into(),
                reason: "truncated".into(),
                size: 1,
                modified_ns: 1,
                content_hash: None,
            });
        }
        let receipt = store.commit(&write).unwrap();
        let added: Vec<serde_json::Value> = receipt
            .image_ids
            .iter()
            .zip(&added_paths)
            .map(|(id, (path, n, f))| serde_json::json!([id, path, n, f]))
            .collect();
        let moved: Vec<serde_json::Value> = moved
            .iter()
            .map(|(id, to)| serde_json::json!([id, to]))
            .collect();
        let line = serde_json::json!({
            "batch": receipt.batch, "add": added, "rm": write.removals, "mv": moved,
        });
        let mut out = stdout.lock();
        writeln!(out, "{line}").unwrap();
        out.flush().unwrap();
    }
}

/// What the acknowledgements say the store holds: image id → (path, feature seed).
#[derive(Default)]
struct Expected {
    images: BTreeMap<u64, (PathBuf, Option<u64>)>,
    last_batch: u64,
    acks: u64,
}

impl Expected {
    fn apply_ack(&mut self, line: &str) {
        let ack: serde_json::Value = serde_json::from_str(line).unwrap();
        let batch = ack["batch"].as_u64().unwrap();
        assert_eq!(
            batch,
            self.last_batch + 1,
            "acknowledged batches are contiguous"
        );
        for id in ack["rm"].as_array().unwrap() {
            assert!(self.images.remove(&id.as_u64().unwrap()).is_some());
        }
        for mv in ack["mv"].as_array().unwrap() {
            let entry = self.images.get_mut(&mv[0].as_u64().unwrap()).unwrap();
            entry.0 = PathBuf::from(mv[1].as_str().unwrap());
        }
        for add in ack["add"].as_array().unwrap() {
            let seed = add[3].as_bool().unwrap().then(|| add[2].as_u64().unwrap());
            self.images.insert(
                add[0].as_u64().unwrap(),
                (add[1].as_str().unwrap().into(), seed),
            );
        }
        self.last_batch = batch;
        self.acks += 1;
    }

    /// Takes in the one batch the child may have committed but not acknowledged.
    fn apply_unacknowledged(&mut self, store: &Store) -> usize {
        let changes: Vec<BatchChanges> = store
            .changes_since(self.last_batch)
            .map(Result::unwrap)
            .collect();
        assert!(
            changes.len() <= 1,
            "at most one batch can be committed but not acknowledged"
        );
        let found = changes.len();
        for change in changes {
            for id in change.images_removed {
                self.images.remove(&id);
            }
            for path in change.paths_changed {
                self.images.get_mut(&path.image).unwrap().0 = path.to;
            }
            for id in change.images_added {
                let record = store.image(id).unwrap().unwrap();
                let seed = store
                    .features(id)
                    .unwrap()
                    .map(|_| record.content_hash as u64);
                self.images.insert(id, (record.path, seed));
            }
            self.last_batch = change.batch;
        }
        found
    }

    fn check(&self, store: &Store) {
        assert_eq!(store.last_batch(), self.last_batch);
        let stored: Vec<u64> = store.images().map(|i| i.unwrap().id).collect();
        assert_eq!(stored, self.images.keys().copied().collect::<Vec<_>>());
        for (id, (path, seed)) in &self.images {
            let record = store.image_by_path(path).unwrap().unwrap_or_else(|| {
                panic!("acknowledged image {id} at {} is missing", path.display())
            });
            assert_eq!(record.id, *id);
            let features = store.features(*id).unwrap();
            match seed {
                Some(n) => {
                    let expected = ImageFeatures::from_f32(TOKENS, WIDTH, &feature_values(*n));
                    assert_eq!(features.as_ref(), Some(&expected), "features of image {id}");
                }
                None => assert!(features.is_none()),
            }
        }
        assert_eq!(store.counts().unwrap().images, self.images.len() as u64);
        let problems = store.check_consistency().unwrap();
        assert!(
            problems.is_empty(),
            "inconsistent after kill: {problems:#?}"
        );
    }
}

#[test]
fn acknowledged_commits_survive_sigkill() {
    let seed = std::env::var("QUARRY_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash test seed {seed} (QUARRY_CRASH_SEED={seed} to replay)");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let mut expected = Expected::default();
    for run in 0..RUNS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::crash_test::crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &dir)
            .env(SEED_ENV, (seed.wrapping_add(run) % 1_000_000).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        let delay = Duration::from_millis(50 + rng.below(500));
        let start = Instant::now();
        while start.elapsed() < delay {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
                panic!("run {run}: the child exited by itself ({status}): {err}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        let before = expected.acks;
        // libtest's "test crash_child ... " has no newline: the first ack follows it.
        for line in reader.join().unwrap() {
            if let Some(start) = line.find('{') {
                expected.apply_ack(&line[start..]);
            }
        }
        let store = Store::open_existing(&dir).unwrap();
        let unacknowledged = expected.apply_unacknowledged(&store);
        expected.check(&store);
        eprintln!(
            "run {run}: killed after {delay:?}, {} batches acknowledged, {unacknowledged} \
             committed but not acknowledged, {} images live",
            expected.acks - before,
            expected.images.len()
        );
    }
    assert!(
        expected.acks > RUNS,
        "the child should acknowledge batches before most kills"
    );
}
