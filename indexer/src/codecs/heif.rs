//! HEIC and AVIF through libheif.
//!
//! libheif is built from the sources bundled with `libheif-sys` (1.23, the release pillow-heif
//! 1.9 ships), not taken from the system: Debian 12 has 1.15, older than any maintained Rust
//! binding supports, and matching pillow-heif's release keeps the colour conversion (YCbCr to
//! RGB, 10-bit to 8-bit) the same as what Python users get. The HEVC and AV1 decoders it links
//! (libde265, dav1d) are the system's.
//!
//! HEIF stores rotation and mirroring as container properties (`irot`, `imir`) that a reader
//! must apply, and its specification says the EXIF orientation must then be ignored; libheif
//! applies them while decoding, and [`facts`] gives the size after them.

use std::sync::OnceLock;

use image::RgbImage;
use libheif_rs::{
    ColorSpace, DecodingOptions, HeifContext, ImageHandle, ItemId, LibHeif, RgbChroma,
};

use super::{exif_tiff_after_offset, CodecFailure, Facts};
use crate::DecodeLimits;

/// libheif's global state, initialised once (`heif_init` is reference-counted and each
/// `LibHeif` would otherwise init and de-init it per image).
fn libheif() -> &'static LibHeif {
    static LIB: OnceLock<LibHeif> = OnceLock::new();
    LIB.get_or_init(LibHeif::new)
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> CodecFailure {
    CodecFailure::Corrupt(format!("damaged or truncated {what}: {e}"))
}

fn primary(ctx: &HeifContext<'_>, what: &str) -> Result<ImageHandle, CodecFailure> {
    ctx.primary_image_handle().map_err(|e| corrupt(what, e))
}

/// Size as displayed and the EXIF block, without decoding pixels. `what` names the format in
/// messages ("HEIC", "AVIF").
pub(crate) fn facts(bytes: &[u8], what: &str) -> Result<Facts, CodecFailure> {
    libheif();
    let ctx = HeifContext::read_from_bytes(bytes).map_err(|e| corrupt(what, e))?;
    let handle = primary(&ctx, what)?;
    Ok(Facts {
        width: handle.width(),
        height: handle.height(),
        exif_tiff: exif(&handle),
    })
}

/// The first EXIF item attached to the image, as a TIFF structure.
fn exif(handle: &ImageHandle) -> Option<Vec<u8>> {
    let mut ids: [ItemId; 1] = [0];
    if handle.metadata_block_ids(&mut ids, b"Exif") == 0 {
        return None;
    }
    exif_tiff_after_offset(&handle.metadata(ids[0]).ok()?)
}

/// Decodes the primary image into 8-bit RGB as displayed (alpha dropped, deeper samples
/// converted to 8 bits by libheif as pillow-heif's default does).
pub(crate) fn decode(
    bytes: &[u8],
    what: &str,
    limits: DecodeLimits,
) -> Result<RgbImage, CodecFailure> {
    let lib = libheif();
    let ctx = HeifContext::read_from_bytes(bytes).map_err(|e| corrupt(what, e))?;
    let handle = primary(&ctx, what)?;
    let (width, height) = (handle.width(), handle.height());
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(CodecFailure::TooLarge { width, height });
    }
    if width == 0 || height == 0 {
        return Err(CodecFailure::Corrupt(format!("{what} image has no pixels")));
    }
    let mut options = DecodingOptions::new().ok_or_else(|| {
        CodecFailure::Corrupt("libheif could not allocate decoding options".into())
    })?;
    options.set_convert_hdr_to_8bit(true);
    let image = lib
        .decode(&handle, ColorSpace::Rgb(RgbChroma::Rgb), Some(options))
        .map_err(|e| corrupt(what, e))?;
    let plane = image.planes().interleaved.ok_or_else(|| {
        CodecFailure::Corrupt(format!("libheif gave no RGB plane for this {what}"))
    })?;
    if plane.bits_per_pixel != 24 && plane.storage_bits_per_pixel != 24 {
        return Err(CodecFailure::Corrupt(format!(
            "libheif gave {} bits per pixel for 8-bit RGB",
            plane.storage_bits_per_pixel
        )));
    }
    let (w, h) = (plane.width as usize, plane.height as usize);
    let row = w * 3;
    let mut rgb = Vec::with_capacity(row * h);
    for y in 0..h {
        let start = y * plane.stride;
        let line = plane.data.get(start..start + row).ok_or_else(|| {
            CodecFailure::Corrupt(format!("libheif's RGB plane is short at row {y}"))
        })?;
        rgb.extend_from_slice(line);
    }
    RgbImage::from_raw(plane.width, plane.height, rgb)
        .ok_or_else(|| CodecFailure::Corrupt("libheif's RGB plane has the wrong size".into()))
}
