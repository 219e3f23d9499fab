//! `quarry train stage1|stage2|lm`: BLIP-2 training on a LAVIS annotation file + image folder.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use candle_core::DType;
use quarry::train::optim::AdamWSettings;
use quarry::train::vision::VisionObjectives;
use quarry::train::{
    train_language_model, train_stage1, train_stage2, train_vision_encoder, RunPaths,
    Stage1Options, Stage2Sources, TrainEvent, TrainSettings, TrainSummary,
};

/// Arguments of `train`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    stage: Stage,
}

#[derive(Debug, clap::Subcommand)]
enum Stage {
    /// Stage 1: the Q-Former against a frozen image encoder (ITC + ITM + ITG).
    Stage1(Stage1Args),
    /// Stage 2: the Q-Former as a soft visual prompt of a frozen OPT (language-modelling loss).
    Stage2(Stage2Args),
    /// Pre-train an OPT decoder alone on the captions (how the demo's language model is made).
    Lm(LmArgs),
    /// Pre-train the image encoder on `quarry synth` scenes (per-patch colour and shape labels).
    Vision(VisionArgs),
}

/// Data, starting folder, output and optimisation flags shared by every stage.
#[derive(Debug, clap::Args)]
struct Common {
    /// A `quarry synth` folder: DIR/annotations.json with image paths relative to DIR.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["annotations", "images"])]
    data: Option<PathBuf>,
    /// LAVIS annotation file ([{"image", "caption"}]), with --images.
    #[arg(long, value_name = "FILE", requires = "images")]
    annotations: Option<PathBuf>,
    /// Folder the annotation's image paths are relative to.
    #[arg(long, value_name = "DIR", requires = "annotations")]
    images: Option<PathBuf>,
    /// Starting model folder: config.json, preprocessor_config.json, tokenizer files, and
    /// optionally model.safetensors (initial values; tensors it lacks start fresh).
    #[arg(long, value_name = "DIR")]
    init: PathBuf,
    /// Output model folder (Hugging Face layout; the resumable state goes in DIR/training).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Passes over the images.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Image-text pairs per step.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Learning rate after warm-up (LAVIS: 1e-4).
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Learning rate at the end of the cosine schedule.
    #[arg(long, default_value_t = 1e-5)]
    min_lr: f64,
    /// Learning rate at the first step.
    #[arg(long, default_value_t = 1e-6)]
    warmup_lr: f64,
    /// Linear warm-up steps.
    #[arg(long, default_value_t = 2000)]
    warmup_steps: usize,
    /// AdamW weight decay (matrices only).
    #[arg(long, default_value_t = 0.05)]
    weight_decay: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f64,
    /// Seed of initialisation, data order, captions and negatives.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop after this many steps (the schedule still spans all epochs).
    #[arg(long)]
    max_steps: Option<usize>,
    /// Write a checkpoint every N steps (and at the end).
    #[arg(long, default_value_t = 200)]
    save_every: usize,
    /// Report progress every N steps.
    #[arg(long, default_value_t = 10)]
    log_every: usize,
    /// Continue the run whose checkpoint is in --out.
    #[arg(long)]
    resume: bool,
    /// Precision of the written weights.
    #[arg(long, value_enum, default_value = "f32")]
    save_dtype: SaveDtype,
    /// Where to compute: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Print JSON lines instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SaveDtype {
    F32,
    F16,
}

