//! Subcommands, one file each. Their flags and JSON output are a contract used by checks
//! outside the repository: keep names and keys as they are.

mod caption;
mod demo;
mod embed_image;
mod embed_text;
mod eval;
mod eval_captions;
mod eval_search;
mod index;
mod match_pair;
mod model_args;
mod remove;
mod serve;
mod status;
mod synth;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// quarry: search your photos by text with BLIP-2.
#[derive(Debug, Parser)]
#[command(name = "quarry", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Try quarry with no download: generate sample scenes, index and caption them with the
    /// built-in demo models, and serve the search page.
    Demo(demo::Args),
    /// Embed images: 32 (num_query_tokens) unit vectors per image, the ITC image side.
    EmbedImage(embed_image::Args),
    /// Embed texts: one unit vector per text, the ITC text side.
    EmbedText(embed_text::Args),
    /// Score one image against one text with ITC and ITM.
    Match(match_pair::Args),
    /// Caption images (or answer a prompt about them) with a BLIP-2 OPT model.
    Caption(caption::Args),
    /// Index a photo library into a store (new, changed, moved and deleted files).
    Index(index::Args),
    /// What a store holds: {"images", "vectors", "captions", "texts", "failed", ...}.
    Status(status::Args),
    /// Remove files or folders from a store.
    Remove(remove::Args),
    /// Serve the search API and web page over a store.
    Serve(serve::Args),
    /// Generate captioned synthetic scenes (images + a LAVIS annotation file).
    Synth(synth::Args),
    /// Recall@K on a Karpathy test split (COCO 5k, Flickr30K 1k) with LAVIS's protocol.
    Eval(eval::Args),
    /// Text → image recall of the search as served, over a store and an annotation file;
    /// `--fit` fits the search fusion and ITM calibration.
    EvalSearch(eval_search::Args),
    /// Train BLIP-2: stage 1 (Q-Former), stage 2 (Q-Former into OPT), or an OPT on captions.
    Train(train::Args),
    /// Caption accuracy on synthetic scenes (`quarry synth` output): colours, shapes, objects.
    EvalCaptions(eval_captions::Args),
}

/// Runs the command line; errors are printed with their causes and give exit code 1 (bad
/// input, the user's to fix) or 2 (internal failure).
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::EmbedImage(a) => embed_image::run(a),
        Command::EmbedText(a) => embed_text::run(a),
        Command::Match(a) => match_pair::run(a),
        Command::Caption(a) => caption::run(a),
        Command::Synth(a) => synth::run(a),
        Command::Index(a) => index::run(a),
        Command::Status(a) => status::run(a),
        Command::Remove(a) => remove::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Train(a) => train::run(a),
        Command::EvalCaptions(a) => eval_captions::run(a),
        Command::EvalSearch(a) => eval_search::run(a),
        Command::Demo(a) => demo::run(a),

        Command::Serve(a) => serve::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            let disk_fault = quarry::disk_faults::DiskFault::cause_of(e.as_ref());
            if let Some(fault) = disk_fault {
                eprintln!("hint: {}", fault.hint());
            }
            let internal = disk_fault.is_none() && is_internal(&e);
            ExitCode::from(if internal { 2 } else { 1 })
        }
    }
}

/// The error and its causes, joined by ": ", without repeating a cause whose text the error
/// before it already printed (many errors put their source in their own message).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

/// Whether the error is quarry's fault (a bug or an exhausted resource: exit code 2) rather
/// than something the person running it can fix (exit code 1).
fn is_internal(e: &anyhow::Error) -> bool {
    e.downcast_ref::<quarry::Error>()
        .is_some_and(|e| !e.is_user_error())
        || e.downcast_ref::<quarry::eval::EvalError>()
            .is_some_and(|e| !e.is_user_error())
        || e.downcast_ref::<quarry::indexing::IndexError>()
            .is_some_and(|e| !e.is_user_error())
        || e.downcast_ref::<quarry::library::LibraryError>()
            .is_some_and(|e| !e.is_user_error())
        || e.downcast_ref::<quarry::hub::HubError>()
            .is_some_and(|e| !e.is_user_error())
        || e.downcast_ref::<quarry::watch::WatchError>()
            .is_some_and(|e| !e.is_user_error())
        || e.downcast_ref::<quarry::train::TrainError>()
            .is_some_and(|e| matches!(e, quarry::train::TrainError::Candle(_)))
}
