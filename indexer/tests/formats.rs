//! Phone and camera formats decoded as Python users get them.
//!
//! `fixtures/formats/` holds HEIC, AVIF and JPEG XL samples made with free encoders and, beside
//! each, the reference decode (`*.ref.png`): Pillow + pillow-heif `Image.open(f).convert("RGB")`
//! for HEIC and AVIF, libjxl's djxl for JPEG XL (which Pillow does not read). Written by
//! `tools/make-format-samples.py`; `samples.json` says which tool made each reference and what
//! the file's EXIF holds.
//!
//! Tolerances are per format and say where the decoders differ (see each entry of `TOLERANCE`).

use std::path::{Path, PathBuf};

use quarry_indexer::{
    decode_bytes, decode_file, image_info_from_bytes, read_image_info, DecodeLimits,
    PreprocessError,
};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/formats")
}

fn samples() -> serde_json::Map<String, serde_json::Value> {
    let text = std::fs::read_to_string(fixtures().join("samples.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Largest and mean absolute difference (8-bit levels) allowed against the reference.
///
/// * HEIC: the same libheif release as pillow-heif and its default (nearest-neighbour) chroma
///   upsampling: identical.
/// * AVIF: Pillow reads AVIF with libavif, which upsamples 4:2:0 chroma bilinearly; libheif
///   repeats each chroma sample. Equal on 4:4:4 files up to rounding; on 4:2:0 files they differ
///   only along colour edges (a few percent of a 160×120 picture with hard red and green blocks).
/// * JPEG XL: jxl-oxide and libjxl 0.7 both pass the conformance tests; lossy (XYB) output
///   differs by float rounding; lossless is exact.
/// * Camera RAW (DNG, NEF, CR2, ARW): the embedded preview JPEG, decoded by the `image` crate
///   (zune-jpeg) where Pillow uses libjpeg-turbo: the two IDCTs and chroma upsamplers differ by
///   a level or two.
const TOLERANCE: &[(&str, u8, f64)] = &[
    ("photo.heic", 0, 0.0),
    ("photo-10bit.heic", 0, 0.0),
    ("alpha-icc.heic", 0, 0.0),
    ("rotated.heic", 0, 0.0),
    ("photo.avif", 80, 3.0),
    ("photo-10bit.avif", 4, 1.0),
    ("photo.jxl", 2, 0.2),
    ("lossless-16bit.jxl", 1, 0.01),
    ("camera.dng", RAW_MAX, RAW_MEAN),
    ("camera.nef", RAW_MAX, RAW_MEAN),
    ("camera.cr2", RAW_MAX, RAW_MEAN),
    ("camera.arw", RAW_MAX, RAW_MEAN),
];
const RAW_MAX: u8 = 6;
const RAW_MEAN: f64 = 0.6;

fn reference(name: &str) -> image::RgbImage {
    image::open(fixtures().join(format!("{name}.ref.png")))
        .unwrap()
        .to_rgb8()
}

#[test]
fn every_sample_decodes_as_its_reference_within_the_stated_tolerance() {
    let samples = samples();
    assert_eq!(
        samples.len(),
        TOLERANCE.len(),
        "every sample has a tolerance"
    );
    let mut report = Vec::new();
    for &(name, max_allowed, mean_allowed) in TOLERANCE {
        let facts = &samples[name];
        let got = decode_file(&fixtures().join(name), DecodeLimits::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = reference(name);
        assert_eq!(got.dimensions(), want.dimensions(), "{name}: size");
        assert_eq!(
            (facts["width"].as_u64(), facts["height"].as_u64()),
            (Some(u64::from(got.width())), Some(u64::from(got.height()))),
            "{name}: displayed size"
        );
        let diffs: Vec<u8> = got
            .as_raw()
            .iter()
            .zip(want.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .collect();
        let max = diffs.iter().copied().max().unwrap();
        let mean = diffs.iter().map(|&d| f64::from(d)).sum::<f64>() / diffs.len() as f64;
        report.push(format!("{name}: max {max}, mean {mean:.3}"));
        assert!(
            max <= max_allowed && mean <= mean_allowed,
            "{name}: max {max} (allowed {max_allowed}), mean {mean:.3} (allowed {mean_allowed})"
        );
    }
    println!("{}", report.join("\n"));
}

#[test]
fn capture_time_and_camera_come_from_the_containers_exif() {
    for (name, facts) in samples() {
        let path = fixtures().join(&name);
        let info = read_image_info(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let from_bytes = image_info_from_bytes(&std::fs::read(&path).unwrap(), &path).unwrap();
        assert_eq!(info, from_bytes, "{name}");
        assert_eq!(
            (Some(u64::from(info.width)), Some(u64::from(info.height))),
            (facts["width"].as_u64(), facts["height"].as_u64()),
            "{name}: size as displayed, without decoding"
        );
        assert_eq!(
            u64::from(info.orientation),
            facts
                .get("orientation")
                .and_then(|o| o.as_u64())
                .unwrap_or(1),
            "{name}: HEIF and JPEG XL apply their own rotation (1); a RAW reports IFD0's"
        );
        assert_eq!(
            info.captured_at.as_ref().map(|t| t.iso8601.as_str()),
            facts.get("captured_at").and_then(|v| v.as_str()),
            "{name}"
        );
        assert_eq!(
            info.camera_make.as_deref(),
            facts.get("camera_make").and_then(|v| v.as_str()),
            "{name}"
        );
        assert_eq!(
            info.camera_model.as_deref(),
            facts.get("camera_model").and_then(|v| v.as_str()),
            "{name}"
        );
    }
}

#[test]
fn truncated_and_damaged_files_are_reported_by_path_never_half_indexed() {
    for name in [
        "photo.heic",
        "photo.avif",
        "photo.jxl",
        "lossless-16bit.jxl",
    ] {
        let bytes = std::fs::read(fixtures().join(name)).unwrap();
        let path = Path::new("/library").join(name);
        for cut in [16, 100, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1] {
            let e = decode_bytes(&bytes[..cut], &path, DecodeLimits::default())
                .err()
                .unwrap_or_else(|| panic!("{name} cut at {cut} of {} decoded", bytes.len()));
            assert!(
                matches!(e, PreprocessError::Decode { .. }),
                "{name} at {cut}: {e}"
            );
            assert!(e.to_string().starts_with("/library/"), "{e} names the file");
        }
        // A damaged middle: every 7th byte of the second half flipped.
        let mut damaged = bytes.clone();
        let half = damaged.len() / 2;
        for b in damaged[half..].iter_mut().step_by(7) {
            *b ^= 0x5A;
        }
        match decode_bytes(&damaged, &path, DecodeLimits::default()) {
            // Entropy-coded data can stay decodable when damaged (it gives wrong pixels, as a
            // damaged JPEG does); what must not happen is a panic or a wrong size.
            Ok(img) => assert_eq!(img.dimensions(), reference(name).dimensions(), "{name}"),
            Err(e) => assert!(matches!(e, PreprocessError::Decode { .. }), "{name}: {e}"),
        }
    }
}

#[test]
fn images_over_the_pixel_limit_are_refused_from_the_header() {
    for name in ["photo.heic", "photo.avif", "photo.jxl"] {
        let e =
            decode_file(&fixtures().join(name), DecodeLimits { max_pixels: 10_000 }).unwrap_err();
        assert!(
            matches!(
                e,
                PreprocessError::TooLarge {
                    width: 160,
                    height: 120,
                    ..
                }
            ),
            "{name}: {e}"
        );
    }
}

#[test]
fn a_raw_file_without_a_preview_is_refused_not_indexed_as_its_thumbnail() {
    let path = fixtures().join("no-preview.dng");
    let e = decode_file(&path, DecodeLimits::default()).unwrap_err();
    assert!(
        matches!(e, PreprocessError::Decode { .. })
            && e.to_string().contains("RAW")
            && e.to_string().contains("preview"),
        "{e}"
    );
    // The same structure as a plain TIFF is still an image: only RAWs take the preview path.
    let plain = fixtures().join("camera.cr2.ref.png");
    assert!(decode_file(&plain, DecodeLimits::default()).is_ok());
}
