//! Decoding image files into RGB, as the models were trained to see them.
//!
//! The format is recognised from the content, not the file name. HEIC, AVIF and JPEG XL go to
//! their own decoders ([`crate::codecs`]); the rest to the `image` crate. The EXIF orientation is
//! applied (a phone photo taken upright is shown upright), and alpha is dropped rather than composited,
//! as PIL's `convert("RGB")` does in LAVIS and transformers 4.x. The pixel count is checked from
//! the header before anything is decoded, so a small file claiming a huge image (a
//! decompression bomb) is refused without allocating it.
//!
//! A JPEG must also be complete: the JPEG decoder fills a file cut short (an interrupted copy
//! or download) with grey and reports success, which would index half a photo without a word.
//! The marker structure is checked first, up to the end-of-image marker, so a truncated JPEG is
//! refused with a reason. (A complete JPEG whose encoder omitted that final marker is refused
//! too; such files are rare and the report says why.)

use std::io::{BufRead, Cursor, Seek};
use std::path::Path;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

use crate::codecs::{self, CodecFailure};
use crate::sniff::{sniff, ImageKind, Sniffed, SNIFF_LEN};
use crate::PreprocessError;

/// Bounds on what a decoder may allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted width × height.
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    /// 178 956 970 pixels, twice PIL's `MAX_IMAGE_PIXELS` warning threshold: the point where
    /// PIL itself refuses an image as a decompression bomb.
    fn default() -> Self {
        Self {
            max_pixels: 178_956_970,
        }
    }
}

