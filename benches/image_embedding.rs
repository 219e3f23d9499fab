//! Image embedding throughput at the real `Salesforce/blip2-itm-vit-g` configuration (ViT-g
//! 1408×39 at 224 px, Q-Former 768×12, 32 queries) with random weights: pixels → 32 unit
//! vectors per image, the work `quarry index` does per photo.
//!
//! Compare with `tools/bench_torch_image_embedding.py` on the same machine, batch and thread
//! count. `QUARRY_BENCH_BATCH` (default 4) sets the batch; `QUARRY_BENCH_DTYPES` (default
//! "f32,f16,bf16") the ViT precisions measured.

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use quarry::model::{Blip2Config, RandomWeights};
use quarry::Retriever;

// The `quarry` binary's allocator (see src/main.rs), so these numbers are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn image_embedding(c: &mut Criterion) {
    let batch: usize = std::env::var("QUARRY_BENCH_BATCH")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(4);
    let dtypes = std::env::var("QUARRY_BENCH_DTYPES").unwrap_or_else(|_| "f32,f16,bf16".into());
    let config = Blip2Config::blip2_itm_vit_g();
    let device = Device::Cpu;
    let s = config.vision_config.image_size;
    let pixels = Tensor::randn(0f32, 1.0, (batch, 3, s, s), &device).unwrap();
    let mut group = c.benchmark_group("image_embedding_blip2_itm_vit_g");
    group.sample_size(10);
    group.throughput(Throughput::Elements(batch as u64));
    for name in dtypes.split(',') {
        let dtype = match name.trim() {
            "f32" => DType::F32,
            "f16" => DType::F16,
            "bf16" => DType::BF16,
            other => panic!("unknown dtype {other}"),
        };
        let vb = RandomWeights::var_builder(DType::F32, &device);
        let model = Retriever::new(&config, vb, dtype).unwrap();
        let out = model.embed_images(&pixels).unwrap();
        assert_eq!(out.dims(), &[batch, 32, 256]);
        group.bench_function(format!("{name}/batch{batch}"), |b| {
            b.iter(|| model.embed_images(&pixels).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, image_embedding);
criterion_main!(benches);
