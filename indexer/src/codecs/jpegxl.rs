//! JPEG XL through jxl-oxide (pure Rust; it passes libjxl's conformance suite).
//!
//! The codestream records its own orientation, which jxl-oxide applies while rendering (and
//! reports sizes after); the EXIF orientation, if any, is informational as in HEIF. A file cut
//! short is refused: jxl-oxide can render a partly loaded frame (progressive decoding), which
//! would index half a photo without a word, so the first frame must be fully loaded.

use std::io::Cursor;

use image::RgbImage;
use jxl_oxide::{InitializeResult, JxlImage, PixelFormat};

use super::{exif_tiff_after_offset, CodecFailure, Facts};
use crate::DecodeLimits;

fn corrupt(e: impl std::fmt::Display) -> CodecFailure {
    CodecFailure::Corrupt(format!("damaged or truncated JPEG XL: {e}"))
}

/// Reads the image with a memory budget: jxl-oxide allocates its f32 planes from sizes the file
/// declares (frames may be larger than the image), so a damaged or hostile header could ask for
/// gigabytes before the pixel limit is ever checked. The budget is what the largest accepted
/// image needs: four f32 planes, twice over, and working memory.
fn open(bytes: &[u8], limits: DecodeLimits) -> Result<JxlImage, CodecFailure> {
    let budget = usize::try_from(limits.max_pixels.saturating_mul(32))
        .unwrap_or(usize::MAX)
        .saturating_add(64 << 20);
    JxlImage::builder()
        .alloc_tracker(jxl_oxide::AllocTracker::with_limit(budget))
        .read(Cursor::new(bytes))
        .map_err(corrupt)
}

/// Size as displayed and the EXIF block, from the headers alone: frames are neither loaded nor
/// rendered (that is where memory goes), so reading facts stays cheap for any file. The EXIF
/// box is found when it precedes the codestream, where encoders put it.
pub(crate) fn facts(bytes: &[u8]) -> Result<Facts, CodecFailure> {
    let mut uninit = JxlImage::builder()
        .alloc_tracker(jxl_oxide::AllocTracker::with_limit(64 << 20))
        .build_uninit();
    let mut pending: Vec<u8> = Vec::new();
    let mut chunks = bytes.chunks(4096);
    let image = loop {
        let chunk = chunks.next();
        if let Some(chunk) = chunk {
            pending.extend_from_slice(chunk);
        }
        let consumed = uninit.feed_bytes(&pending).map_err(corrupt)?;
        pending.drain(..consumed.min(pending.len()));
        match uninit.try_init().map_err(corrupt)? {
            InitializeResult::Initialized(image) => break image,
            InitializeResult::NeedMoreData(more) if chunk.is_some() => uninit = more,
            InitializeResult::NeedMoreData(_) => {
                return Err(CodecFailure::Corrupt(
                    "truncated JPEG XL: the data ends inside its headers".into(),
                ))
            }
        }
    };
    let exif_tiff = match image.aux_boxes().first_exif() {
        Ok(exif) => exif.has_data().then(|| exif.unwrap()).and_then(|raw| {
            // jxl-oxide has already split off the 4-byte offset; put the block back together.
            let mut block = raw.tiff_header_offset().to_be_bytes().to_vec();
            block.extend_from_slice(raw.payload());
            exif_tiff_after_offset(&block)
        }),
        Err(_) => None,
    };
    Ok(Facts {
        width: image.width(),
        height: image.height(),
        exif_tiff,
    })
}

/// Renders the first frame into 8-bit RGB as displayed, alpha dropped.
pub(crate) fn decode(bytes: &[u8], limits: DecodeLimits) -> Result<RgbImage, CodecFailure> {
    let image = open(bytes, limits)?;
    let (width, height) = (image.width(), image.height());
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(CodecFailure::TooLarge { width, height });
    }
    if image.num_loaded_keyframes() == 0 {
        return Err(CodecFailure::Corrupt(format!(
            "truncated JPEG XL: the data ends before the first frame is complete ({} bytes)",
            bytes.len()
        )));
    }
    let gray = match image.pixel_format() {
        PixelFormat::Rgb | PixelFormat::Rgba => false,
        PixelFormat::Gray | PixelFormat::Graya => true,
        other => {
            return Err(CodecFailure::Corrupt(format!(
                "JPEG XL with {other:?} samples (CMYK) is not supported"
            )))
        }
    };
    let render = image.render_frame(0).map_err(corrupt)?;
    let mut stream = render.stream_no_alpha();
    let (w, h) = (stream.width(), stream.height());
    let channels = stream.channels() as usize;
    let mut samples = vec![0u8; w as usize * h as usize * channels];
    let written = stream.write_to_buffer(&mut samples);
    if written != samples.len() {
        return Err(CodecFailure::Corrupt(format!(
            "JPEG XL render gave {written} of {} samples",
            samples.len()
        )));
    }
    let rgb = match (gray, channels) {
        (false, 3) => samples,
        (true, 1) => samples.iter().flat_map(|&v| [v, v, v]).collect(),
        _ => {
            return Err(CodecFailure::Corrupt(format!(
                "JPEG XL render gave {channels} colour channels"
            )))
        }
    };
    RgbImage::from_raw(w, h, rgb)
        .ok_or_else(|| CodecFailure::Corrupt("JPEG XL render has the wrong size".into()))
}
