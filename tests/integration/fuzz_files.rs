//! A mutation fuzzer for the files quarry reads besides photos: a model folder's `config.json`
//! and safetensors header (a header may claim huge shapes, or offsets past the end of the
//! file), and LAVIS annotation files (`--captions`, `quarry eval`).
//!
//! Each case mutates one file of a copy of the small test checkpoint (or a sample annotation
//! file), deterministically from a seed, and opens and loads it as the commands do. A case
//! passes when it gives a model or an error (which names the file), without a panic and without
//! a single allocation above the limit: nothing is allocated from a size a header claims before
//! the claim is checked against the file. `QUARRY_FUZZ_FILE_CASES` (default 300) and
//! `QUARRY_FUZZ_SEED` set the run; a long run is reported in README ("Fuzzing").

use std::cell::Cell;
use std::path::Path;

use quarry::eval::Annotations;
use quarry::{LoadOptions, RetrievalFolder};

use crate::support::retrieval_fixtures;

thread_local! {
    /// The largest allocation made by this thread since it was last reset (other tests of the
    /// binary run on other threads and do not disturb it).
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// Counts each thread's largest allocation, then lets the system allocate.
pub struct ThreadPeak;

unsafe impl std::alloc::GlobalAlloc for ThreadPeak {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(layout.size())));
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(new_size)));
        // SAFETY: as for `dealloc`; `new_size` is what the caller asked for.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

/// Far above anything the small checkpoint needs (its weights are 5 MB), far below what a
/// claimed shape of billions of elements would take.
const MAX_ALLOCATION: usize = 256 << 20;

pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Mutates `bytes` within `region` (the header, where sizes live): digits changed, bytes
/// flipped or overwritten, runs deleted or repeated, the whole cut.
pub fn mutate(rng: &mut Rng, bytes: &[u8], region: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for _ in 0..1 + rng.below(3) {
        let region = region.min(out.len()).max(1);
        let at = rng.below(region);
        match rng.below(6) {
            0 if at < out.len() => out[at] ^= 1 << rng.below(8),
            1 if at < out.len() => {
                out[at] = *b"0123456789\"{}[],:-e9".get(rng.below(20)).unwrap_or(&b'9')
            }
            2 => {
                let digits = [
                    "99999999999",
                    "4294967296",
                    "-1",
                    "1e300",
                    "18446744073709551615",
                ];
                let d = digits[rng.below(digits.len())].as_bytes();
                out.splice(at..(at + 1).min(out.len()), d.iter().copied());
            }
            3 => {
                let len = rng.below(16).min(out.len() - at.min(out.len()));
                out.drain(at..at + len);
            }
            4 => out.truncate(at.max(rng.below(out.len().max(1)))),
            _ => {
                let len = (1 + rng.below(16)).min(out.len() - at.min(out.len()));
                let run = out[at..at + len].to_vec();
                out.splice(at..at, run);
            }
        }
    }
    out
}

/// Opens and loads the folder as the commands do; the error as text.
fn open_and_load(model: &Path, options: &LoadOptions) -> Result<(), String> {
    let folder = RetrievalFolder::open(model).map_err(|e| e.to_string())?;
    folder.load(options).map(drop).map_err(|e| e.to_string())
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if !e.file_name().to_string_lossy().starts_with("reference") {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `work` for one case; a panic or an oversized allocation fails the test, with the input
/// kept for replay.
fn check_case(what: &str, case: u64, input: &[u8], work: impl FnOnce() -> bool) -> bool {
    LARGEST.with(|l| l.set(0));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
    let peak = LARGEST.with(Cell::get);
    let fail = match &outcome {
        Err(_) => Some("panicked".to_string()),
        Ok(_) if peak > MAX_ALLOCATION => Some(format!("allocated {peak} bytes at once")),
        Ok(_) => None,
    };
    if let Some(fail) = fail {
        let kept = std::env::temp_dir().join(format!("quarry-fuzz-{what}-{case}"));
        std::fs::write(&kept, input).unwrap();
        panic!(
            "{what} case {case} {fail}; the input is kept in {}",
            kept.display()
        );
    }
    outcome.unwrap()
}

#[test]
fn mutated_model_folders_and_annotation_files_give_an_error_never_a_crash() {
    let cases = env_number("QUARRY_FUZZ_FILE_CASES", 300);
    let seed = env_number("QUARRY_FUZZ_SEED", 20_261_207);
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    copy_dir(&retrieval_fixtures().join("small_a"), &model);
    let config = std::fs::read(model.join("config.json")).unwrap();
    let weights = std::fs::read(model.join("model.safetensors")).unwrap();
    let header_len = 8 + u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
    let annotations_file = dir.path().join("annotations.json");
    let annotations = serde_json::to_vec_pretty(&serde_json::json!([
        {"image": "a/one.jpg", "caption": ["a red circle", "a circle that is red"]},
        {"image": "b/two.png", "caption": "two blue squares", "split": "test"},
        {"image": "three.jpg", "caption": ["", "a green triangle"]},
    ]))
    .unwrap();
    let options = LoadOptions::default();
    let (mut loaded, mut refused) = (0u64, 0u64);
    let started = std::time::Instant::now();
    for case in 0..cases {
        let ok = match rng.below(3) {
            0 => {
                let bytes = mutate(&mut rng, &config, config.len());
                std::fs::write(model.join("config.json"), &bytes).unwrap();
                let ok = check_case("config", case, &bytes, || {
                    open_and_load(&model, &options).is_ok()
                });
                std::fs::write(model.join("config.json"), &config).unwrap();
                ok
            }
            1 => {
                let bytes = mutate(&mut rng, &weights, header_len + 16);
                std::fs::write(model.join("model.safetensors"), &bytes).unwrap();
                let ok = check_case(
                    "safetensors",
                    case,
                    &bytes[..header_len.min(bytes.len())],
                    || match open_and_load(&model, &options) {
                        Ok(_) => true,
                        Err(message) => {
                            assert!(
                                message.contains("safetensors")
                                    || message.contains(&*model.to_string_lossy()),
                                "the error names the checkpoint: {message}"
                            );
                            false
                        }
                    },
                );
                std::fs::write(model.join("model.safetensors"), &weights).unwrap();
                ok
            }
            _ => {
                let bytes = mutate(&mut rng, &annotations, annotations.len());
                std::fs::write(&annotations_file, &bytes).unwrap();
                check_case("annotations", case, &bytes, || {
                    Annotations::load(&annotations_file, None).is_ok()
                })
            }
        };
        if ok {
            loaded += 1;
        } else {
            refused += 1;
        }
    }
    println!(
        "{cases} cases (seed {seed}) in {:.1} s: {loaded} loaded, {refused} refused, no panic",
        started.elapsed().as_secs_f64()
    );
    assert!(refused > 0);
}
