//! Query latency at the real `Salesforce/blip2-itm-vit-g` configuration (random weights) on a
//! synthetic store: random unit vectors (32 × 256 per image) and word captions committed
//! through `Library::commit`, so the ANN graph, BM25 index and store are the real ones.
//!
//! Measures the text → image path without ITM (encode + ANN + BM25 + fusion: the ITC-only
//! p50, goal ≤ 50 ms on the 2-core box) with its per-stage breakdown, and the ITM re-ranking
//! cost per N (random ViT outputs of the real shape, 257 × 1408, as the feature cache holds).
//!
//! `QUARRY_BENCH_IMAGES` (default 10000) sets the store size; the store is built once into
//! `$CARGO_TARGET_DIR/bench-query-store-N` and reused (HNSW inserts of 320 k vectors take
//! minutes on 2 cores). `QUARRY_BENCH_ITM` (default "1,4,16,32") sets the N measured.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use quarry::indexer::PreprocessSpec;
use quarry::library::Library;
use quarry::model::{Blip2Config, RandomWeights};
use quarry::search::{SearchSettings, Searcher, TextQuery, Timing};
use quarry::store::{BatchWrite, ImageInfo, ModelFingerprint, ModelIdentity, NewCaption, NewImage};
use quarry::tokenize::TextTokenizer;
use quarry::Retriever;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const COLORS: [&str; 8] = [
    "red", "blue", "green", "yellow", "purple", "orange", "white", "black",
];
const THINGS: [&str; 8] = [
    "dog", "beach", "mountain", "car", "cat", "city", "forest", "boat",
];
const PLACES: [&str; 6] = [
    "at sunset",
    "in the snow",
    "near a lake",
    "on a street",
    "indoors",
    "at night",
];

/// SplitMix64: a fixed, dependency-free random stream.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn normal(&mut self) -> f32 {
        // Box–Muller.
        let u1 = ((self.next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
    fn unit(&mut self, dim: usize) -> Vec<f32> {
        let v: Vec<f32> = (0..dim).map(|_| self.normal()).collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect()
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

fn identity(config: &Blip2Config) -> ModelIdentity {
    ModelIdentity {
        retrieval: ModelFingerprint {
            name: "random-blip2-itm-vit-g".into(),
            fingerprint: "bench-random".into(),
            embed_dim: config.image_text_hidden_size,
            queries: config.num_query_tokens,
            image_size: config.vision_config.image_size,
        },
        captioner: None,
    }
}

fn store(config: &Blip2Config, n: usize) -> Library {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let dir = PathBuf::from(target).join(format!("bench-query-store-{n}"));
    let mut library = Library::open(&dir, &identity(config)).unwrap();
    let have = library.counts().unwrap().images as usize;
    if have >= n {
        return library;
    }
    let (q, d) = (config.num_query_tokens, config.image_text_hidden_size);
    let mut rng = Rng(have as u64 + 1);
    let started = Instant::now();
    for start in (have..n).step_by(500) {
        let mut write = BatchWrite::default();
        for i in start..(start + 500).min(n) {
            let vectors: Vec<f32> = (0..q).flat_map(|_| rng.unit(d)).collect();
            let caption = format!(
                "a {} {} {}",
                rng.pick(&COLORS),
                rng.pick(&THINGS),
                rng.pick(&PLACES)
            );
            write.new_images.push(NewImage {
                info: ImageInfo {
                    path: PathBuf::from(format!("/photos/{}/IMG_{i:05}.jpg", 2015 + i % 10)),
                    content_hash: i as u128 + 1,
                    size: 1 << 20,
                    modified_ns: 1_600_000_000_000_000_000 + i as i64,
                    width: 4000,
                    height: 3000,
                    format: "jpeg".into(),
                    captured_at: None,
                    captured_at_s: Some(1_500_000_000 + i as i64 * 3600),
                    camera_make: None,
                    camera_model: None,
                },
                vectors,
                caption: Some(NewCaption {
                    text: caption,
                    embedding: rng.unit(d),
                }),
                features: None,
            });
        }
        library.commit(&write).unwrap();
        eprintln!(
            "store: {} / {n} images ({:.0} s)",
            (start + 500).min(n),
            started.elapsed().as_secs_f64()
        );
    }
    library.checkpoint().unwrap();
    library
}

fn query_latency(c: &mut Criterion) {
    let n: usize = std::env::var("QUARRY_BENCH_IMAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let itm_ns: Vec<usize> = std::env::var("QUARRY_BENCH_ITM")
        .unwrap_or_else(|_| "1,4,16,32".into())
        .split(',')
        .map(|v| v.trim().parse().unwrap())
        .collect();
    let config = Blip2Config::blip2_itm_vit_g();
    let device = Device::Cpu;
    let retriever = Retriever::new(
        &config,
        RandomWeights::var_builder(DType::F32, &device),
        DType::F32,
    )
    .unwrap();
    let vocab =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/retrieval/small_a/vocab.txt");
    let tokenizer = TextTokenizer::new(TextTokenizer::from_vocab(&vocab).unwrap(), 512, 0).unwrap();
    let preprocess = PreprocessSpec {
        size: 224,
        mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
        std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
        rescale_factor: 1.0 / 255.0,
    };
    let library = store(&config, n);
    let searcher = Searcher::new(
        &retriever,
        &tokenizer,
        &preprocess,
        SearchSettings::for_device(&device),
    );
    let queries = [
        "a red dog at sunset",
        "boat near a lake",
        "a black cat indoors",
        "city at night",
        "green forest in the snow",
    ];

    // Stage breakdown over 50 ITC-only searches.
    let mut timings: Vec<Timing> = Vec::new();
    for i in 0..50 {
        let mut q = TextQuery::new(queries[i % queries.len()], 24);
        q.rerank = Some(0);
        timings.push(searcher.search_text(&library, &q).unwrap().timing);
    }
    let median = |f: fn(&Timing) -> f64| {
        let mut v: Vec<f64> = timings.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    eprintln!(
        "ITC-only breakdown, {n} images, median ms: encode {:.2}, ann {:.2}, bm25 {:.2}, fusion {:.2}, total {:.2}",
        median(|t| t.encode), median(|t| t.ann), median(|t| t.bm25), median(|t| t.fusion), median(|t| t.total)
    );

    let mut group = c.benchmark_group("query_latency_blip2_itm_vit_g");
    group.sample_size(20);
    let mut i = 0;
    group.bench_function(format!("itc_only/{n}_images"), |b| {
        b.iter(|| {
            i += 1;
            let mut q = TextQuery::new(queries[i % queries.len()], 24);
            q.rerank = Some(0);
            searcher.search_text(&library, &q).unwrap()
        })
    });
    group.bench_function("text_encode", |b| {
        b.iter(|| searcher.embed_text("a red dog at sunset").unwrap())
    });
    group.sample_size(10);
    let (t, w) = (257, config.vision_config.hidden_size);
    for &k in &itm_ns {
        let tokens: Vec<Tensor> = (0..k)
            .map(|_| Tensor::randn(0f32, 1.0, (1, t, w), &device).unwrap())
            .collect();
        group.bench_function(format!("itm/n{k}"), |b| {
            b.iter(|| searcher.itm_tokens(&tokens, "a red dog at sunset").unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, query_latency);
criterion_main!(benches);
