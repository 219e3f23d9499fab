//! Training throughput at the demo model's size: one stage-1 step (ITC + ITM + ITG, backward,
//! AdamW update) and one stage-2 step (OPT language-modelling loss through the frozen decoder)
//! on a batch of 32 synthetic captions against frozen image tokens.
//!
//! `cargo bench --bench training`; pairs/s = 32 / the reported time per step.

use std::path::Path;

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use quarry::model::opt::OptConfig;
use quarry::model::Blip2Config;
use quarry::train::optim::{AdamW, AdamWSettings};
use quarry::train::params::{ParamStore, Trainable};
use quarry::train::stage1::{Stage1Model, QFORMER_PREFIXES};
use quarry::train::stage2::{Stage2Model, STAGE2_PREFIXES};

const BATCH: usize = 32;

fn recipe(name: &str) -> (std::path::PathBuf, serde_json::Value) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/recipes")
        .join(name);
    let config = serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    (dir, config)
}

fn captions() -> Vec<String> {
    (0..BATCH)
        .map(|i| quarry::synth::scene_at(99, i, 32).1.caption[0].clone())
        .collect()
}

fn bench(c: &mut Criterion) {
    let dev = Device::Cpu;
    let (dir, json) = recipe("demo-retrieval");
    let config: Blip2Config = serde_json::from_value(json).unwrap();
    let tokens = Tensor::randn(
        0f32,
        1.0,
        (
            BATCH,
            config.vision_config.num_tokens(),
            config.vision_config.hidden_size,
        ),
        &dev,
    )
    .unwrap();
    let tokenizer = quarry::checkpoint::retrieval_tokenizer(&dir, &config).unwrap();
    let texts = captions();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let ids = tokenizer.encode(&refs).unwrap();
    let positives =
        quarry::train::losses::Positives::from_groups(&(0..BATCH as u64).collect::<Vec<_>>());
    let store = ParamStore::new(
        Default::default(),
        Trainable::prefixes(&QFORMER_PREFIXES),
        0,
        &dev,
    );
    let temp = store
        .extra_var("temp", &Tensor::new(0.07f32, &dev).unwrap())
        .unwrap();
    let model = Stage1Model::new(&config, store.var_builder(), temp, 30522).unwrap();
    let mut opt = AdamW::new(store.trained(), AdamWSettings::default()).unwrap();
    let mut rng = quarry::synth::rng::SplitMix64::for_scene(0, 0);
    let mut group = c.benchmark_group("training");
    group.sample_size(10);
    group.bench_function("stage1_step_batch32", |b| {
        b.iter(|| {
            let l = model
                .losses(
                    &tokens,
                    &ids,
                    Default::default(),
                    &positives,
                    &mut rng,
                    Default::default(),
                )
                .unwrap();
            let grads = l.total().unwrap().backward().unwrap();
            opt.update(&grads, 1e-4).unwrap();
        })
    });

    let (_, json) = recipe("demo-captioner");
    let config: Blip2Config = serde_json::from_value(json.clone()).unwrap();
    let opt_config: OptConfig = serde_json::from_value(json["text_config"].clone()).unwrap();
    let store = ParamStore::new(
        Default::default(),
        Trainable::prefixes(&STAGE2_PREFIXES),
        0,
        &dev,
    );
    let model = Stage2Model::new(&config, &opt_config, store.var_builder()).unwrap();
    let mut adam = AdamW::new(store.trained(), AdamWSettings::default()).unwrap();
    let caption_ids: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| {
            let mut ids = vec![2u32];
            ids.extend(t.bytes().take(14).map(|b| u32::from(b) + 100));
            ids.push(50118);
            ids
        })
        .collect();
    group.bench_function("stage2_step_batch32", |b| {
        b.iter(|| {
            let l = model.loss(&tokens, &caption_ids).unwrap();
            let grads = l.backward().unwrap();
            adam.update(&grads, 1e-4).unwrap();
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
