//! Recognising images by their first bytes, never by their file name.
//!
//! A photo library is full of files whose names lie: thumbnails saved as `.jpg` that are HTML
//! error pages, zero-byte files left by an interrupted copy, PNGs renamed to `.jpeg`. The walker
//! and the pipeline decide what a file is from its magic bytes, so a renamed image is still
//! indexed and a fake one is reported instead of being silently decoded as something else.
//!
//! HEIC and AVIF are told apart by the brands of their `ftyp` box (both are HEIF containers);
//! JPEG XL by its codestream or container signature.

use serde::{Deserialize, Serialize};

/// How many leading bytes [`sniff`] needs to classify any format it knows.
pub const SNIFF_LEN: usize = 64;

/// An image format this crate decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ImageKind {
    /// JPEG / JFIF / EXIF JPEG.
    Jpeg,
    /// PNG (APNG files give their first frame).
    Png,
    /// WebP, lossy or lossless.
    WebP,
    /// GIF; the first frame is indexed.
    Gif,
    /// Windows bitmap.
    Bmp,
    /// TIFF and BigTIFF.
    Tiff,
    /// HEIF with HEVC coding (iPhone photos since iOS 11).
    Heic,
    /// AV1 Image File Format.
    Avif,
    /// JPEG XL, bare codestream or container.
    JpegXl,
}

impl ImageKind {
    /// Every format, in the order users see them listed.
    pub const ALL: [ImageKind; 9] = [
        ImageKind::Jpeg,
        ImageKind::Png,
        ImageKind::WebP,
        ImageKind::Gif,
        ImageKind::Bmp,
        ImageKind::Tiff,
        ImageKind::Heic,
        ImageKind::Avif,
        ImageKind::JpegXl,
    ];

    /// A short lower-case name, as users know the format.
    pub const fn name(self) -> &'static str {
        match self {
            ImageKind::Jpeg => "jpeg",
            ImageKind::Png => "png",
            ImageKind::WebP => "webp",
            ImageKind::Gif => "gif",
            ImageKind::Bmp => "bmp",
            ImageKind::Tiff => "tiff",
            ImageKind::Heic => "heic",
            ImageKind::Avif => "avif",
            ImageKind::JpegXl => "jxl",
        }
    }
}

impl std::fmt::Display for ImageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the first bytes of a file say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// A decodable image.
    Image(ImageKind),
    /// Not an image (or too short to be one).
    NotImage,
}

/// Classifies a file from its first bytes (at most [`SNIFF_LEN`] are looked at; fewer is fine).
pub fn sniff(head: &[u8]) -> Sniffed {
    use ImageKind::*;
    let starts = |magic: &[u8]| head.starts_with(magic);
    if starts(&[0xFF, 0xD8, 0xFF]) {
        return Sniffed::Image(Jpeg);
    }
    if starts(b"\x89PNG\r\n\x1a\n") {
        return Sniffed::Image(Png);
    }
    if starts(b"GIF87a") || starts(b"GIF89a") {
        return Sniffed::Image(Gif);
    }
    if head.len() >= 12 && starts(b"RIFF") && &head[8..12] == b"WEBP" {
        return Sniffed::Image(WebP);
    }
    if starts(b"II*\0") || starts(b"MM\0*") || starts(b"II+\0") || starts(b"MM\0+") {
        return Sniffed::Image(Tiff);
    }
    if is_bmp(head) {
        return Sniffed::Image(Bmp);
    }
    if starts(&[0xFF, 0x0A]) || starts(b"\0\0\0\x0CJXL \r\n\x87\n") {
        return Sniffed::Image(JpegXl);
    }
    if let Some(kind) = isobmff_image(head) {
        return Sniffed::Image(kind);
    }
    Sniffed::NotImage
}

/// "BM" alone is too weak (a text file may start with it): also require a known DIB header size.
fn is_bmp(head: &[u8]) -> bool {
    if head.len() < 18 || !head.starts_with(b"BM") {
        return false;
    }
    let dib = u32::from_le_bytes([head[14], head[15], head[16], head[17]]);
    matches!(dib, 12 | 16 | 40 | 52 | 56 | 64 | 108 | 124)
}

/// HEIF-family files start with an `ftyp` box: a major brand and a list of compatible brands.
fn isobmff_image(head: &[u8]) -> Option<ImageKind> {
    if head.len() < 12 || &head[4..8] != b"ftyp" {
        return None;
    }
    let box_len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
    let end = box_len.clamp(12, head.len());
    let mut brands = std::iter::once(&head[8..12]).chain(
        head.get(16..end)
            .unwrap_or_default()
            .chunks_exact(4)
            .collect::<Vec<_>>(),
    );
    let mut heif = false;
    for brand in &mut brands {
        match brand {
            b"avif" | b"avis" => return Some(ImageKind::Avif),
            b"heic" | b"heix" | b"hevc" | b"hevx" | b"heim" | b"heis" | b"mif1" | b"msf1" => {
                heif = true
            }
            _ => {}
        }
    }
    heif.then_some(ImageKind::Heic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_each_supported_format_from_real_encodings() {
        use std::io::Cursor;
        let img = image::DynamicImage::new_rgb8(20, 10);
        for (format, kind) in [
            (image::ImageFormat::Jpeg, ImageKind::Jpeg),
            (image::ImageFormat::Png, ImageKind::Png),
            (image::ImageFormat::WebP, ImageKind::WebP),
            (image::ImageFormat::Gif, ImageKind::Gif),
            (image::ImageFormat::Bmp, ImageKind::Bmp),
            (image::ImageFormat::Tiff, ImageKind::Tiff),
        ] {
            let mut bytes = Vec::new();
            img.write_to(&mut Cursor::new(&mut bytes), format).unwrap();
            assert_eq!(
                sniff(&bytes[..SNIFF_LEN.min(bytes.len())]),
                Sniffed::Image(kind)
            );
        }
    }

    #[test]
    fn heic_avif_and_jpeg_xl_are_told_apart_by_their_headers() {
        let heic = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic";
        assert_eq!(sniff(heic), Sniffed::Image(ImageKind::Heic));
        // AVIF often has major brand mif1 with avif among the compatible brands.
        let avif = b"\0\0\0\x1cftypmif1\0\0\0\0mif1avifmiaf";
        assert_eq!(sniff(avif), Sniffed::Image(ImageKind::Avif));
        let mp4 = b"\0\0\0\x18ftypisom\0\0\x02\0isomiso2";
        assert_eq!(sniff(mp4), Sniffed::NotImage, "a video is not an image");
        assert_eq!(
            sniff(&[0xFF, 0x0A, 0xFA]),
            Sniffed::Image(ImageKind::JpegXl)
        );
        assert_eq!(
            sniff(b"\0\0\0\x0cJXL \r\n\x87\n\0\0\0\x14ftypjxl "),
            Sniffed::Image(ImageKind::JpegXl)
        );
    }

    #[test]
    fn text_empty_and_lookalikes_are_not_images() {
        assert_eq!(sniff(b""), Sniffed::NotImage);
        assert_eq!(sniff(b"hello, I am text"), Sniffed::NotImage);
        assert_eq!(sniff(b"BMW 3 series brochure text ...."), Sniffed::NotImage);
        assert_eq!(
            sniff(&[0xFF, 0xD8]),
            Sniffed::NotImage,
            "two bytes are not a JPEG"
        );
        assert_eq!(sniff(b"RIFF\0\0\0\0WAVEfmt "), Sniffed::NotImage);
    }
}
