//! Camera RAW files (DNG, NEF, ARW, CR2, PEF and other TIFF-structured RAWs) by their
//! embedded preview JPEG.
//!
//! A RAW file holds the sensor's mosaic and, beside it, a JPEG the camera rendered from it
//! (full size or near it on most cameras) for its own screen. Demosaicing the mosaic would
//! need each camera's colour matrices and white balance, and would still not be the picture
//! the photographer saw; the preview is that picture, and it is what photo managers show. So
//! quarry indexes the largest embedded JPEG.
//!
//! These files are TIFF structures: the previews hang off IFD0, its chain of next IFDs, or its
//! SubIFDs, either as a JPEG interchange pointer (tags 0x0201/0x0202) or as a one-strip image
//! with JPEG compression. The raw data itself can also be JPEG-coded (lossless JPEG, SOF3, in
//! DNG and CR2), so a candidate is taken only when its frame header says baseline, extended or
//! progressive JPEG. A file is a RAW, not a plain TIFF, when IFD0 has a DNG version, some IFD
//! holds a colour-filter-array or linear-raw image, or it carries Canon's CR2 marker.
//!
//! The RAW's orientation tag (IFD0) applies to the preview, which rarely carries its own.
//!
//! The same structure reader guards plain TIFF files ([`check_tag_sizes`]) before another
//! decoder sizes its tables from them.

use super::CodecFailure;

const TAG_COMPRESSION: u16 = 0x0103;
const TAG_PHOTOMETRIC: u16 = 0x0106;
const TAG_STRIP_OFFSETS: u16 = 0x0111;
const TAG_ORIENTATION: u16 = 0x0112;
const TAG_STRIP_BYTE_COUNTS: u16 = 0x0117;
const TAG_SUB_IFDS: u16 = 0x014A;
const TAG_JPEG_OFFSET: u16 = 0x0201;
const TAG_JPEG_LENGTH: u16 = 0x0202;
const TAG_DNG_VERSION: u16 = 0xC612;

const PHOTOMETRIC_CFA: u32 = 32803;
const PHOTOMETRIC_LINEAR_RAW: u32 = 34892;

/// Bounds on what a damaged file can make the parser do.
const MAX_IFDS: usize = 64;
const MAX_ENTRIES: usize = 4096;

/// An embedded JPEG preview: where it is and its size from its frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Preview {
    /// Byte range in the file.
    pub start: usize,
    pub end: usize,
    /// Stored (unrotated) size.
    pub width: u32,
    pub height: u32,
}

/// What the TIFF structure says.
#[derive(Debug, Default)]
pub(crate) struct RawLayout {
    /// The largest usable preview, if any.
    pub preview: Option<Preview>,
    /// IFD0's orientation (1 when absent or invalid).
    pub orientation: u16,
}

struct Tiff<'a> {
    bytes: &'a [u8],
    little: bool,
}

#[derive(Default)]
struct Ifd {
    values: Vec<(u16, Vec<u32>)>,
    next: u32,
}

impl Ifd {
    fn get(&self, tag: u16) -> Option<&[u32]> {
        self.values
            .iter()
            .find(|(t, _)| *t == tag)
            .map(|(_, v)| v.as_slice())
    }
    fn first(&self, tag: u16) -> Option<u32> {
        self.get(tag).and_then(|v| v.first().copied())
    }
}

impl<'a> Tiff<'a> {
    fn new(bytes: &'a [u8]) -> Option<Self> {
        let little = match bytes.get(..4)? {
            b"II*\0" => true,
            b"MM\0*" => false,
            _ => return None,
        };
        Some(Self { bytes, little })
    }

    fn u16_at(&self, at: usize) -> Option<u16> {
        let b: [u8; 2] = self.bytes.get(at..at.checked_add(2)?)?.try_into().ok()?;
        Some(if self.little {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        })
    }

