//! AdamW with LAVIS's parameter groups, a linear warm-up then cosine learning-rate schedule,
//! and clipping of the global gradient norm.
//!
//! candle-nn has an AdamW, but it exposes neither its moment estimates (a resumed run must
//! continue with them, or its first steps after the restart are effectively un-warmed-up) nor
//! per-parameter weight decay; this one keeps both in the open.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

/// Optimiser settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWSettings {
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay, applied to matrices only (see [`decays`]).
    pub weight_decay: f64,
    /// Clip the global L2 norm of the gradients to this (`None`: no clipping).
    pub max_grad_norm: Option<f64>,
}

impl Default for AdamWSettings {
    /// LAVIS's BLIP-2 pre-training values: β = (0.9, 0.98), weight decay 0.05; clipping at 1.
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-8,
            weight_decay: 0.05,
            max_grad_norm: Some(1.0),
        }
    }
}

/// Whether a parameter gets weight decay: LAVIS exempts vectors (biases, LayerNorm weights,
/// scalars such as the temperature).
pub fn decays(name: &str, rank: usize) -> bool {
    rank >= 2 && !name.ends_with("bias") && !name.contains("LayerNorm") && !name.contains("norm")
}

/// The learning rate at `step` (0-based) of `total`: linear from `start_lr` to `peak_lr` over
/// `warmup` steps, then cosine from `peak_lr` down to `min_lr` at the last step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Learning rate at step 0.
    pub start_lr: f64,
    /// Learning rate at the end of warm-up.
    pub peak_lr: f64,
    /// Learning rate at the last step.
    pub min_lr: f64,
    /// Warm-up steps.
    pub warmup: usize,
    /// All steps of the run.
    pub total: usize,
}

impl Schedule {
    /// The learning rate of step `step`.
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup {
            let f = step as f64 / self.warmup as f64;
            return self.start_lr + (self.peak_lr - self.start_lr) * f;
        }
        let span = self.total.saturating_sub(self.warmup).max(1);
        let f = ((step - self.warmup) as f64 / span as f64).min(1.0);
        self.min_lr + 0.5 * (self.peak_lr - self.min_lr) * (1.0 + (std::f64::consts::PI * f).cos())
    }
}

struct Slot {
    name: String,
    var: Var,
    m: Tensor,
    v: Tensor,
    decay: bool,
}

/// AdamW over named variables.
pub struct AdamW {
    slots: Vec<Slot>,
    settings: AdamWSettings,
    /// Updates applied so far (the bias correction's t).
    pub step: usize,
}

impl std::fmt::Debug for AdamW {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdamW")
            .field("parameters", &self.slots.len())
            .field("step", &self.step)
            .finish()
    }
}

/// What one update did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateReport {
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    /// The learning rate used.
    pub lr: f64,
}

impl AdamW {
    /// An optimiser with zero moments for `vars`.
    pub fn new(vars: Vec<(String, Var)>, settings: AdamWSettings) -> candle_core::Result<Self> {
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                let zeros = var.as_tensor().zeros_like()?;
                Ok(Slot {
                    decay: decays(&name, var.rank()),
                    name,
                    m: zeros.clone(),
                    v: zeros,
                    var,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            slots,
            settings,
            step: 0,
        })
    }

    /// One update with learning rate `lr` from the gradients of a `backward()`. Variables
    /// without a gradient (unused by this loss) are left as they are.
    pub fn update(&mut self, grads: &GradStore, lr: f64) -> candle_core::Result<UpdateReport> {
        let mut sq = 0f64;
        for s in &self.slots {
            if let Some(g) = grads.get(s.var.as_tensor()) {
                sq += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
            }
        }
        let grad_norm = sq.sqrt();
        if !grad_norm.is_finite() {
            candle_core::bail!(
                "the gradient norm is {grad_norm}: the loss diverged (lower the learning rate)"
            );
        }
        let scale = match self.settings.max_grad_norm {
            Some(max) if grad_norm > max => max / (grad_norm + 1e-6),
            _ => 1.0,
        };
        self.step += 1;
        let t = self.step as i32;
        let st = self.settings;
        let bc1 = 1.0 - st.beta1.powi(t);
        let bc2 = 1.0 - st.beta2.powi(t);
        for s in &mut self.slots {
            let Some(g) = grads.get(s.var.as_tensor()) else {
                continue;
            };
            let g = (g * scale)?;
            s.m = ((&s.m * st.beta1)? + (&g * (1.0 - st.beta1))?)?;
            s.v = ((&s.v * st.beta2)? + (g.sqr()? * (1.0 - st.beta2))?)?;
            let m_hat = (&s.m / bc1)?;
            let v_hat = (&s.v / bc2)?;
            let update = (m_hat / (v_hat.sqrt()? + st.eps)?)?;
            let theta = s.var.as_tensor().detach();
            let theta = if s.decay {
                (theta * (1.0 - lr * st.weight_decay))?
            } else {
                theta
            };
            s.var.set(&(theta - (update * lr)?)?)?;
        }
        Ok(UpdateReport { grad_norm, lr })
    }

