//! One forward pass of the real-size retrieval model with random weights, timed by stage:
//! a quick look before running the criterion benchmark.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use quarry::model::{Blip2Config, RandomWeights};
use quarry::Retriever;

// The `quarry` binary's allocator (see src/main.rs), so these numbers are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let batch: usize = std::env::args()
        .nth(1)
        .and_then(|b| b.parse().ok())
        .unwrap_or(1);
    let config = Blip2Config::blip2_itm_vit_g();
    let model = Retriever::new(
        &config,
        RandomWeights::var_builder(DType::F32, &Device::Cpu),
        DType::F32,
    )
    .unwrap();
    let pixels = Tensor::randn(0f32, 1.0, (batch, 3, 224, 224), &Device::Cpu).unwrap();
    for _ in 0..2 {
        let t = Instant::now();
        let tokens = model.image_tokens(&pixels).unwrap();
        let vit = t.elapsed();
        let t = Instant::now();
        let e = model.image_embeddings(&tokens).unwrap();
        println!(
            "batch {batch}: ViT {vit:?}, Q-Former+proj {:?}, out {:?}",
            t.elapsed(),
            e.dims()
        );
    }
}
