//! Times the ViT-g block's matrix products in several operand layouts, to pick the fastest.

use std::time::Instant;

use candle_core::{Device, Tensor};

fn time<T>(what: &str, n: usize, mut f: impl FnMut() -> T) {
    f();
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(f());
    }
    println!(
        "{what:<44} {:>9.3} ms",
        t.elapsed().as_secs_f64() * 1e3 / n as f64
    );
}

fn main() {
    let d = Device::Cpu;
    for m in [257usize, 1028] {
        for (k, n) in [(1408usize, 6144usize), (6144, 1408), (1408, 4224)] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &d).unwrap();
            let w = Tensor::randn(0f32, 1.0, (n, k), &d).unwrap();
            let wt = w.t().unwrap().contiguous().unwrap();
            let gf = 2.0 * (m * k * n) as f64 / 1e9;
            println!("m={m} k={k} n={n}: {gf:.2} GFLOP");
            time("  x @ w.t() (strided rhs)", 3, || {
                x.matmul(&w.t().unwrap()).unwrap()
            });
            time("  x @ wt (contiguous [k,n])", 3, || x.matmul(&wt).unwrap());
            time("  (w @ x.t()).t()", 3, || {
                w.matmul(&x.t().unwrap())
                    .unwrap()
                    .t()
                    .unwrap()
                    .contiguous()
                    .unwrap()
            });
        }
    }
}
