//! The tensors a training run reads and updates, under their checkpoint names.
//!
//! The model code builds itself from a `VarBuilder` and never knows whether it is being trained.
//! [`ParamStore`] is the backend behind that builder: a tensor the run trains is handed out as a
//! candle [`Var`] (so the graph records every use of it and `backward` reaches it); a frozen
//! tensor (the image encoder, the language model) is handed out as a plain tensor, so no
//! gradient is computed for it. A tensor the source checkpoint lacks is created with the
//! initialisation transformers uses for BLIP-2 (normal, std 0.02; biases 0; LayerNorm weights 1),
//! drawn from a stream seeded by the run's seed and the tensor's name, so the initial model does
//! not depend on the order in which the model code asks for its tensors.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::synth::rng::SplitMix64;

/// The standard deviation transformers' `_init_weights` uses for BLIP-2 (`initializer_range`).
pub const INIT_STD: f32 = 0.02;

/// Which tensors a run updates.
#[derive(Debug, Clone)]
pub struct Trainable {
    prefixes: Vec<String>,
}

impl Trainable {
    /// Tensors whose name starts with one of `prefixes` are trained; all others are frozen.
    pub fn prefixes(prefixes: &[&str]) -> Self {
        Self {
            prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
        }
    }

    /// Whether `name` is trained.
    pub fn contains(&self, name: &str) -> bool {
        self.prefixes.iter().any(|p| name.starts_with(p.as_str()))
    }
}

#[derive(Default)]
struct Inner {
    vars: BTreeMap<String, Var>,
    frozen: BTreeMap<String, Tensor>,
}

/// The backend of a training run's `VarBuilder`: initial values, trained variables and frozen
/// tensors, all f32 on one device.
pub struct ParamStore {
    source: HashMap<String, Tensor>,
    trainable: Trainable,
    seed: u64,
    device: Device,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for ParamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.lock().expect("param store lock");
        f.debug_struct("ParamStore")
            .field("trained", &inner.vars.len())
            .field("frozen", &inner.frozen.len())
            .finish()
    }
}