    /// The moment estimates by name (`adam_m.NAME`, `adam_v.NAME`), for a resumable checkpoint.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for s in &self.slots {
            out.insert(format!("adam_m.{}", s.name), s.m.clone());
            out.insert(format!("adam_v.{}", s.name), s.v.clone());
        }
        out
    }

    /// Restores moment estimates written by [`AdamW::state`]; every variable must have both.
    pub fn restore(
        &mut self,
        state: &HashMap<String, Tensor>,
        step: usize,
    ) -> candle_core::Result<()> {
        for s in &mut self.slots {
            let get = |kind: &str| {
                let key = format!("{kind}.{}", s.name);
                let t = state.get(&key).ok_or_else(|| {
                    candle_core::Error::Msg(format!("the training state lacks `{key}`"))
                })?;
                if t.shape() != s.var.shape() {
                    candle_core::bail!(
                        "`{key}` has shape {:?}, expected {:?}",
                        t.dims(),
                        s.var.dims()
                    );
                }
                t.to_device(s.var.device())
            };
            s.m = get("adam_m")?;
            s.v = get("adam_v")?;
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_warms_up_linearly_then_follows_a_cosine_to_the_minimum() {
        let s = Schedule {
            start_lr: 0.0,
            peak_lr: 1.0,
            min_lr: 0.1,
            warmup: 10,
            total: 110,
        };
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(5) - 0.5).abs() < 1e-12);
        assert!((s.lr(10) - 1.0).abs() < 1e-12);
        // Half-way through the cosine: (peak + min) / 2.
        assert!((s.lr(60) - 0.55).abs() < 1e-12);
        assert!((s.lr(110) - 0.1).abs() < 1e-12);
        assert!(s.lr(30) > s.lr(31));
    }

    #[test]
    fn one_step_matches_the_adamw_formula_with_clipping_and_decay_groups() {
        let dev = Device::Cpu;
        let w = Var::new(&[[1f32, -2.0]], &dev).unwrap();
        let b = Var::new(&[0.5f32], &dev).unwrap();
        let settings = AdamWSettings {
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
            max_grad_norm: Some(1.0),
        };
        let mut opt = AdamW::new(
            vec![("w".into(), w.clone()), ("x.bias".into(), b.clone())],
            settings,
        )
        .unwrap();
        // loss = 3·w00 + 4·w01 + 0·b → gradient (3, 4), norm 5, clipped to (0.6, 0.8).
        let loss = (w
            .as_tensor()
            .matmul(&Tensor::new(&[[3f32], [4.0]], &dev).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            + (b.as_tensor() * 0.0).unwrap().sum_all().unwrap())
        .unwrap();
        let grads = loss.backward().unwrap();
        let report = opt.update(&grads, 0.01).unwrap();
        assert!((report.grad_norm - 5.0).abs() < 1e-5);
        // First Adam step: m̂ = g, v̂ = g², so the step is lr·g/|g| = lr per element (sign of g),
        // after decay θ·(1 − lr·wd).
        let got = w.as_tensor().to_vec2::<f32>().unwrap();
        let expect = [1.0 * (1.0 - 0.001) - 0.01, -2.0 * (1.0 - 0.001) - 0.01];
        for (g, e) in got[0].iter().zip(expect) {
            assert!((g - e).abs() < 1e-6, "{g} vs {e}");
        }
        // The bias is not decayed and its gradient is zero: unchanged.
        assert_eq!(b.as_tensor().to_vec1::<f32>().unwrap(), vec![0.5]);
        // State round trip.
        let state = opt.state();
        let mut other = AdamW::new(
            vec![("w".into(), w.clone()), ("x.bias".into(), b)],
            settings,
        )
        .unwrap();
        other.restore(&state, 1).unwrap();
        assert_eq!(other.step, 1);
        assert!(other.restore(&HashMap::new(), 1).is_err());
    }
}
