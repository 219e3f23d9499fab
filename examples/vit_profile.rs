//! Runs the real-size ViT a few times on fixed weights, for `perf record`.

use candle_core::{DType, Device, Tensor};

// Same allocator as the `quarry` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use quarry::model::{Blip2Config, RandomWeights};

fn main() {
    let batch: usize = std::env::args()
        .nth(1)
        .and_then(|b| b.parse().ok())
        .unwrap_or(1);
    let layers: usize = std::env::args()
        .nth(2)
        .and_then(|b| b.parse().ok())
        .unwrap_or(6);
    let mut config = Blip2Config::blip2_itm_vit_g();
    config.vision_config.num_hidden_layers = layers;
    let vb = RandomWeights::var_builder(DType::F32, &Device::Cpu);
    let vision =
        quarry::model::vision::VisionModel::new(&config.vision_config, vb.pp("vision_model"))
            .unwrap();
    let pixels = Tensor::randn(0f32, 1.0, (batch, 3, 224, 224), &Device::Cpu).unwrap();
    vision.forward(&pixels).unwrap();
    let t = std::time::Instant::now();
    for _ in 0..3 {
        vision.forward(&pixels).unwrap();
    }
    eprintln!(
        "per image per layer: {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3 / 3.0 / batch as f64 / layers as f64
    );
}
