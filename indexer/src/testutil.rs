//! Test fixtures written byte by byte in the tests: encoded images, EXIF blocks, a PNG header
//! that claims a huge image. No binary files from elsewhere.

use std::io::Cursor;
use std::path::Path;

use image::{DynamicImage, ImageFormat, RgbImage};

/// A deterministic colourful image.
pub fn pattern(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([
            (x * 37 % 256) as u8,
            (y * 59 % 256) as u8,
            ((x + y) * 13 % 256) as u8,
        ])
    })
}

/// Encodes an image in a format.
pub fn encode(img: RgbImage, format: ImageFormat) -> Vec<u8> {
    let mut out = Vec::new();
    DynamicImage::ImageRgb8(img)
        .write_to(&mut Cursor::new(&mut out), format)
        .unwrap();
    out
}

/// A JPEG of `pattern(width, height)`.
pub fn jpeg(width: u32, height: u32) -> Vec<u8> {
    encode(pattern(width, height), ImageFormat::Jpeg)
}

/// A PNG of `pattern(width, height)`.
pub fn png(width: u32, height: u32) -> Vec<u8> {
    encode(pattern(width, height), ImageFormat::Png)
}

/// One TIFF/EXIF directory entry.
pub enum Entry {
    /// An ASCII field (NUL-terminated in the file).
    Ascii(u16, &'static str),
    /// A SHORT field.
    Short(u16, u16),
}

/// A big-endian TIFF block as EXIF stores it: IFD0 entries, and an Exif sub-IFD (pointed to by
/// tag 0x8769) when `exif` is not empty.
pub fn tiff(ifd0: &[Entry], exif: &[Entry]) -> Vec<u8> {
    // Layout: header (8) | IFD0 | Exif IFD | data area. Offsets are from the header start.
    let ifd_len = |n: usize| 2 + 12 * n + 4;
    let n0 = ifd0.len() + usize::from(!exif.is_empty());
    let ifd0_at = 8;
    let exif_at = ifd0_at + ifd_len(n0);
    let data_at = exif_at
        + if exif.is_empty() {
            0
        } else {
            ifd_len(exif.len())
        };
    let mut data = Vec::new();
    let mut write_ifd = |entries: &[Entry], pointer: Option<u32>| -> Vec<u8> {
        let mut sorted: Vec<(u16, u16, u32, [u8; 4])> = Vec::new();
        for e in entries {
            match e {
                Entry::Short(tag, v) => {
                    let mut val = [0u8; 4];
                    val[..2].copy_from_slice(&v.to_be_bytes());
                    sorted.push((*tag, 3, 1, val));
                }
                Entry::Ascii(tag, s) => {
                    let mut bytes = s.as_bytes().to_vec();
                    bytes.push(0);
                    let count = bytes.len() as u32;
                    let val = if bytes.len() <= 4 {
                        let mut v = [0u8; 4];
                        v[..bytes.len()].copy_from_slice(&bytes);
                        v
                    } else {
                        let at = (data_at + data.len()) as u32;
                        data.extend(&bytes);
                        if data.len() % 2 == 1 {
                            data.push(0);
                        }
                        at.to_be_bytes()
                    };
                    sorted.push((*tag, 2, count, val));
                }
            }
        }
        if let Some(p) = pointer {
            sorted.push((0x8769, 4, 1, p.to_be_bytes()));
        }
        sorted.sort_by_key(|e| e.0);
        let mut out = (sorted.len() as u16).to_be_bytes().to_vec();
        for (tag, ty, count, val) in sorted {
            out.extend(tag.to_be_bytes());
            out.extend(ty.to_be_bytes());
            out.extend(count.to_be_bytes());
            out.extend(val);
        }
        out.extend(0u32.to_be_bytes());
        out
    };
    let first = write_ifd(ifd0, (!exif.is_empty()).then_some(exif_at as u32));
    let second = if exif.is_empty() {
        Vec::new()
    } else {
        write_ifd(exif, None)
    };
    let mut out = b"MM\0\x2a".to_vec();
    out.extend((ifd0_at as u32).to_be_bytes());
    out.extend(first);
    out.extend(second);
    out.extend(data);
    out
}

/// Inserts an APP1 "Exif" segment holding `tiff` right after a JPEG's SOI marker.
pub fn with_exif(jpeg: &[u8], tiff: &[u8]) -> Vec<u8> {
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend(tiff);
    let len = u16::try_from(app1.len() + 2).unwrap();
    let mut out = jpeg[..2].to_vec();
    out.extend([0xFF, 0xE1]);
    out.extend(len.to_be_bytes());
    out.extend(app1);
    out.extend(&jpeg[2..]);
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend((data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend(data);
    out.extend(&body);
    out.extend(crc32(&body).to_be_bytes());
}

/// A small, valid-looking PNG that claims `width`×`height` RGB pixels: a decompression bomb's
/// header (IHDR, a token IDAT, IEND) in about 60 bytes.
pub fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// Whether this process can read a file whose permissions forbid it (it runs as root or with
/// CAP_DAC_OVERRIDE), so permission tests must be skipped and say so.
pub fn permissions_are_bypassed(locked_file: &Path) -> bool {
    std::fs::File::open(locked_file).is_ok()
}

#[test]
fn png_header_fixture_is_well_formed() {
    // The CRC of "IEND" with no data is a published constant.
    assert_eq!(crc32(b"IEND"), 0xAE42_6082);
    let bytes = png_claiming(30_000, 30_000);
    let (w, h) = image::ImageReader::new(Cursor::new(&bytes))
        .with_guessed_format()
        .unwrap()
        .into_dimensions()
        .unwrap();
    assert_eq!((w, h), (30_000, 30_000));
}
