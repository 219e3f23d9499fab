//! Captioning speed at the real `Salesforce/blip2-opt-2.7b` configuration (ViT-g, Q-Former,
//! OPT-2.7B) with random weights: one image → a caption of exactly N new tokens (min = max, so
//! every run does the same work), greedy and beam search, per precision.
//!
//! Compare with `tools/bench_torch_caption.py` on the same machine and settings. Environment:
//! `QUARRY_BENCH_CAPTION_DTYPES` (default "f32,bf16": the ViT and OPT precision),
//! `QUARRY_BENCH_CAPTION_BEAMS` (default "1,5"), `QUARRY_BENCH_NEW_TOKENS` (default 10).

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use quarry::model::opt::OptConfig;
use quarry::model::{Blip2Config, RandomWeights};
use quarry::{CaptionPrecision, Captioner, GenerationSettings};

// The `quarry` binary's allocator (see src/main.rs), so these numbers are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().to_string())
        .collect()
}

fn captioning(c: &mut Criterion) {
    let new_tokens: usize = std::env::var("QUARRY_BENCH_NEW_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mut config: Blip2Config = serde_json::from_str("{}").unwrap();
    config.image_token_index = Some(50265);
    let opt = OptConfig::opt_2_7b();
    let device = Device::Cpu;
    let pixels = Tensor::randn(0f32, 1.0, (1, 3, 224, 224), &device).unwrap();
    let mut group = c.benchmark_group("caption_blip2_opt_2_7b");
    group.sample_size(10);
    group.throughput(Throughput::Elements(new_tokens as u64));
    for dtype_name in env_list("QUARRY_BENCH_CAPTION_DTYPES", "f32,bf16") {
        let dtype = match dtype_name.as_str() {
            "f32" => DType::F32,
            "f16" => DType::F16,
            "bf16" => DType::BF16,
            other => panic!("unknown dtype {other}"),
        };
        let precision = CaptionPrecision {
            vision: dtype,
            language: dtype,
        };
        let model = Captioner::new(
            &config,
            &opt,
            RandomWeights::var_builder(DType::F32, &device),
            precision,
        )
        .unwrap();
        for beams in env_list("QUARRY_BENCH_CAPTION_BEAMS", "1,5") {
            let mut settings =
                GenerationSettings::blip2_caption(opt.eos_token_id, opt.pad_token_id);
            settings.num_beams = beams.parse().unwrap();
            settings.max_new_tokens = new_tokens;
            settings.min_new_tokens = new_tokens;
            let prompt = vec![vec![opt.bos_token_id]];
            let out = model.generate(&pixels, &prompt, &settings).unwrap();
            assert_eq!(out[0].token_ids.len(), new_tokens);
            group.bench_function(
                format!("{dtype_name}/beams{beams}/new_tokens{new_tokens}"),
                |b| b.iter(|| model.generate(&pixels, &prompt, &settings).unwrap()),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, captioning);
criterion_main!(benches);