/// Reads and decodes an image file into RGB with its EXIF orientation applied.
pub fn decode_file(path: &Path, limits: DecodeLimits) -> Result<RgbImage, PreprocessError> {
    let bytes = std::fs::read(path).map_err(|source| PreprocessError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_bytes(&bytes, path, limits)
}

/// Decodes image bytes (`path` only names them in errors).
pub fn decode_bytes(
    bytes: &[u8],
    path: &Path,
    limits: DecodeLimits,
) -> Result<RgbImage, PreprocessError> {
    let failed = |failure: CodecFailure| match failure {
        CodecFailure::TooLarge { width, height } => PreprocessError::TooLarge {
            path: path.to_path_buf(),
            width,
            height,
            limit: limits.max_pixels,
        },
        CodecFailure::Corrupt(reason) => PreprocessError::Decode {
            path: path.to_path_buf(),
            reason,
        },
    };
    match sniff(&bytes[..bytes.len().min(SNIFF_LEN)]) {
        Sniffed::Image(ImageKind::Heic) => {
            codecs::heif::decode(bytes, "HEIC", limits).map_err(failed)
        }
        Sniffed::Image(ImageKind::Avif) => {
            codecs::heif::decode(bytes, "AVIF", limits).map_err(failed)
        }
        Sniffed::Image(ImageKind::JpegXl) => codecs::jpegxl::decode(bytes, limits).map_err(failed),
        Sniffed::Image(ImageKind::Jpeg) => {
            check_jpeg_complete(bytes).map_err(|reason| PreprocessError::Decode {
                path: path.to_path_buf(),
                reason,
            })?;
            decode_reader(Cursor::new(bytes), path, limits, None)
        }
        Sniffed::Image(ImageKind::Tiff) if codecs::raw::is_raw(bytes) => {
            let (jpeg, layout) = codecs::raw::preview(bytes).map_err(failed)?;
            check_jpeg_complete(jpeg).map_err(|reason| PreprocessError::Decode {
                path: path.to_path_buf(),
                reason: format!("the RAW file's preview: {reason}"),
            })?;
            let orientation = Orientation::from_exif(layout.orientation as u8)
                .unwrap_or(Orientation::NoTransforms);
            decode_reader(Cursor::new(jpeg), path, limits, Some(orientation))
        }
        Sniffed::Image(ImageKind::Tiff) => {
            codecs::raw::check_tag_sizes(bytes).map_err(|reason| PreprocessError::Decode {
                path: path.to_path_buf(),
                reason,
            })?;
            decode_reader(Cursor::new(bytes), path, limits, None)
        }
        _ => decode_reader(Cursor::new(bytes), path, limits, None),
    }
}

/// Walks a JPEG's marker segments and entropy-coded scans up to the end-of-image marker.
fn check_jpeg_complete(bytes: &[u8]) -> Result<(), String> {
    let truncated = |at: usize| {
        Err(format!(
            "truncated JPEG: the data ends at byte {} of {} before the end-of-image marker",
            at.min(bytes.len()),
            bytes.len()
        ))
    };
    let mut i = 2; // after SOI
    loop {
        // A marker: one or more 0xFF fill bytes, then the marker code.
        if bytes.get(i) != Some(&0xFF) {
            return match bytes.get(i) {
                None => truncated(i),
                Some(b) => Err(format!(
                    "corrupt JPEG: byte {b:#04x} at {i} where a marker was expected"
                )),
            };
        }
        while bytes.get(i) == Some(&0xFF) {
            i += 1;
        }
        let Some(&marker) = bytes.get(i) else {
            return truncated(i);
        };
        i += 1;
        match marker {
            0xD9 => return Ok(()),
            // Markers without a length: TEM and the restart markers.
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let Some(len) = bytes
            .get(i..i + 2)
            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
        else {
            return truncated(i);
        };
        if len < 2 {
            return Err(format!("corrupt JPEG: segment length {len} at byte {i}"));
        }
        i += len;
        if i > bytes.len() {
            return truncated(i);
        }
        if marker == 0xDA {
            // Entropy-coded data runs to the next 0xFF that is not a stuffed 0xFF00 or a
            // restart marker.
            loop {
                let Some(ff) = bytes[i..].iter().position(|&b| b == 0xFF) else {
                    return truncated(bytes.len());
                };
                i += ff;
                match bytes.get(i + 1) {
                    None => return truncated(bytes.len()),
                    Some(0x00) | Some(0xD0..=0xD7) => i += 2,
                    Some(_) => break,
                }
            }
        }
    }
}

/// Decodes with the `image` crate; `orientation` replaces the file's own EXIF orientation
/// (a RAW's preview takes the RAW's).
fn decode_reader<R: BufRead + Seek>(
    reader: R,
    path: &Path,
    limits: DecodeLimits,
    orientation: Option<Orientation>,
) -> Result<RgbImage, PreprocessError> {
    let fail = |reason: String| PreprocessError::Decode {
        path: path.to_path_buf(),
        reason,
    };
    let reader = ImageReader::new(reader)
        .with_guessed_format()
        .map_err(|e| fail(e.to_string()))?;
    if reader.format().is_none() {
        return Err(fail("unrecognised image format".into()));
    }
    let mut decoder = reader.into_decoder().map_err(|e| fail(e.to_string()))?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(PreprocessError::TooLarge {
            path: path.to_path_buf(),
            width,
            height,
            limit: limits.max_pixels,
        });
    }
    if width == 0 || height == 0 {
        return Err(fail("image has no pixels".into()));
    }
    let mut decoder_limits = image::Limits::default();
    // The decoded buffer of the largest accepted image in 16-bit RGBA, with margin.
    decoder_limits.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(64 << 20));
    decoder
        .set_limits(decoder_limits)
        .map_err(|e| fail(e.to_string()))?;
    let orientation = match orientation {
        Some(o) => o,
        None => decoder.orientation().unwrap_or(Orientation::NoTransforms),
    };
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| fail(e.to_string()))?;
    img.apply_orientation(orientation);
    Ok(img.to_rgb8())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(img: &DynamicImage) -> Vec<u8> {
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    /// A JPEG whose EXIF says "rotate 90° clockwise to display" (orientation 6).
    fn jpeg_with_orientation(width: u32, height: u32, orientation: u8) -> Vec<u8> {
        let img = image::RgbImage::from_fn(width, height, |x, _| {
            if x < width / 2 {
                image::Rgb([255, 0, 0])
            } else {
                image::Rgb([0, 0, 255])
            }
        });
        let mut jpeg = Vec::new();
        DynamicImage::ImageRgb8(img)
            .write_to(&mut Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
            .unwrap();
        // APP1 "Exif": big-endian TIFF header, one IFD entry 0x0112 (SHORT) = orientation.
        let mut tiff = b"MM\0\x2a\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01\0".to_vec();
        tiff.extend([orientation, 0, 0, 0, 0, 0, 0]);
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend(tiff);
        let len = (app1.len() + 2) as u16;
        let mut out = jpeg[..2].to_vec();
        out.extend([0xFF, 0xE1]);
        out.extend(len.to_be_bytes());
        out.extend(app1);
        out.extend(&jpeg[2..]);
        out
    }

    #[test]
    fn exif_orientation_is_applied() {
        let limits = DecodeLimits::default();
        let upright =
            decode_bytes(&jpeg_with_orientation(16, 8, 1), Path::new("u.jpg"), limits).unwrap();
        assert_eq!(upright.dimensions(), (16, 8));
        let rotated =
            decode_bytes(&jpeg_with_orientation(16, 8, 6), Path::new("r.jpg"), limits).unwrap();
        assert_eq!(
            rotated.dimensions(),
            (8, 16),
            "orientation 6 turns a landscape file upright"
        );
        // The red left half of the stored image becomes the top half after a clockwise turn.
        let top = rotated.get_pixel(4, 2).0;
        let bottom = rotated.get_pixel(4, 13).0;
        assert!(top[0] > 200 && top[2] < 60, "top {top:?}");
        assert!(bottom[2] > 200 && bottom[0] < 60, "bottom {bottom:?}");
    }

    #[test]
    fn alpha_is_dropped_not_composited() {
        let rgba = image::RgbaImage::from_pixel(3, 2, image::Rgba([10, 20, 30, 0]));
        let rgb = decode_bytes(
            &png(&DynamicImage::ImageRgba8(rgba)),
            Path::new("a.png"),
            DecodeLimits::default(),
        )
        .unwrap();
        assert!(rgb.pixels().all(|p| p.0 == [10, 20, 30]));
    }

    #[test]
    fn text_named_jpg_and_empty_and_truncated_files_are_decode_errors() {
        let limits = DecodeLimits::default();
        for bytes in [&b"hello, I am text"[..], &b""[..]] {
            let e = decode_bytes(bytes, Path::new("x.jpg"), limits).unwrap_err();
            assert!(matches!(e, PreprocessError::Decode { .. }), "{e}");
            assert!(e.to_string().starts_with("x.jpg:"), "{e}");
        }
        let full = png(&DynamicImage::new_rgb8(64, 64));
        let e = decode_bytes(&full[..full.len() / 2], Path::new("t.png"), limits).unwrap_err();
        assert!(matches!(e, PreprocessError::Decode { .. }), "{e}");
    }

    #[test]
    fn truncated_jpegs_are_refused_and_complete_ones_pass_the_structure_check() {
        let limits = DecodeLimits::default();
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_fn(48, 40, |x, y| {
            image::Rgb([(x * 5) as u8, (y * 6) as u8, ((x ^ y) * 4) as u8])
        }));
        let mut full = Vec::new();
        img.write_to(&mut Cursor::new(&mut full), image::ImageFormat::Jpeg)
            .unwrap();
        check_jpeg_complete(&full).unwrap();
        // With an EXIF block and trailing bytes after the end marker (common in camera files).
        let mut with_tail = jpeg_with_orientation(16, 8, 6);
        with_tail.extend(b"trailing junk");
        check_jpeg_complete(&with_tail).unwrap();
        assert!(decode_bytes(&with_tail, Path::new("t.jpg"), limits).is_ok());
        for cut in [
            3,
            20,
            full.len() / 3,
            full.len() / 2,
            full.len() - 2,
            full.len() - 1,
        ] {
            let e = decode_bytes(&full[..cut], Path::new("cut.jpg"), limits).unwrap_err();
            assert!(
                matches!(e, PreprocessError::Decode { .. }) && e.to_string().contains("truncated"),
                "cut at {cut}: {e}"
            );
        }
    }

    #[test]
    fn oversized_header_is_refused_before_decoding() {
        let bytes = png(&DynamicImage::new_rgb8(300, 200));
        let e = decode_bytes(
            &bytes,
            Path::new("big.png"),
            DecodeLimits { max_pixels: 50_000 },
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                PreprocessError::TooLarge {
                    width: 300,
                    height: 200,
                    ..
                }
            ),
            "{e}"
        );
    }
}