    fn u32_at(&self, at: usize) -> Option<u32> {
        let b: [u8; 4] = self.bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(if self.little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    }

    /// The integer values of one IFD (SHORT, LONG and IFD types; others are skipped).
    fn ifd(&self, offset: u32) -> Option<Ifd> {
        let at = offset as usize;
        let count = usize::from(self.u16_at(at)?).min(MAX_ENTRIES);
        let mut ifd = Ifd::default();
        for i in 0..count {
            let entry = at + 2 + i * 12;
            let tag = self.u16_at(entry)?;
            let kind = self.u16_at(entry + 2)?;
            let n = self.u32_at(entry + 4)? as usize;
            let size = match kind {
                3 => 2,      // SHORT
                4 | 13 => 4, // LONG, IFD
                1 | 7 => 1,  // BYTE, UNDEFINED (DNGVersion is BYTE[4])
                _ => continue,
            };
            let n = n.min(4096);
            let total = n.checked_mul(size)?;
            let data = if total <= 4 {
                entry + 8
            } else {
                self.u32_at(entry + 8)? as usize
            };
            let mut values = Vec::with_capacity(n);
            for k in 0..n {
                let v = match size {
                    1 => u32::from(*self.bytes.get(data + k)?),
                    2 => u32::from(self.u16_at(data + 2 * k)?),
                    _ => self.u32_at(data + 4 * k)?,
                };
                values.push(v);
            }
            ifd.values.push((tag, values));
        }
        ifd.next = self.u32_at(at + 2 + count * 12).unwrap_or(0);
        Some(ifd)
    }

    /// IFD0, its chain and the SubIFDs of each, breadth first, each at most once.
    fn all_ifds(&self) -> Vec<Ifd> {
        let mut queue = vec![self.u32_at(4).unwrap_or(0)];
        let mut seen = Vec::new();
        let mut out = Vec::new();
        while let Some(offset) = queue.pop() {
            if offset == 0 || seen.contains(&offset) || out.len() >= MAX_IFDS {
                continue;
            }
            seen.push(offset);
            let Some(ifd) = self.ifd(offset) else {
                continue;
            };
            queue.push(ifd.next);
            if let Some(subs) = ifd.get(TAG_SUB_IFDS) {
                queue.extend(subs.iter().rev());
            }
            out.push(ifd);
        }
        out
    }
}

/// Bytes per value of each TIFF field type (TIFF 6.0, BigTIFF's 8-byte types); 0: unknown.
fn type_size(kind: u16) -> usize {
    match kind {
        1 | 2 | 6 | 7 => 1,
        3 | 8 => 2,
        4 | 9 | 11 | 13 => 4,
        5 | 10 | 12 | 16 | 17 | 18 => 8,
        _ => 0,
    }
}

/// Checks that no tag of any IFD claims more data than the whole file holds. Decoders size
/// their tables from these counts before reading them (a damaged count of 66 million offsets
/// made the `tiff` crate allocate 266 MB for a 10 KB file), and no honest tag can be larger
/// than the file, so this bounds every such allocation by the file's size. Classic TIFF only;
/// BigTIFF files pass unchecked.
pub(crate) fn check_tag_sizes(bytes: &[u8]) -> Result<(), String> {
    let Some(tiff) = Tiff::new(bytes) else {
        return Ok(());
    };
    let mut queue = vec![tiff.u32_at(4).unwrap_or(0)];
    let mut seen = Vec::new();
    while let Some(offset) = queue.pop() {
        if offset == 0 || seen.contains(&offset) || seen.len() >= MAX_IFDS {
            continue;
        }
        seen.push(offset);
        let at = offset as usize;
        let Some(count) = tiff.u16_at(at) else {
            return Err(format!(
                "damaged TIFF: an IFD at byte {at} lies past the end"
            ));
        };
        for i in 0..usize::from(count) {
            let entry = at + 2 + i * 12;
            let (Some(tag), Some(kind), Some(n)) = (
                tiff.u16_at(entry),
                tiff.u16_at(entry + 2),
                tiff.u32_at(entry + 4),
            ) else {
                return Err(format!("damaged TIFF: the IFD at byte {at} is cut short"));
            };
            let claimed = (n as usize).saturating_mul(type_size(kind));
            if claimed > bytes.len() {
                return Err(format!(
                    "damaged TIFF: tag {tag:#06x} claims {n} values ({claimed} bytes), more than \
                     the whole file ({} bytes)",
                    bytes.len()
                ));
            }
            if matches!(tag, TAG_SUB_IFDS | 0x8769 | 0x8825 | 0xA005) && matches!(kind, 4 | 13) {
                if n == 1 {
                    queue.push(tiff.u32_at(entry + 8).unwrap_or(0));
                } else if let Some(list) = tiff.u32_at(entry + 8) {
                    for k in 0..(n as usize).min(64) {
                        queue.push(tiff.u32_at(list as usize + 4 * k).unwrap_or(0));
                    }
                }
            }
        }
        queue.push(tiff.u32_at(at + 2 + usize::from(count) * 12).unwrap_or(0));
    }
    Ok(())
}

/// Whether a TIFF-structured file is a camera RAW (see the module docs).
pub(crate) fn is_raw(bytes: &[u8]) -> bool {
    let Some(tiff) = Tiff::new(bytes) else {
        return false;
    };
    if bytes.get(8..10) == Some(b"CR") {
        return true;
    }
    let ifds = tiff.all_ifds();
    ifds.first()
        .is_some_and(|ifd0| ifd0.get(TAG_DNG_VERSION).is_some())
        || ifds.iter().any(|ifd| {
            matches!(
                ifd.first(TAG_PHOTOMETRIC),
                Some(PHOTOMETRIC_CFA | PHOTOMETRIC_LINEAR_RAW)
            )
        })
}

/// The largest baseline/progressive JPEG preview and IFD0's orientation.
pub(crate) fn layout(bytes: &[u8]) -> RawLayout {
    let Some(tiff) = Tiff::new(bytes) else {
        return RawLayout::default();
    };
    let ifds = tiff.all_ifds();
    let orientation = ifds
        .first()
        .and_then(|ifd0| ifd0.first(TAG_ORIENTATION))
        .and_then(|o| u16::try_from(o).ok())
        .filter(|o| (1..=8).contains(o))
        .unwrap_or(1);
    let mut best: Option<Preview> = None;
    for ifd in &ifds {
        let photometric = ifd.first(TAG_PHOTOMETRIC);
        let raw_data = matches!(photometric, Some(PHOTOMETRIC_CFA | PHOTOMETRIC_LINEAR_RAW));
        let mut candidates = Vec::new();
        if let (Some(start), Some(len)) = (ifd.first(TAG_JPEG_OFFSET), ifd.first(TAG_JPEG_LENGTH)) {
            candidates.push((start, len));
        }
        let jpeg_strip = matches!(ifd.first(TAG_COMPRESSION), Some(6 | 7)) && !raw_data;
        if let (true, Some([start]), Some([len])) = (
            jpeg_strip,
            ifd.get(TAG_STRIP_OFFSETS),
            ifd.get(TAG_STRIP_BYTE_COUNTS),
        ) {
            candidates.push((*start, *len));
        }
        for (start, len) in candidates {
            let (start, len) = (start as usize, len as usize);
            let Some(end) = start.checked_add(len).filter(|&e| e <= bytes.len()) else {
                continue;
            };
            let Some((width, height)) = jpeg_frame_size(&bytes[start..end]) else {
                continue;
            };
            let area = u64::from(width) * u64::from(height);
            if best.is_none_or(|b| area > u64::from(b.width) * u64::from(b.height)) {
                best = Some(Preview {
                    start,
                    end,
                    width,
                    height,
                });
            }
        }
    }
    RawLayout {
        preview: best,
        orientation,
    }
}

/// Width and height from a JPEG's frame header, when it is baseline, extended or progressive
/// (not lossless: that is raw sensor data, not a picture).
fn jpeg_frame_size(jpeg: &[u8]) -> Option<(u32, u32)> {
    if !jpeg.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    let mut i = 2;
    loop {
        if *jpeg.get(i)? != 0xFF {
            return None;
        }
        while *jpeg.get(i)? == 0xFF {
            i += 1;
        }
        let marker = *jpeg.get(i)?;
        i += 1;
        if matches!(marker, 0x01 | 0xD0..=0xD7) {
            continue;
        }
        let len = usize::from(u16::from_be_bytes([*jpeg.get(i)?, *jpeg.get(i + 1)?]));
        match marker {
            0xC0..=0xC2 => {
                let height = u16::from_be_bytes([*jpeg.get(i + 3)?, *jpeg.get(i + 4)?]);
                let width = u16::from_be_bytes([*jpeg.get(i + 5)?, *jpeg.get(i + 6)?]);
                return (width > 0 && height > 0).then_some((u32::from(width), u32::from(height)));
            }
            // Any other frame type (lossless, hierarchical, arithmetic) or the scan itself.
            0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF | 0xDA => return None,
            _ => i += len,
        }
    }
}

/// The preview's bytes, or why there is none.
pub(crate) fn preview(bytes: &[u8]) -> Result<(&[u8], RawLayout), CodecFailure> {
    let layout = layout(bytes);
    match layout.preview {
        Some(p) => Ok((&bytes[p.start..p.end], layout)),
        None => Err(CodecFailure::Corrupt(
            "camera RAW file without an embedded JPEG preview (quarry indexes RAW files by \
             their preview; export a JPEG to index this one)"
                .into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_sizes_come_from_baseline_and_progressive_headers_only() {
        // SOI, SOF0 (length 17, 8 bits, height 0x0078, width 0x00A0), then an SOS.
        let mut sof0 = vec![
            0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x11, 0x08, 0x00, 0x78, 0x00, 0xA0,
        ];
        sof0.extend([0u8; 12]);
        assert_eq!(jpeg_frame_size(&sof0), Some((160, 120)));
        let mut sof3 = sof0.clone();
        sof3[3] = 0xC3;
        assert_eq!(jpeg_frame_size(&sof3), None, "lossless JPEG is sensor data");
        let mut with_app = vec![0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x04, 0x00, 0x00];
        with_app.extend(&sof0[2..]);
        assert_eq!(jpeg_frame_size(&with_app), Some((160, 120)));
        assert_eq!(jpeg_frame_size(&sof0[..7]), None, "cut short");
        assert_eq!(jpeg_frame_size(b"not a jpeg"), None);
    }

    #[test]
    fn damaged_structures_give_no_preview_and_no_panic() {
        for bytes in [
            &b"II*\0"[..],
            b"II*\0\xff\xff\xff\xff",
            b"MM\0*\0\0\0\x08\xff\xff",
            b"II*\0\x08\0\0\0\x01\0\x01\x02\x04\0\xff\xff\xff\x7f\0\0\0\0",
        ] {
            assert_eq!(layout(bytes).preview, None);
            let _ = is_raw(bytes);
        }
    }
}
