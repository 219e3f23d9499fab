//! Vector index: build rate, search latency, resident memory per image and recall, on clustered
//! synthetic BLIP-2-shaped data (32 unit vectors × 256 per image, 64 topics, low intrinsic
//! dimension as in the recall test).
//!
//! Memory: the resident-set growth over building the index (inputs allocated before), divided by
//! the image count, then × 100 000 for "per 100k images". The extrapolation is linear because
//! every per-point cost is bounded (f16 vector, ≤ 2·M links on layer 0 and M above, f32 owner
//! vectors); only HNSW's layer count grows, logarithmically, and upper layers hold 1/M of the
//! points. Environment: `QUARRY_BENCH_ANN_IMAGES` (default 2000; the
//! index grows linearly, see above), `QUARRY_BENCH_ANN_SEED`.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use quarry::ann::{AnnParams, MultiVectorIndex};

// The `quarry` binary's allocator (see src/main.rs), so these numbers are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DIM: usize = 256;
const PER_IMAGE: usize = 32;

struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn normal(&mut self) -> f32 {
        let u1 = ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64).max(1e-300);
        let u2 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
    fn around(&mut self, v: &[f32], spread: f32) -> Vec<f32> {
        let mut out: Vec<f32> = v.iter().map(|x| x + spread * self.normal()).collect();
        let n = out.iter().map(|x| x * x).sum::<f32>().sqrt();
        out.iter_mut().for_each(|x| *x /= n);
        out
    }
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ann(c: &mut Criterion) {
    let images = env_usize("QUARRY_BENCH_ANN_IMAGES", 2_000);
    let seed = env_usize("QUARRY_BENCH_ANN_SEED", 42) as u64;
    let mut rng = Rng(seed);
    // Same model as the recall test (src/ann/tests.rs `Synth`): 64 topics in a 32-d latent
    // space, projected to 256-d with 5 % full-rank noise; owners near topics, vectors near owners.
    let latent = 32;
    let lnorm = 1.0 / (latent as f32).sqrt();
    let proj: Vec<f32> = (0..DIM * latent).map(|_| rng.normal() * lnorm).collect();
    let embed = |rng: &mut Rng, z: &[f32]| -> Vec<f32> {
        let noise = 0.05 / (DIM as f32).sqrt();
        let v: Vec<f32> = (0..DIM)
            .map(|r| {
                let row = &proj[r * latent..(r + 1) * latent];
                row.iter().zip(z).map(|(a, b)| a * b).sum::<f32>() + noise * rng.normal()
            })
            .collect();
        rng.around(&v, 0.0)
    };
    let centres: Vec<Vec<f32>> = (0..64)
        .map(|_| rng.around(&vec![0.0; latent], 1.0))
        .collect();
    let mut bases = Vec::with_capacity(images);
    let data: Vec<Vec<f32>> = (0..images)
        .map(|_| {
            let t = (rng.next_u64() % 64) as usize;
            let base = rng.around(&centres[t], 1.2 * lnorm);
            let v = (0..PER_IMAGE)
                .flat_map(|_| {
                    let z = rng.around(&base, lnorm);
                    embed(&mut rng, &z)
                })
                .collect();
            bases.push(base);
            v
        })
        .collect();
    let queries: Vec<Vec<f32>> = (0..100)
        .map(|i| {
            let z = if i % 2 == 0 {
                rng.around(&centres[i % 64], 1.5 * lnorm)
            } else {
                let o = (rng.next_u64() % images as u64) as usize;
                rng.around(&bases[o], lnorm)
            };
            embed(&mut rng, &z)
        })
        .collect();

    let params = AnnParams::default();
    let rss_before = rss_bytes();
    let t = Instant::now();
    let mut index = MultiVectorIndex::new(DIM, params).unwrap();
    for (chunk_no, chunk) in data.chunks(256).enumerate() {
        let base = (chunk_no * 256) as u64;
        index
            .insert_many(
                chunk
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (base + i as u64, v.as_slice())),
            )
            .unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    let grown = rss_bytes().saturating_sub(rss_before);
    let points = images * PER_IMAGE;
    let per_image = grown as f64 / images as f64;
    println!(
        "ann build: {images} images, {points} points in {secs:.1} s = {:.0} points/s = {:.1} images/s \
         (threads: {}, {params:?})",
        points as f64 / secs,
        images as f64 / secs,
        rayon::current_num_threads()
    );
    println!(
        "ann memory: RSS +{:.1} MiB = {:.1} KiB/image (of which f32 owner vectors {:.1} KiB) \
         → {:.2} GiB per 100k images (linear extrapolation)",
        grown as f64 / (1 << 20) as f64,
        per_image / 1024.0,
        (PER_IMAGE * DIM * 4) as f64 / 1024.0,
        per_image * 100_000.0 / (1u64 << 30) as f64
    );
    let (mut recall, n) = (0.0, queries.len());
    for q in &queries {
        let got = index.search(q, 10).unwrap();
        let truth = index.search_exact(q, 10).unwrap();
        recall += got
            .iter()
            .filter(|h| truth.iter().any(|t| t.owner == h.owner))
            .count() as f64
            / truth.len() as f64;
    }
    println!(
        "ann Recall@10 vs brute force: {:.4} over {n} queries",
        recall / n as f64
    );

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ann");
    let t = Instant::now();
    index.save(&dir, 1).unwrap();
    let save_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let (loaded, _) = MultiVectorIndex::load(&dir).unwrap().unwrap();
    println!(
        "ann persistence: save {save_s:.2} s, load {:.2} s, {} points",
        t.elapsed().as_secs_f64(),
        loaded.points()
    );
    drop(loaded);

    let mut group = c.benchmark_group(format!("ann_{images}_images"));
    group.sample_size(20);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    for k in [10, 100] {
        let mut i = 0;
        group.bench_function(format!("search_k{k}"), |b| {
            b.iter(|| {
                i += 1;
                index.search(&queries[i % queries.len()], k).unwrap()
            })
        });
    }
    let mut i = 0;
    group.bench_function("search_set_32_queries_k10", |b| {
        b.iter(|| {
            i += 1;
            index.search_set(&data[i % data.len()], 10).unwrap()
        })
    });
    let mut i = 0;
    group.bench_function("search_exact_k10", |b| {
        b.iter(|| {
            i += 1;
            index.search_exact(&queries[i % queries.len()], 10).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, ann);
criterion_main!(benches);