#[derive(Debug, clap::Args)]
struct Stage1Args {
    #[command(flatten)]
    common: Common,
    /// Take the frozen image encoder (vision_model.*) from this model folder.
    #[arg(long, value_name = "DIR")]
    vision_from: Option<PathBuf>,
    /// Train the image encoder too: pre-training an encoder, not BLIP-2's stage 1.
    #[arg(long)]
    train_vision: bool,
    /// Initialise the Q-Former from BERT weights (a folder with model.safetensors).
    #[arg(long, value_name = "DIR")]
    bert: Option<PathBuf>,
    /// Objectives to minimise, comma-separated (default all three, as BLIP-2). ITC's
    /// similarities are always computed: ITM draws its hard negatives from them.
    /// `--objectives itc` first aligns a Q-Former that starts from nothing much sooner;
    /// `--objectives itm` for a few dozen steps then moves ITM off the class prior, where it
    /// stays when trained together with ITC.
    #[arg(long, value_delimiter = ',', default_value = "itc,itm,itg")]
    objectives: Vec<Objective>,
    /// How many times the ITM loss counts in the minimised sum (BLIP-2: once). Above 1 it
    /// moves a small Q-Former's balance from ITC's ranking toward ITM's re-ranking.
    #[arg(long, default_value_t = 1.0, value_name = "WEIGHT")]
    itm_weight: f64,
    /// Give ITM one more negative per example: its caption with one colour, shape, size,
    /// count or direction word changed, or two colours exchanged ("a red circle left of a
    /// blue square" -> "... a green square"), so that it must check each fact. Made for
    /// `quarry synth` captions, where every such change is false.
    #[arg(long)]
    swapped_negatives: bool,
    /// With --swapped-negatives, the change may also make one object many ("a red circle ..."
    /// -> "three red circles ..."): ITM then learns to count, which the batch's hard negatives
    /// rarely ask of it because ITC already ranks the wrong counts low.
    #[arg(long, requires = "swapped_negatives")]
    multiplied_objects: bool,
    /// Hard negatives ITM draws per example from ITC's similarities, on each side (images for
    /// a text, texts for an image). BLIP-2 draws one; more show ITM the 2nd, 3rd, ... hardest
    /// candidates too, the ones re-ranking ITC's top k must tell apart (each costs one more
    /// joint pass per side).
    #[arg(long, default_value_t = 1, value_name = "N")]
    hard_negatives: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Objective {
    Itc,
    Itm,
    Itg,
}

#[derive(Debug, clap::Args)]
struct Stage2Args {
    #[command(flatten)]
    common: Common,
    /// The stage-1 retrieval folder: frozen image encoder and starting Q-Former.
    #[arg(long, value_name = "DIR")]
    qformer_from: PathBuf,
    /// The frozen language model: an OPTForCausalLM folder (config, weights, tokenizer).
    #[arg(long, value_name = "DIR")]
    language_model: PathBuf,
}

#[derive(Debug, clap::Args)]
struct LmArgs {
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, clap::Args)]
struct VisionArgs {
    #[command(flatten)]
    common: Common,
    /// Also teach each patch token its own cell of the patch grid, so that the encoder's output
    /// keeps where things are (the Q-Former reads nothing else; without it the demo encoder
    /// lost positions, and with them every "left of" and "in the top right").
    #[arg(long)]
    patch_places: bool,
    /// Keep the encoder's output near the starting encoder's: the mean squared distance
    /// between them ("drift") is minimised, this many times, beside the patch losses, so a
    /// Q-Former trained on the starting encoder still reads the new one.
    #[arg(long, value_name = "WEIGHT")]
    keep_features: Option<f64>,
}

impl Common {
    fn paths(&self) -> Result<RunPaths> {
        let (annotations, images) = match (&self.data, &self.annotations, &self.images) {
            (Some(d), None, None) => (d.join(quarry::synth::ANNOTATIONS_FILE), d.clone()),
            (None, Some(a), Some(i)) => (a.clone(), i.clone()),
            _ => bail!("give the training data as --data DIR, or --annotations FILE --images DIR"),
        };
        Ok(RunPaths {
            annotations,
            images,
            init: self.init.clone(),
            out: self.out.clone(),
        })
    }

    fn settings(&self) -> Result<TrainSettings> {
        Ok(TrainSettings {
            epochs: self.epochs,
            batch: self.batch,
            lr: self.lr,
            min_lr: self.min_lr,
            warmup_lr: self.warmup_lr,
            warmup_steps: self.warmup_steps,
            max_steps: self.max_steps,
            adamw: AdamWSettings {
                weight_decay: self.weight_decay,
                max_grad_norm: (self.max_grad_norm > 0.0).then_some(self.max_grad_norm),
                ..AdamWSettings::default()
            },
            seed: self.seed,
            save_every: self.save_every,
            log_every: self.log_every,
            resume: self.resume,
            save_dtype: match self.save_dtype {
                SaveDtype::F32 => DType::F32,
                SaveDtype::F16 => DType::F16,
            },
            device: quarry::device::parse_device(&self.device)?,
        })
    }
}

