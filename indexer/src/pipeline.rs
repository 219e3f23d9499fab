//! Decoding and preprocessing in parallel, handing the model full batches, in bounded memory.
//!
//! Indexing tens of thousands of photos must keep the model busy without holding the library in
//! memory. [`prepare_batches`] runs `workers` threads (a dedicated rayon pool, so the model's own
//! rayon work on the global pool is not queued behind decoding) that each read a file once, hash
//! those bytes, decode them (content-sniffed, EXIF orientation applied, pixel limit checked from
//! the header), read the EXIF facts, and resize + normalise into CHW f32. The consumer iterates
//! over [`PreparedBatches`] and gets `batch_size` results at a time (the last batch may be
//! short).
//!
//! **Bounded memory.** Workers take a permit before starting a file, and permits come back only
//! when the consumer takes a batch, so at most `queue_batches × batch_size` prepared images
//! exist inside the pipeline (finished or in progress) plus the batch the consumer holds:
//! `(queue_batches + 1) × batch_size` in all, whatever the library size. Beyond that, each
//! worker holds one file's bytes and one decoded full-size image while it works.
//!
//! **Order.** Results come in completion order, not input order: a slow panorama does not hold
//! back the batch behind it. Each result carries the caller's tag and path.
//!
//! **Failures stay in their slot.** An unreadable, corrupt, unsupported or oversized file gives
//! an `Err` naming the file in its [`Prepared`] entry; a decoder panic is caught and reported
//! the same way. The pipeline never stops for one file.
//!
//! **Early drop.** Dropping the iterator cancels the work: workers finish at most the file in
//! hand and exit, nothing blocks and nothing leaks.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};

use crate::hash::ContentHash;
use crate::metadata::{info_with_displayed_size, ImageInfo};
use crate::sniff::{sniff, Sniffed, SNIFF_LEN};
use crate::{decode_bytes, to_pixels, DecodeLimits, PreprocessError, PreprocessSpec};

/// How the pipeline runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipelineOptions {
    /// Images per batch handed to the consumer (≥ 1).
    pub batch_size: usize,
    /// Full batches that may wait for the consumer (≥ 1); 2 lets decoding run one batch ahead
    /// while absorbing jitter.
    pub queue_batches: usize,
    /// Decoding threads; 0 means rayon's default (`RAYON_NUM_THREADS`, else one per core).
    pub workers: usize,
    /// Pixel limit for decoding.
    pub limits: DecodeLimits,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            batch_size: 16,
            queue_batches: 2,
            workers: 0,
            limits: DecodeLimits::default(),
        }
    }
}

/// One image ready for the model.
pub struct PreparedImage {
    /// 3 × size × size values, CHW, normalised as the [`PreprocessSpec`] says.
    pub pixels: Vec<f32>,
    /// Displayed size and EXIF facts.
    pub info: ImageInfo,
    /// Hash of the bytes that were decoded (the file may have changed since it was planned).
    pub content_hash: ContentHash,
    #[cfg(test)]
    _live: tests::LiveToken,
}

impl std::fmt::Debug for PreparedImage {
    /// The pixels are summarised: a batch's worth of floats is no help in a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedImage")
            .field("pixels", &format_args!("[{} f32]", self.pixels.len()))
            .field("info", &self.info)
            .field("content_hash", &self.content_hash)
            .finish()
    }
}

/// The outcome for one input, with the caller's tag.
#[derive(Debug)]
pub struct Prepared<T> {
    /// What the caller attached to this path.
    pub tag: T,
    /// The file.
    pub path: PathBuf,
    /// The pixels, or why there are none.
    pub result: Result<PreparedImage, PreprocessError>,
}

/// Settings the pipeline cannot run with.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// `batch_size` or `queue_batches` is zero.
    #[error("invalid pipeline options: {0}")]
    Options(String),
    /// The preprocessing settings are unusable.
    #[error(transparent)]
    Spec(#[from] PreprocessError),
    /// The worker threads could not be started.
    #[error("cannot start the decoding threads: {0}")]
    Threads(String),
}

