//! Text-embedding and ITM throughput at the real `Salesforce/blip2-itm-vit-g` configuration
//! (Q-Former 768×12, 32 queries, ViT-g features of 257 tokens × 1408 at 224 px) with random
//! weights: the two Q-Former workloads of `quarry eval` besides the ViT.
//!
//! - `text_embeddings`: a batch of texts → ITC unit vectors (LAVIS: 25 010 COCO captions).
//! - `itm_one_image`: one image's cross-attention keys/values computed once, then a batch of
//!   texts scored against it — how `quarry eval` runs its ~770 pairs per COCO image.
//! - `itm_pairs`: the same pairs with the image features repeated per pair, keys/values
//!   recomputed every pair — what LAVIS's `compute_itm` does; the like-for-like comparison
//!   with `tools/bench_torch_retrieval_scoring.py`.
//!
//! Texts are random ids of `QUARRY_BENCH_TEXT_LEN` tokens (default 20, a typical COCO caption
//! with [CLS]/[SEP]); `QUARRY_BENCH_BATCH` (default 16) texts per batch. The ViT is built in
//! f16 only to save memory; it does not run here. Compare with the PyTorch script on the same
//! machine, batch and length.

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use quarry::model::{Blip2Config, RandomWeights};
use quarry::tokenize::batch_from_ids;
use quarry::Retriever;

// The `quarry` binary's allocator (see src/main.rs), so these numbers are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Deterministic token ids: [CLS], `len - 2` ordinary word pieces, [SEP].
fn texts(batch: usize, len: usize) -> Vec<Vec<u32>> {
    (0..batch)
        .map(|b| {
            let mut ids = vec![101u32];
            ids.extend((0..len - 2).map(|i| 1000 + ((b * 7919 + i * 104_729) % 28_000) as u32));
            ids.push(102);
            ids
        })
        .collect()
}

fn retrieval_scoring(c: &mut Criterion) {
    let batch = env_usize("QUARRY_BENCH_BATCH", 16);
    let len = env_usize("QUARRY_BENCH_TEXT_LEN", 20).max(2);
    let config = Blip2Config::blip2_itm_vit_g();
    let device = Device::Cpu;
    let model = Retriever::new(
        &config,
        RandomWeights::var_builder(DType::F32, &device),
        DType::F16,
    )
    .unwrap();
    let ids = texts(batch, len);
    let text = batch_from_ids(&ids, None, 0, &device).unwrap();
    let v = &config.vision_config;
    let features = Tensor::randn(0f32, 1.0, (1, v.num_tokens(), v.hidden_size), &device).unwrap();
    let repeated = features.repeat((batch, 1, 1)).unwrap();
    let memory = model.image_memory(&features).unwrap();
    assert_eq!(model.embed_texts(&text).unwrap().dims(), &[batch, 256]);
    let one = model.itm_one_image(&memory, &text).unwrap().logit;
    let pairs = model.itm_pairs(&repeated, &text).unwrap().logit;
    // Same pairs both ways: the cached keys/values change nothing but the speed.
    for (a, b) in one.iter().zip(&pairs) {
        assert!((a - b).abs() < 1e-3, "{a} vs {b}");
    }

    let mut group = c.benchmark_group("retrieval_scoring_blip2_itm_vit_g");
    group.sample_size(10);
    group.throughput(Throughput::Elements(batch as u64));
    group.bench_function(format!("text_embeddings/batch{batch}/len{len}"), |b| {
        b.iter(|| model.embed_texts(&text).unwrap())
    });
    group.bench_function(format!("itm_one_image/batch{batch}/len{len}"), |b| {
        b.iter(|| model.itm_one_image(&memory, &text).unwrap())
    });
    group.bench_function(format!("itm_pairs/batch{batch}/len{len}"), |b| {
        b.iter(|| model.itm_pairs(&repeated, &text).unwrap())
    });
    group.finish();
}

criterion_group!(benches, retrieval_scoring);
criterion_main!(benches);