fn fmt_duration(s: f64) -> String {
    let s = s.max(0.0) as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

fn reporter(json: bool) -> impl FnMut(&TrainEvent) {
    move |event| match event {
        TrainEvent::Started {
            trained_tensors,
            trained_parameters,
            start_step,
            total_steps,
            prepare_s,
        } => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"event": "started", "trained_tensors": trained_tensors,
                        "trained_parameters": trained_parameters, "start_step": start_step,
                        "total_steps": total_steps, "prepare_s": prepare_s})
                );
            } else {
                let resumed = if *start_step > 0 {
                    format!(", resuming at step {start_step}")
                } else {
                    String::new()
                };
                eprintln!(
                    "training {trained_parameters} parameters in {trained_tensors} tensors for \
                     {total_steps} steps{resumed} (data ready in {prepare_s:.1} s)"
                );
            }
        }
        TrainEvent::Step(r) => {
            if json {
                let losses: serde_json::Map<String, serde_json::Value> = r
                    .losses
                    .iter()
                    .map(|(n, v)| (n.to_string(), serde_json::json!(v)))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({"event": "step", "step": r.step, "total_steps": r.total_steps,
                        "epoch": r.epoch, "losses": losses, "lr": r.lr, "grad_norm": r.grad_norm,
                        "pairs_per_s": r.pairs_per_s, "elapsed_s": r.elapsed_s})
                );
            } else {
                let losses: Vec<String> = r
                    .losses
                    .iter()
                    .map(|(n, v)| format!("{n} {v:.4}"))
                    .collect();
                let per_step = r.elapsed_s / r.step.max(1) as f64;
                let eta = per_step * (r.total_steps - r.step) as f64;
                eprintln!(
                    "step {}/{} (epoch {}) {} · lr {:.2e} · |g| {:.2} · {:.1} pairs/s · ETA {}",
                    r.step,
                    r.total_steps,
                    r.epoch + 1,
                    losses.join(" "),
                    r.lr,
                    r.grad_norm,
                    r.pairs_per_s,
                    fmt_duration(eta)
                );
            }
        }
        TrainEvent::Checkpoint { step, dir } => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"event": "checkpoint", "step": step, "dir": dir})
                );
            } else {
                eprintln!("checkpoint at step {step}: {}", dir.display());
            }
        }
    }
}

fn finish(summary: TrainSummary, json: bool) -> ExitCode {
    let obj = |l: &[(&str, f32)]| -> serde_json::Value {
        l.iter()
            .map(|(n, v)| (n.to_string(), serde_json::json!(v)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    if json {
        println!(
            "{}",
            serde_json::json!({"event": "done", "steps": summary.steps,
                "first_losses": obj(&summary.first_losses), "last_losses": obj(&summary.last_losses),
                "pairs_per_s": summary.pairs_per_s, "train_s": summary.train_s})
        );
    } else {
        eprintln!(
            "done: {} steps in {} ({:.1} pairs/s); losses {} → {}",
            summary.steps,
            fmt_duration(summary.train_s),
            summary.pairs_per_s,
            obj(&summary.first_losses),
            obj(&summary.last_losses)
        );
    }
    ExitCode::SUCCESS
}

pub fn run(args: Args) -> Result<ExitCode> {
    match args.stage {
        Stage::Stage1(a) => {
            let c = &a.common;
            let options = Stage1Options {
                vision_from: a.vision_from.clone(),
                train_vision: a.train_vision,
                bert_init: a.bert.clone(),
                objectives: quarry::train::stage1::Objectives {
                    itc: a.objectives.contains(&Objective::Itc),
                    itm: a.objectives.contains(&Objective::Itm),
                    itg: a.objectives.contains(&Objective::Itg),
                },
                itm_weight: Some(a.itm_weight),
                swapped_negatives: a.swapped_negatives,
                multiplied_objects: a.multiplied_objects,
                hard_negatives: Some(a.hard_negatives),
            };
            let summary =
                train_stage1(&c.paths()?, &options, &c.settings()?, &mut reporter(c.json))?;
            Ok(finish(summary, c.json))
        }
        Stage::Stage2(a) => {
            let c = &a.common;
            let sources = Stage2Sources {
                qformer_from: a.qformer_from.clone(),
                language_model: a.language_model.clone(),
            };
            let summary =
                train_stage2(&c.paths()?, &sources, &c.settings()?, &mut reporter(c.json))?;
            Ok(finish(summary, c.json))
        }
        Stage::Vision(a) => {
            let c = &a.common;
            let objectives = VisionObjectives {
                patch_places: a.patch_places,
                keep_features: a.keep_features,
            };
            let summary = train_vision_encoder(
                &c.paths()?,
                objectives,
                &c.settings()?,
                &mut reporter(c.json),
            )?;
            Ok(finish(summary, c.json))
        }
        Stage::Lm(a) => {
            let c = &a.common;
            let summary = train_language_model(&c.paths()?, &c.settings()?, &mut reporter(c.json))?;
            Ok(finish(summary, c.json))
        }
    }
}