impl ParamStore {
    /// A store whose initial values come from `source` (checkpoint tensors by name) where
    /// present, and from the seeded initialisation elsewhere.
    pub fn new(
        source: HashMap<String, Tensor>,
        trainable: Trainable,
        seed: u64,
        device: &Device,
    ) -> Self {
        Self {
            source,
            trainable,
            seed,
            device: device.clone(),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// A `VarBuilder` over this store, in f32.
    pub fn var_builder(&self) -> VarBuilder<'_> {
        VarBuilder::from_backend(Box::new(self), DType::F32, self.device.clone())
    }

    /// The trained variables by name (sorted, so optimiser state lines up across runs).
    pub fn trained(&self) -> Vec<(String, Var)> {
        let inner = self.inner.lock().expect("param store lock");
        inner
            .vars
            .iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect()
    }

    /// Every tensor the model read, trained and frozen, by name: what a checkpoint holds.
    pub fn all_tensors(&self) -> BTreeMap<String, Tensor> {
        let inner = self.inner.lock().expect("param store lock");
        let mut all = inner.frozen.clone();
        for (n, v) in &inner.vars {
            all.insert(n.clone(), v.as_tensor().clone());
        }
        all
    }

    /// A trained scalar or tensor that the model code does not ask for (e.g. the ITC
    /// temperature), created with `init` unless the source has it.
    pub fn extra_var(&self, name: &str, init: &Tensor) -> candle_core::Result<Tensor> {
        let mut inner = self.inner.lock().expect("param store lock");
        if let Some(v) = inner.vars.get(name) {
            return Ok(v.as_tensor().clone());
        }
        let value = match self.source.get(name) {
            Some(t) => t.to_dtype(DType::F32)?.to_device(&self.device)?,
            None => init.to_dtype(DType::F32)?.to_device(&self.device)?,
        };
        let var = Var::from_tensor(&value)?;
        let t = var.as_tensor().clone();
        inner.vars.insert(name.to_string(), var);
        Ok(t)
    }

    fn initial(&self, shape: &Shape, name: &str) -> candle_core::Result<Tensor> {
        if let Some(t) = self.source.get(name) {
            if t.shape() != shape {
                candle_core::bail!(
                    "initial tensor `{name}` has shape {:?}, the configuration implies {:?}",
                    t.dims(),
                    shape.dims()
                );
            }
            return t.to_dtype(DType::F32)?.to_device(&self.device);
        }
        fresh_init(shape, name, self.seed, &self.device)
    }
}

/// The value transformers' BLIP-2 `_init_weights` gives a new tensor, by its name: biases
/// (including EVA's `q_bias`/`v_bias`) 0, LayerNorm weights 1, everything else (linear and
/// embedding weights, query tokens, positions, class token) normal with std 0.02.
pub fn fresh_init(
    shape: &Shape,
    name: &str,
    seed: u64,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let n = shape.elem_count();
    let leaf = name.rsplit('.').next().unwrap_or(name);
    let is_norm = name.contains("LayerNorm")
        || name.contains("layernorm")
        || name.contains("layer_norm")
        || name.contains("ln_");
    if leaf == "bias" || leaf.ends_with("_bias") {
        return Tensor::zeros(shape, DType::F32, device);
    }
    if is_norm && leaf == "weight" {
        return Tensor::ones(shape, DType::F32, device);
    }
    let mut rng = SplitMix64::for_scene(seed, name_hash(name));
    let values: Vec<f32> = (0..n).map(|_| normal(&mut rng) * INIT_STD).collect();
    Tensor::from_vec(values, shape, device)
}

fn name_hash(name: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(name.as_bytes())
}

/// A standard normal sample (Box–Muller).
pub fn normal(rng: &mut SplitMix64) -> f32 {
    let u1 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let r = (-2.0 * (1.0 - u1).ln()).sqrt();
    (r * (std::f64::consts::TAU * u2).cos()) as f32
}

impl SimpleBackend for &ParamStore {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut inner = self.inner.lock().expect("param store lock");
        let t = if let Some(v) = inner.vars.get(name) {
            v.as_tensor().clone()
        } else if let Some(t) = inner.frozen.get(name) {
            t.clone()
        } else {
            let value = self.initial(&s, name)?;
            if self.trainable.contains(name) {
                let var = Var::from_tensor(&value)?;
                let t = var.as_tensor().clone();
                inner.vars.insert(name.to_string(), var);
                t
            } else {
                inner.frozen.insert(name.to_string(), value.clone());
                value
            }
        };
        if t.shape() != &s {
            candle_core::bail!(
                "tensor `{name}` is asked for with shape {:?} but has {:?}",
                s.dims(),
                t.dims()
            );
        }
        let t = t.to_device(dev)?;
        if t.dtype() == dtype {
            Ok(t)
        } else {
            t.to_dtype(dtype)
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let inner = self.inner.lock().expect("param store lock");
        let t = match (inner.vars.get(name), inner.frozen.get(name)) {
            (Some(v), _) => v.as_tensor().clone(),
            (None, Some(t)) => t.clone(),
            (None, None) => match self.source.get(name) {
                Some(t) => t.clone(),
                None => candle_core::bail!("tensor `{name}` is not in the checkpoint"),
            },
        };
        t.to_device(dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        let inner = self.inner.lock().expect("param store lock");
        inner.vars.contains_key(name)
            || inner.frozen.contains_key(name)
            || self.source.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_values_follow_transformers_rules_and_do_not_depend_on_request_order() {
        let dev = Device::Cpu;
        let store = ParamStore::new(HashMap::new(), Trainable::prefixes(&["q"]), 5, &dev);
        let vb = store.var_builder();
        let b = vb.get(4, "qformer.layer.0.dense.bias").unwrap();
        let ln = vb.get(4, "qformer.LayerNorm.weight").unwrap();
        let w = vb.get((64, 64), "qformer.layer.0.dense.weight").unwrap();
        assert_eq!(b.to_vec1::<f32>().unwrap(), vec![0.0; 4]);
        assert_eq!(ln.to_vec1::<f32>().unwrap(), vec![1.0; 4]);
        let w: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        let mean = w.iter().sum::<f32>() / w.len() as f32;
        let std = (w.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / w.len() as f32).sqrt();
        assert!(mean.abs() < 0.002, "mean {mean}");
        assert!((std - INIT_STD).abs() < 0.002, "std {std}");
        // Another store asking in another order gets the same values.
        let other = ParamStore::new(HashMap::new(), Trainable::prefixes(&["q"]), 5, &dev);
        let w2 = other
            .var_builder()
            .get((64, 64), "qformer.layer.0.dense.weight")
            .unwrap();
        assert_eq!(w2.flatten_all().unwrap().to_vec1::<f32>().unwrap(), w);
        assert_eq!(store.trained().len(), 3);
    }

    #[test]
    fn frozen_tensors_come_from_the_source_and_take_no_gradient() {
        let dev = Device::Cpu;
        let mut source = HashMap::new();
        source.insert(
            "vision.w".to_string(),
            Tensor::new(&[1f32, 2.0], &dev).unwrap(),
        );
        let store = ParamStore::new(source, Trainable::prefixes(&["head"]), 0, &dev);
        let vb = store.var_builder();
        let frozen = vb.get(2, "vision.w").unwrap();
        let trained = vb.get(2, "head.w").unwrap();
        assert!(!frozen.track_op());
        assert!(trained.track_op());
        assert_eq!(frozen.to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
        assert!(vb.get(3, "vision.w").is_err(), "a wrong shape is refused");
        let names: Vec<String> = store.trained().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec!["head.w".to_string()]);
        assert_eq!(store.all_tensors().len(), 2);
    }
}