/// Starts preparing `items` and returns the iterator over their batches (see the module docs).
pub fn prepare_batches<T: Send + 'static>(
    items: Vec<(T, PathBuf)>,
    spec: PreprocessSpec,
    opts: PipelineOptions,
) -> Result<PreparedBatches<T>, PipelineError> {
    spec.validate()?;
    if opts.batch_size == 0 || opts.queue_batches == 0 {
        return Err(PipelineError::Options(format!(
            "batch_size ({}) and queue_batches ({}) must be at least 1",
            opts.batch_size, opts.queue_batches
        )));
    }
    let total = items.len();
    let workers = match opts.workers {
        0 => rayon::current_num_threads(),
        n => n,
    }
    .clamp(1, total.max(1));
    let shared = Arc::new(Shared {
        queue: Mutex::new(items.into_iter()),
        permits: Mutex::new(opts.queue_batches.saturating_mul(opts.batch_size)),
        permit_freed: Condvar::new(),
        cancelled: AtomicBool::new(false),
        spec,
        limits: opts.limits,
        probe: Arc::new(Probe::default()),
    });
    let (tx, rx) = channel();
    let pool = if total == 0 {
        None
    } else {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(workers)
            .thread_name(|i| format!("quarry-decode-{i}"))
            .build()
            .map_err(|e| PipelineError::Threads(e.to_string()))?;
        for _ in 0..workers {
            let shared = Arc::clone(&shared);
            let tx: Sender<Prepared<T>> = tx.clone();
            shared.probe.running.fetch_add(1, Ordering::SeqCst);
            pool.spawn(move || work(&shared, &tx));
        }
        Some(pool)
    };
    drop(tx);
    Ok(PreparedBatches {
        rx,
        shared,
        batch_size: opts.batch_size,
        remaining: total,
        _pool: pool,
    })
}

/// Batches of prepared images, `batch_size` each (the last may be short), in completion order.
/// Dropping it stops the workers.
pub struct PreparedBatches<T> {
    rx: Receiver<Prepared<T>>,
    shared: Arc<Shared<T>>,
    batch_size: usize,
    /// Inputs not yet handed to the consumer.
    remaining: usize,
    /// Owns the worker threads; they exit once their loops end.
    _pool: Option<rayon::ThreadPool>,
}

impl<T> PreparedBatches<T> {
    /// Inputs not yet handed out.
    pub fn remaining(&self) -> usize {
        self.remaining
    }
}

impl<T> Iterator for PreparedBatches<T> {
    type Item = Vec<Prepared<T>>;

    fn next(&mut self) -> Option<Self::Item> {
        let want = self.batch_size.min(self.remaining);
        let mut batch = Vec::with_capacity(want);
        while batch.len() < want {
            match self.rx.recv() {
                Ok(prepared) => batch.push(prepared),
                // Every worker is gone: only possible if a thread died outside the per-file
                // panic guard. End rather than wait forever.
                Err(_) => {
                    self.remaining = batch.len();
                    break;
                }
            }
        }
        self.remaining -= batch.len();
        self.shared.release(batch.len());
        (!batch.is_empty()).then_some(batch)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let batches = self.remaining.div_ceil(self.batch_size);
        (0, Some(batches))
    }
}

impl<T> Drop for PreparedBatches<T> {
    fn drop(&mut self) {
        self.shared.cancelled.store(true, Ordering::SeqCst);
        // Taking the lock orders the flag before any worker's next wait.
        let _guard = self
            .shared
            .permits
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.shared.permit_freed.notify_all();
    }
}

struct Shared<T> {
    queue: Mutex<std::vec::IntoIter<(T, PathBuf)>>,
    /// Images that may still be started before the consumer takes a batch.
    permits: Mutex<usize>,
    permit_freed: Condvar,
    cancelled: AtomicBool,
    spec: PreprocessSpec,
    limits: DecodeLimits,
    probe: Arc<Probe>,
}

/// Counters the tests read to see the workers' state.
#[derive(Debug, Default)]
struct Probe {
    running: AtomicUsize,
    started: AtomicUsize,
    #[cfg(test)]
    live: tests::LiveCounter,
}

impl<T> Shared<T> {
    /// Waits for a permit; `false` when cancelled.
    fn acquire(&self) -> bool {
        let mut permits = self.permits.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if self.cancelled.load(Ordering::SeqCst) {
                return false;
            }
            if *permits > 0 {
                *permits -= 1;
                return true;
            }
            permits = self
                .permit_freed
                .wait(permits)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        *self.permits.lock().unwrap_or_else(|e| e.into_inner()) += n;
        self.permit_freed.notify_all();
    }
}

fn work<T>(shared: &Shared<T>, tx: &Sender<Prepared<T>>) {
    while shared.acquire() {
        let next = shared
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next();
        let Some((tag, path)) = next else {
            break;
        };
        shared.probe.started.fetch_add(1, Ordering::SeqCst);
        let result =
            catch_unwind(AssertUnwindSafe(|| prepare_one(&path, shared))).unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Err(PreprocessError::Decode {
                    path: path.clone(),
                    reason: format!("the decoder crashed: {what}"),
                })
            });
        if tx.send(Prepared { tag, path, result }).is_err() {
            break;
        }
    }
    shared.probe.running.fetch_sub(1, Ordering::SeqCst);
}

