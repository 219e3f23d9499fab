//! Decoders for the formats the `image` crate does not read: what phones and new cameras write.
//!
//! * [`heif`] — HEIC (HEVC in HEIF: iPhones since iOS 11) and AVIF (AV1 in HEIF: Android,
//!   browsers), both through libheif, the library pillow-heif wraps for Python users.
//! * [`jpegxl`] — JPEG XL, through jxl-oxide (pure Rust).
//! * [`raw`] — camera RAW files (DNG, NEF, ARW, CR2, …) by their embedded preview JPEG.
//!
//! Each gives the image as displayed (the container's own rotation and mirroring applied, as
//! its specification requires, and its EXIF orientation therefore *not* applied again), in
//! 8-bit RGB with alpha dropped, and the raw EXIF block so capture times and cameras are read
//! the same way as for JPEG. Pixel values are taken as stored, without colour management: a
//! Display P3 photo keeps its P3 values, exactly as Pillow's `convert("RGB")` gives them to
//! LAVIS and transformers.

pub(crate) mod heif;
pub(crate) mod jpegxl;
pub(crate) mod raw;

/// Why a codec could not give pixels.
#[derive(Debug)]
pub(crate) enum CodecFailure {
    /// The header's size is over the pixel limit; nothing was decoded.
    TooLarge {
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
    },
    /// Damaged, truncated or not decodable; the reason is for the user.
    Corrupt(String),
}

/// What a container says about its image without decoding the pixels.
pub(crate) struct Facts {
    /// Width as displayed (the container's transformations applied).
    pub width: u32,
    /// Height as displayed.
    pub height: u32,
    /// The EXIF block as a TIFF structure (after the container's header offset), if any.
    pub exif_tiff: Option<Vec<u8>>,
}

/// The TIFF structure of an EXIF item as HEIF and JPEG XL store it: a 4-byte big-endian offset
/// to the TIFF header, then the payload. `None` when the offset points past the end.
pub(crate) fn exif_tiff_after_offset(block: &[u8]) -> Option<Vec<u8>> {
    let offset = u32::from_be_bytes(block.get(..4)?.try_into().ok()?) as usize;
    let tiff = block.get(4usize.checked_add(offset)?..)?;
    (!tiff.is_empty()).then(|| tiff.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exif_offset_is_followed_and_bad_offsets_give_none() {
        assert_eq!(
            exif_tiff_after_offset(b"\0\0\0\x06Exif\0\0MM\0*"),
            Some(b"MM\0*".to_vec())
        );
        assert_eq!(
            exif_tiff_after_offset(b"\0\0\0\0II*\0"),
            Some(b"II*\0".to_vec())
        );
        assert_eq!(exif_tiff_after_offset(b"\0\0\0\x09II*\0"), None);
        assert_eq!(exif_tiff_after_offset(b"\xff\xff\xff\xffII*\0"), None);
        assert_eq!(exif_tiff_after_offset(b"\0\0"), None);
    }
}
