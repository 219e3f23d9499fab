//! Times one OPT-2.7B fc1 product at decode time (few rows) through quarry's `Linear`, in each
//! weight precision, to compare with PyTorch's `F.linear` on the same shapes.

use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor};
use quarry::model::layers::Linear;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let d = Device::Cpu;
    let w = Tensor::randn(0f32, 1.0, (10240, 2560), &d).unwrap();
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let layer = Linear::from_parts(w.to_dtype(dtype).unwrap(), None);
        for rows in [1usize, 5] {
            let x = Tensor::randn(0f32, 1.0, (rows, 2560), &d)
                .unwrap()
                .to_dtype(dtype)
                .unwrap();
            layer.forward(&x).unwrap();
            let t = Instant::now();
            for _ in 0..10 {
                layer.forward(&x).unwrap();
            }
            println!(
                "{dtype:?} rows {rows}: {:.2} ms",
                t.elapsed().as_secs_f64() * 100.0
            );
        }
    }
}