/// Reads the file once; hashes, sniffs, decodes and normalises those bytes.
fn prepare_one<T>(path: &Path, shared: &Shared<T>) -> Result<PreparedImage, PreprocessError> {
    let bytes = std::fs::read(path).map_err(|source| PreprocessError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let content_hash = ContentHash::of_bytes(&bytes);
    match sniff(&bytes[..bytes.len().min(SNIFF_LEN)]) {
        Sniffed::Image(_) => {}
        Sniffed::NotImage => {
            return Err(PreprocessError::Decode {
                path: path.to_path_buf(),
                reason: if bytes.is_empty() {
                    "empty file (0 bytes)".into()
                } else {
                    "content is not an image in a known format".into()
                },
            })
        }
    }
    let rgb = decode_bytes(&bytes, path, shared.limits)?;
    let info = info_with_displayed_size(&bytes, rgb.width(), rgb.height());
    let pixels = to_pixels(&rgb, &shared.spec);
    Ok(PreparedImage {
        pixels,
        info,
        content_hash,
        #[cfg(test)]
        _live: tests::LiveToken::new(&shared.probe),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::testutil;

    /// Counts live `PreparedImage`s and the peak.
    #[derive(Debug, Default)]
    pub(super) struct LiveCounter {
        now: AtomicUsize,
        peak: AtomicUsize,
    }

    #[derive(Debug)]
    pub(super) struct LiveToken(Arc<Probe>);

    impl LiveToken {
        pub(super) fn new(probe: &Arc<Probe>) -> Self {
            let now = probe.live.now.fetch_add(1, Ordering::SeqCst) + 1;
            probe.live.peak.fetch_max(now, Ordering::SeqCst);
            LiveToken(Arc::clone(probe))
        }
    }

    impl Drop for LiveToken {
        fn drop(&mut self) {
            self.0.live.now.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn spec(size: u32) -> PreprocessSpec {
        PreprocessSpec {
            size,
            mean: [0.48, 0.46, 0.41],
            std: [0.27, 0.26, 0.28],
            rescale_factor: 1.0 / 255.0,
        }
    }

    fn opts(batch_size: usize, queue_batches: usize, workers: usize) -> PipelineOptions {
        PipelineOptions {
            batch_size,
            queue_batches,
            workers,
            limits: DecodeLimits::default(),
        }
    }

    fn library(dir: &Path, n: u32) -> Vec<(u32, PathBuf)> {
        (0..n)
            .map(|i| {
                let path = dir.join(format!("img{i:03}.png"));
                // Varied sizes so that workers finish out of order.
                std::fs::write(&path, testutil::png(8 + (i * 13) % 90, 6 + (i * 7) % 50)).unwrap();
                (i, path)
            })
            .collect()
    }

    fn wait_for_workers_to_exit(probe: &Probe) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while probe.running.load(Ordering::SeqCst) > 0 {
            assert!(Instant::now() < deadline, "workers did not exit");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn results_equal_sequential_preprocessing_whatever_the_completion_order() {
        let dir = tempfile::tempdir().unwrap();
        let items = library(dir.path(), 21);
        let expected: HashMap<u32, PathBuf> = items.iter().cloned().collect();
        let batches: Vec<_> = prepare_batches(items, spec(24), opts(4, 2, 3))
            .unwrap()
            .collect();
        let sizes: Vec<_> = batches.iter().map(Vec::len).collect();
        assert_eq!(
            sizes,
            [4, 4, 4, 4, 4, 1],
            "full batches, the last one short"
        );
        let mut seen = Vec::new();
        for p in batches.into_iter().flatten() {
            assert_eq!(expected[&p.tag], p.path, "the tag travels with its path");
            let img = p.result.unwrap();
            let reference =
                crate::preprocess_file(&p.path, &spec(24), DecodeLimits::default()).unwrap();
            assert_eq!(
                img.pixels, reference,
                "bit-identical to the sequential path"
            );
            let bytes = std::fs::read(&p.path).unwrap();
            assert_eq!(img.content_hash, ContentHash::of_bytes(&bytes));
            let header = crate::image_info_from_bytes(&bytes, &p.path).unwrap();
            assert_eq!(img.info, header, "decoded size agrees with the header");
            seen.push(p.tag);
        }
        seen.sort();
        assert_eq!(
            seen,
            (0..21).collect::<Vec<_>>(),
            "every input exactly once"
        );
    }

    #[test]
    fn memory_stays_bounded_while_the_consumer_is_slow() {
        let dir = tempfile::tempdir().unwrap();
        let items = library(dir.path(), 48);
        let (batch, queue, workers) = (4, 2, 3);
        let mut batches = prepare_batches(items, spec(16), opts(batch, queue, workers)).unwrap();
        let probe = Arc::clone(&batches.shared.probe);
        let mut count = 0;
        for b in batches.by_ref() {
            count += b.len();
            // The model is slow: the workers run ahead until the queue is full, then wait.
            std::thread::sleep(Duration::from_millis(25));
            drop(b);
        }
        assert_eq!(count, 48);
        let peak = probe.live.peak.load(Ordering::SeqCst);
        let bound = (queue + 1) * batch;
        println!("peak live prepared images {peak}, bound {bound}");
        assert!(
            peak <= bound,
            "peak {peak} > (queue_batches + 1) × batch_size = {bound}"
        );
        assert!(peak <= (queue + workers + 1) * batch);
        assert!(
            peak > batch,
            "the workers ran ahead of the consumer (peak {peak})"
        );
        assert_eq!(probe.live.now.load(Ordering::SeqCst), 0, "nothing leaked");
    }

    #[test]
    fn dropping_the_iterator_stops_the_workers() {
        let dir = tempfile::tempdir().unwrap();
        let n = 200;
        let items: Vec<_> = (0..n).map(|i| (i, dir.path().join("same.png"))).collect();
        std::fs::write(dir.path().join("same.png"), testutil::png(64, 64)).unwrap();
        let (batch, queue) = (2, 1);
        let mut batches = prepare_batches(items, spec(16), opts(batch, queue, 2)).unwrap();
        let probe = Arc::clone(&batches.shared.probe);
        let first = batches.next().unwrap();
        assert_eq!(first.len(), batch);
        drop(batches);
        wait_for_workers_to_exit(&probe);
        let started = probe.started.load(Ordering::SeqCst);
        assert!(
            started <= batch + queue * batch,
            "{started} files started; permits allow the batch taken plus one queued batch"
        );
        drop(first);
        assert_eq!(probe.live.now.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn failures_stay_in_their_slots() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        let jpeg = testutil::jpeg(64, 48);
        std::fs::write(p("good.jpg"), &jpeg).unwrap();
        std::fs::write(p("zero.jpg"), b"").unwrap();
        std::fs::write(p("text.jpg"), b"not a photo").unwrap();
        std::fs::write(p("truncated.jpg"), &jpeg[..jpeg.len() / 2]).unwrap();
        std::fs::write(p("bomb.png"), testutil::png_claiming(30_000, 30_000)).unwrap();
        std::fs::write(p("phone.heic"), b"\0\0\0\x18ftypheic\0\0\0\0mif1heic").unwrap();
        let names = [
            "good.jpg",
            "zero.jpg",
            "text.jpg",
            "truncated.jpg",
            "bomb.png",
            "phone.heic",
            "absent.png",
        ];
        let items: Vec<_> = names.iter().map(|n| (n.to_string(), p(n))).collect();
        let started = Instant::now();
        let results: HashMap<String, Prepared<String>> =
            prepare_batches(items, spec(32), opts(3, 1, 2))
                .unwrap()
                .flatten()
                .map(|r| (r.tag.clone(), r))
                .collect();
        assert_eq!(results.len(), names.len());
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the bomb is refused, not decoded"
        );
        let err = |n: &str| {
            let e = results[n].result.as_ref().unwrap_err();
            assert!(e.to_string().contains(n), "{e} names the file");
            e
        };
        assert_eq!(
            results["good.jpg"].result.as_ref().unwrap().pixels.len(),
            3 * 32 * 32
        );
        assert!(err("zero.jpg").to_string().contains("empty file"));
        assert!(matches!(err("text.jpg"), PreprocessError::Decode { .. }));
        assert!(
            matches!(err("truncated.jpg"), PreprocessError::Decode { .. }),
            "{}",
            err("truncated.jpg")
        );
        assert!(matches!(
            err("bomb.png"),
            PreprocessError::TooLarge {
                width: 30_000,
                height: 30_000,
                ..
            }
        ));
        assert!(
            matches!(err("phone.heic"), PreprocessError::Decode { .. })
                && err("phone.heic").to_string().contains("HEIC"),
            "a HEIC header without an image is damaged: {}",
            err("phone.heic")
        );
        assert!(matches!(err("absent.png"), PreprocessError::Io { .. }));
    }

    #[test]
    fn unusable_settings_are_refused_and_empty_input_ends_at_once() {
        let none: Vec<(u8, PathBuf)> = Vec::new();
        assert!(matches!(
            prepare_batches(none.clone(), spec(8), opts(0, 1, 1)),
            Err(PipelineError::Options(_))
        ));
        assert!(matches!(
            prepare_batches(none.clone(), spec(8), opts(1, 0, 1)),
            Err(PipelineError::Options(_))
        ));
        assert!(matches!(
            prepare_batches(none.clone(), spec(0), opts(1, 1, 1)),
            Err(PipelineError::Spec(_))
        ));
        assert_eq!(
            prepare_batches(none, spec(8), opts(2, 1, 0))
                .unwrap()
                .count(),
            0
        );
    }
}
