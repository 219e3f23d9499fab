//! Decode + preprocess throughput on real photos: what `quarry index` does per file before the
//! model (read, hash, content sniff, decode with EXIF orientation, Pillow-exact bicubic resize,
//! normalise), through the bounded pipeline, at BLIP-2's 224 px and the 364 px of the larger
//! ViT configurations.
//!
//! Photos: the folder in `QUARRY_PHOTOS` (e.g. the photos that ship inside the scikit-image
//! wheel: `pip download scikit-image --no-deps`, unzip `skimage/data/*.png|jpg`), else the
//! repository's `fixtures/retrieval/images`. Never commit such photos.
//!
//! The pipeline runs `RAYON_NUM_THREADS` workers (default: one per core); run with 1 and 2 and
//! divide the throughput by the worker count for images/s per core:
//! `RAYON_NUM_THREADS=1 cargo bench --bench preprocess`. `sequential/*` is the same work on the
//! calling thread without the pipeline, the per-core reference. `QUARRY_BENCH_SIZES` (default
//! "224,364") sets the sides measured.
//!
//! On a shared machine wall-clock rates move with the other load, so after the criterion runs
//! the bench also prints images per CPU-second of this process (Linux `/proc/self/stat`): the
//! per-core rate with the contention mostly factored out.

use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use quarry::indexer::{
    prepare_batches, preprocess_file, walk_library, DecodeLimits, PipelineOptions, PreprocessSpec,
    WalkOptions,
};

// The `quarry` binary's allocator (see src/main.rs), so these numbers are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn photos() -> Vec<PathBuf> {
    let root = std::env::var_os("QUARRY_PHOTOS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/retrieval/images")
        });
    let walk = walk_library(std::slice::from_ref(&root), &WalkOptions::default()).unwrap();
    assert!(!walk.files.is_empty(), "no images under {}", root.display());
    let megapixels: f64 = walk
        .files
        .iter()
        .map(|f| {
            let info = quarry::indexer::read_image_info(&f.path).unwrap();
            f64::from(info.width) * f64::from(info.height) / 1e6
        })
        .sum();
    eprintln!(
        "{} photos from {} ({:.2} megapixels in all, {:.1} MB)",
        walk.files.len(),
        root.display(),
        megapixels,
        walk.files.iter().map(|f| f.size).sum::<u64>() as f64 / 1e6
    );
    walk.files.into_iter().map(|f| f.path).collect()
}

fn spec(size: u32) -> PreprocessSpec {
    PreprocessSpec {
        size,
        mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
        std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
        rescale_factor: 1.0 / 255.0,
    }
}

fn preprocess(c: &mut Criterion) {
    let photos = photos();
    let workers = rayon::current_num_threads();
    let sizes = std::env::var("QUARRY_BENCH_SIZES").unwrap_or_else(|_| "224,364".into());
    let mut group = c.benchmark_group("preprocess");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(photos.len() as u64));
    for size in sizes.split(',').map(|s| s.trim().parse::<u32>().unwrap()) {
        let spec = spec(size);
        group.bench_function(format!("sequential/{size}px"), |b| {
            b.iter(|| {
                for p in &photos {
                    let pixels = preprocess_file(p, &spec, DecodeLimits::default()).unwrap();
                    assert_eq!(pixels.len(), spec.pixel_count());
                }
            })
        });
        group.bench_function(format!("pipeline/{size}px/{workers}workers"), |b| {
            b.iter(|| {
                let items: Vec<_> = photos.iter().map(|p| ((), p.clone())).collect();
                let opts = PipelineOptions {
                    batch_size: 4,
                    queue_batches: 2,
                    workers,
                    limits: DecodeLimits::default(),
                };
                let mut n = 0;
                for batch in prepare_batches(items, spec.clone(), opts).unwrap() {
                    for p in batch {
                        assert_eq!(p.result.unwrap().pixels.len(), spec.pixel_count());
                        n += 1;
                    }
                }
                assert_eq!(n, photos.len());
            })
        });
    }
    group.finish();
    for size in sizes.split(',').map(|s| s.trim().parse::<u32>().unwrap()) {
        per_cpu_second(&photos, &spec(size), workers);
    }
}

/// User + system CPU seconds of this process so far, from `/proc/self/stat` (100 ticks/s).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn per_cpu_second(photos: &[PathBuf], spec: &PreprocessSpec, workers: usize) {
    let passes = 8;
    let (Some(cpu0), wall0) = (cpu_seconds(), std::time::Instant::now()) else {
        return;
    };
    let items: Vec<_> = (0..passes)
        .flat_map(|_| photos.iter().map(|p| ((), p.clone())))
        .collect();
    let n = items.len();
    let opts = PipelineOptions {
        batch_size: 4,
        queue_batches: 2,
        workers,
        limits: DecodeLimits::default(),
    };
    let done: usize = prepare_batches(items, spec.clone(), opts)
        .unwrap()
        .map(|b| b.into_iter().filter(|p| p.result.is_ok()).count())
        .sum();
    assert_eq!(done, n);
    let cpu = cpu_seconds().unwrap() - cpu0;
    let wall = wall0.elapsed().as_secs_f64();
    println!(
        "preprocess {}px, {workers} workers: {:.1} images per CPU-second (per core); \
         {:.1} images/s wall, {:.1} per worker; {n} images",
        spec.size,
        n as f64 / cpu,
        n as f64 / wall,
        n as f64 / wall / workers as f64
    );
}

criterion_group!(benches, preprocess);
criterion_main!(benches);
