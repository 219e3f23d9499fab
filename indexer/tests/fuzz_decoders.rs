//! A mutation fuzzer for everything that reads a photo: the decoders of every format (JPEG,
//! PNG, WebP, GIF, BMP, TIFF, HEIC, AVIF, JPEG XL, camera RAW previews) and the metadata reader
//! (EXIF, container headers), on the stable toolchain.
//!
//! It starts from real files (the committed samples of every format, and images encoded here
//! by the `image` crate), mutates them deterministically from a seed (bit flips, overwritten
//! bytes, cuts, repeated and deleted runs, splices of two files) and feeds each case to
//! `decode_bytes` and `image_info_from_bytes`. A case passes when it returns, with an image or
//! an error, without a panic and without any single allocation above the limit that follows
//! from the pixel limit (a file claiming 60 000 × 60 000 pixels must be refused from its header,
//! not allocated). A crash inside a C decoder (libheif) would abort the run, and fail it.
//!
//! `QUARRY_FUZZ_CASES` (default 20 000: seconds, for the test suite) and `QUARRY_FUZZ_SEED`
//! (default fixed) set the run; a long run is reported in README ("Fuzzing").

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use quarry_indexer::{decode_bytes, image_info_from_bytes, DecodeLimits};

/// Counts the largest single allocation made while a case runs.
struct Watching;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Watching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: as for `dealloc`, and `new_size` is what the caller asked for.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Watching = Watching;

/// The pixel limit the cases run under, and the largest allocation it allows: the decoders'
/// budgets for the largest accepted image (the `image` crate's: 16-bit RGBA and 64 MiB, see
/// decode.rs; jxl-oxide's: four f32 planes twice over and 64 MiB, see codecs/jpegxl.rs).
const LIMITS: DecodeLimits = DecodeLimits {
    max_pixels: 4_000_000,
};
const MAX_ALLOCATION: usize = 4_000_000 * 32 + (64 << 20);

/// A small deterministic generator (SplitMix64): the same seed gives the same cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn corpus() -> Vec<(String, Vec<u8>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for dir in ["fixtures/formats", "fixtures/retrieval/images"] {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy();
                !name.ends_with(".ref.png") && !name.ends_with(".json")
            })
            .collect();
        entries.sort();
        for p in entries {
            files.push((
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            ));
        }
    }
    // Every format the `image` crate writes, from one small picture.
    let picture = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(24, 16, |x, y| {
        image::Rgb([(x * 10) as u8, (y * 15) as u8, ((x + y) * 6) as u8])
    }));
    for (name, format) in [
        ("gen.jpg", image::ImageFormat::Jpeg),
        ("gen.png", image::ImageFormat::Png),
        ("gen.webp", image::ImageFormat::WebP),
        ("gen.gif", image::ImageFormat::Gif),
        ("gen.bmp", image::ImageFormat::Bmp),
        ("gen.tiff", image::ImageFormat::Tiff),
    ] {
        let mut bytes = Vec::new();
        picture
            .write_to(&mut Cursor::new(&mut bytes), format)
            .unwrap();
        files.push((name.to_string(), bytes));
    }
    files
}

/// One mutation of `input` (sometimes spliced with `other`).
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        if out.is_empty() {
            out.push(0);
        }
        let at = rng.below(out.len());
        match rng.below(8) {
            0 => out[at] ^= 1 << rng.below(8),
            1 => out[at] = [0x00, 0xFF, 0x7F, 0x80, 0x01, 0xFE][rng.below(6)],
            // Header fields are where sizes and offsets live: hit the first bytes more often.
            2 => {
                let at = rng.below(out.len().min(256));
                out[at] = rng.next() as u8;
            }
            3 => out.truncate(at),
            4 => {
                let len = (1 + rng.below(64)).min(out.len() - at);
                let run = out[at..at + len].to_vec();
                let times = 1 + rng.below(8);
                for _ in 0..times {
                    out.splice(at..at, run.iter().copied());
                }
            }
            5 => {
                let len = rng.below(64).min(out.len() - at);
                out.drain(at..at + len);
            }
            6 if !other.is_empty() => {
                let from = rng.below(other.len());
                out.truncate(at);
                out.extend_from_slice(&other[from..]);
            }
            _ => {
                // A 32-bit field set to a large or small value (sizes, counts, offsets).
                if at + 4 <= out.len() {
                    let v: u32 = [0, 1, 0x7FFF_FFFF, 0xFFFF_FFFF, 0x0001_0000][rng.below(5)];
                    let bytes = if rng.below(2) == 0 {
                        v.to_be_bytes()
                    } else {
                        v.to_le_bytes()
                    };
                    out[at..at + 4].copy_from_slice(&bytes);
                }
            }
        }
    }
    out
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn mutated_files_of_every_format_give_an_image_or_an_error_never_a_crash() {
    let cases = env_number("QUARRY_FUZZ_CASES", 20_000);
    let seed = env_number("QUARRY_FUZZ_SEED", 20_261_207);
    let corpus = corpus();
    let mut rng = Rng(seed);
    let mut decoded = 0u64;
    let mut refused = 0u64;
    let mut largest = 0usize;
    let path = Path::new("fuzz-case");
    let started = std::time::Instant::now();
    for case in 0..cases {
        let (name, input) = &corpus[rng.below(corpus.len())];
        let (_, other) = &corpus[rng.below(corpus.len())];
        let bytes = mutate(&mut rng, input, other);
        LARGEST.store(0, Ordering::Relaxed);
        let outcome = std::panic::catch_unwind(|| {
            let image = decode_bytes(&bytes, path, LIMITS);
            let _ = image_info_from_bytes(&bytes, path);
            image.is_ok()
        });
        let peak = LARGEST.load(Ordering::Relaxed);
        largest = largest.max(peak);
        match outcome {
            Ok(true) => decoded += 1,
            Ok(false) => refused += 1,
            Err(_) => {
                let kept = std::env::temp_dir().join(format!("quarry-fuzz-{seed}-{case}"));
                std::fs::write(&kept, &bytes).unwrap();
                panic!(
                    "case {case} (a mutation of {name}, seed {seed}) panicked; the input is \
                     kept in {}",
                    kept.display()
                );
            }
        }
        if peak > MAX_ALLOCATION {
            let kept = std::env::temp_dir().join(format!("quarry-fuzz-{seed}-{case}"));
            std::fs::write(&kept, &bytes).unwrap();
            panic!(
                "case {case} (a mutation of {name}, seed {seed}) allocated {peak} bytes at \
                 once; the input is kept in {}",
                kept.display()
            );
        }
    }
    println!(
        "{cases} cases (seed {seed}) in {:.1} s: {decoded} decoded, {refused} refused, no \
         panic; largest single allocation {:.1} MB (limit {:.0} MB)",
        started.elapsed().as_secs_f64(),
        largest as f64 / 1e6,
        MAX_ALLOCATION as f64 / 1e6
    );
    assert!(
        decoded > 0 && refused > 0,
        "the mutations exercise both outcomes"
    );
}
