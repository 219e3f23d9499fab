//! What a photo says about itself: displayed size, EXIF orientation, capture time, camera.
//!
//! These feed search filters ("photos from 2019", "taken with the X100") and sorting, so they
//! are read from the file header and EXIF without decoding pixels. Missing or damaged EXIF is
//! normal (screenshots, edited exports, scans) and gives `None` fields, never an error: only a
//! file that is not a readable image fails.
//!
//! **Capture time and time zones.** EXIF `DateTimeOriginal` (else `DateTime`) is the camera's
//! wall clock, without a zone; newer cameras and phones add `OffsetTimeOriginal` (else
//! `OffsetTime`). [`CaptureTime::seconds`] is the true instant (Unix seconds, UTC) when the
//! offset is recorded, and otherwise the wall-clock reading counted *as if* it were UTC. The
//! alternative — assuming the indexing machine's zone — would silently shift photos taken while
//! travelling and change with the machine; wall-clock order is what the user remembers, and is
//! exact within one camera. The two kinds can differ by at most the zone offset (±14 h) when a
//! library mixes them. [`CaptureTime::iso8601`] carries the offset only when it is known
//! (`2021-07-04T15:30:00+02:00`), else it is a floating local time (`2021-07-04T15:30:00`).
//!
//! [`ImageInfo`] is persisted by the store: changing its fields needs a store migration.

use std::io::{BufRead, BufReader, Cursor, Seek};
use std::path::{Path, PathBuf};

use exif::{In, Tag, Value};

use crate::codecs::{self, CodecFailure, Facts};
use crate::sniff::{sniff, ImageKind, Sniffed, SNIFF_LEN};
use serde::{Deserialize, Serialize};

/// The most memory reading one image's header may take (decoders allocate tables from sizes the
/// file declares).
const HEADER_ALLOCATION_LIMIT: u64 = 64 << 20;

/// Facts about one image, from its header and EXIF.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// Width as displayed (after the EXIF orientation is applied).
    pub width: u32,
    /// Height as displayed.
    pub height: u32,
    /// EXIF orientation, 1–8 (1, "upright", when absent or invalid).
    pub orientation: u16,
    /// When the photo was taken, if recorded.
    pub captured_at: Option<CaptureTime>,
    /// Camera maker (EXIF `Make`), trimmed; `None` when absent or blank.
    pub camera_make: Option<String>,
    /// Camera model (EXIF `Model`), trimmed; `None` when absent or blank.
    pub camera_model: Option<String>,
}

impl ImageInfo {
    fn with_size(self, width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            ..self
        }
    }
}

/// A capture time (see the module docs for the time-zone rule).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureTime {
    /// ISO 8601, with the UTC offset when the file records one.
    pub iso8601: String,
    /// Sortable seconds: Unix time when the offset is known, else the wall clock read as UTC.
    pub seconds: i64,
    /// The recorded offset from UTC in minutes, if any.
    pub utc_offset_minutes: Option<i16>,
}

/// Why an image's facts could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// The file cannot be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The header is not that of a supported image.
    #[error("{path}: not a readable image header: {reason}")]
    NotAnImage {
        /// The file.
        path: PathBuf,
        /// The decoder's explanation.
        reason: String,
    },
}

/// Reads an image file's facts from its header and EXIF, without decoding the pixels (only the
/// first part of the file is read).
///
/// HEIC, AVIF and JPEG XL files are read whole: their decoders parse the container from memory.
pub fn read_image_info(path: &Path) -> Result<ImageInfo, MetadataError> {
    let io = |source| MetadataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut reader = BufReader::new(file);
    let head = reader.fill_buf().map_err(io)?;
    let tiff = matches!(
        sniff(&head[..head.len().min(SNIFF_LEN)]),
        Sniffed::Image(ImageKind::Tiff)
    );
    if container_kind(head).is_some() || tiff {
        // Container formats, and TIFF structures that may be camera RAWs, are read whole.
        return image_info_from_bytes(&std::fs::read(path).map_err(io)?, path);
    }
    image_info_from_reader(reader, path)
}

/// Reads the facts of an image already in memory (`path` only names it in errors).
pub fn image_info_from_bytes(bytes: &[u8], path: &Path) -> Result<ImageInfo, MetadataError> {
    if let Some(kind) = container_kind(bytes) {
        let facts = codec_facts(bytes, kind).map_err(|failure| MetadataError::NotAnImage {
            path: path.to_path_buf(),
            reason: match failure {
                CodecFailure::Corrupt(reason) => reason,
                CodecFailure::TooLarge { width, height } => format!("{width}x{height} pixels"),
            },
        })?;
        return Ok(info_from_codec(facts));
    }
    if let Some(info) = raw_info(bytes) {
        return Ok(info);
    }
    codecs::raw::check_tag_sizes(bytes).map_err(|reason| MetadataError::NotAnImage {
        path: path.to_path_buf(),
        reason,
    })?;
    image_info_from_reader(Cursor::new(bytes), path)
}

/// Facts of a camera RAW file: its preview's size turned by IFD0's orientation, and the EXIF
/// of its TIFF structure. `None` when the bytes are not a RAW or it has no usable preview (the
/// decoder reports that).
fn raw_info(bytes: &[u8]) -> Option<ImageInfo> {
    if !matches!(
        sniff(&bytes[..bytes.len().min(SNIFF_LEN)]),
        Sniffed::Image(ImageKind::Tiff)
    ) || !codecs::raw::is_raw(bytes)
    {
        return None;
    }
    let layout = codecs::raw::layout(bytes);
    let preview = layout.preview?;
    let exif = read_exif_tiff(bytes.to_vec());
    let info = info_with_stored_size(exif.as_ref(), preview.width, preview.height);
    // The orientation that turns the preview is IFD0's, whatever the EXIF reader found.
    let turned = (5..=8).contains(&layout.orientation);
    Some(ImageInfo {
        orientation: layout.orientation,
        width: if turned {
            preview.height
        } else {
            preview.width
        },
        height: if turned {
            preview.width
        } else {
            preview.height
        },
        ..info
    })
}

/// EXIF from a bare TIFF structure (a RAW file, or a HEIF/JPEG XL EXIF item).
fn read_exif_tiff(tiff: Vec<u8>) -> Option<exif::Exif> {
    let mut reader = exif::Reader::new();
    reader.continue_on_error(true);
    match reader.read_raw(tiff) {
        Ok(exif) => Some(exif),
        Err(exif::Error::PartialResult(partial)) => Some(partial.into_inner().0),
        Err(_) => None,
    }
}

/// The formats whose container carries its own geometry and is read by [`crate::codecs`].
fn container_kind(head: &[u8]) -> Option<ImageKind> {
    match sniff(&head[..head.len().min(SNIFF_LEN)]) {
        Sniffed::Image(kind @ (ImageKind::Heic | ImageKind::Avif | ImageKind::JpegXl)) => {
            Some(kind)
        }
        _ => None,
    }
}

fn codec_facts(bytes: &[u8], kind: ImageKind) -> Result<Facts, CodecFailure> {
    match kind {
        ImageKind::Heic => codecs::heif::facts(bytes, "HEIC"),
        ImageKind::Avif => codecs::heif::facts(bytes, "AVIF"),
        _ => codecs::jpegxl::facts(bytes),
    }
}

/// Facts of a HEIF or JPEG XL image: its size is already as displayed and its EXIF
/// orientation is not applied (the container's own transformations are), so it reads 1.
fn info_from_codec(facts: Facts) -> ImageInfo {
    let exif = facts.exif_tiff.and_then(read_exif_tiff);
    ImageInfo {
        orientation: 1,
        ..info_with_stored_size(exif.as_ref(), facts.width, facts.height)
    }
    .with_size(facts.width, facts.height)
}

fn image_info_from_reader<R: BufRead + Seek>(
    mut reader: R,
    path: &Path,
) -> Result<ImageInfo, MetadataError> {
    let exif = read_exif(&mut reader);
    reader
        .seek(std::io::SeekFrom::Start(0))
        .map_err(|source| MetadataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let fail = |reason: String| MetadataError::NotAnImage {
        path: path.to_path_buf(),
        reason,
    };
    let mut header = image::ImageReader::new(reader)
        .with_guessed_format()
        .map_err(|e| fail(e.to_string()))?;
    // Only the header is read here: a damaged one claiming huge tables must not be allocated.
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(HEADER_ALLOCATION_LIMIT);
    header.limits(limits);
    let (width, height) = header.into_dimensions().map_err(|e| fail(e.to_string()))?;
    Ok(info_with_stored_size(exif.as_ref(), width, height))
}

/// Combines EXIF facts with the image's *stored* (unrotated) size.
fn info_with_stored_size(exif: Option<&exif::Exif>, width: u32, height: u32) -> ImageInfo {
    let orientation = exif.map_or(1, orientation);
    let (width, height) = if (5..=8).contains(&orientation) {
        (height, width)
    } else {
        (width, height)
    };
    ImageInfo {
        width,
        height,
        orientation,
        captured_at: exif.and_then(capture_time),
        camera_make: exif.and_then(|e| ascii(e, Tag::Make)),
        camera_model: exif.and_then(|e| ascii(e, Tag::Model)),
    }
}

/// Facts for an image whose pixels were decoded with the orientation already applied
/// (`width`×`height` as displayed): what the pipeline knows after decoding.
pub(crate) fn info_with_displayed_size(bytes: &[u8], width: u32, height: u32) -> ImageInfo {
    if let Some(kind) = container_kind(bytes) {
        return match codec_facts(bytes, kind) {
            Ok(facts) => info_from_codec(facts),
            Err(_) => ImageInfo {
                width,
                height,
                orientation: 1,
                captured_at: None,
                camera_make: None,
                camera_model: None,
            },
        }
        .with_size(width, height);
    }
    if let Some(info) = raw_info(bytes) {
        return info.with_size(width, height);
    }
    let exif = read_exif(&mut Cursor::new(bytes));
    ImageInfo {
        width,
        height,
        ..info_with_stored_size(exif.as_ref(), width, height)
    }
}

/// EXIF of any container kamadak-exif knows (JPEG, PNG, WebP, TIFF, HEIF); `None` when absent.
/// Fields that parsed before a damaged one are kept.
fn read_exif<R: BufRead + Seek>(reader: &mut R) -> Option<exif::Exif> {
    let mut exif_reader = exif::Reader::new();
    exif_reader.continue_on_error(true);
    match exif_reader.read_from_container(reader) {
        Ok(exif) => Some(exif),
        Err(exif::Error::PartialResult(partial)) => Some(partial.into_inner().0),
        Err(_) => None,
    }
}

fn orientation(exif: &exif::Exif) -> u16 {
    exif.get_field(Tag::Orientation, In::PRIMARY)
        .and_then(|f| f.value.get_uint(0))
        .and_then(|v| u16::try_from(v).ok())
        .filter(|v| (1..=8).contains(v))
        .unwrap_or(1)
}

/// The first string of an ASCII field, trimmed of spaces and NULs; `None` when blank.
fn ascii(exif: &exif::Exif, tag: Tag) -> Option<String> {
    let field = exif.get_field(tag, In::PRIMARY)?;
    let Value::Ascii(ref strings) = field.value else {
        return None;
    };
    let text = String::from_utf8_lossy(strings.first()?);
    let text = text.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!text.is_empty()).then(|| text.to_string())
}

fn ascii_bytes(exif: &exif::Exif, tag: Tag) -> Option<&[u8]> {
    match exif.get_field(tag, In::PRIMARY)?.value {
        Value::Ascii(ref strings) => strings.first().map(Vec::as_slice),
        _ => None,
    }
}

fn capture_time(exif: &exif::Exif) -> Option<CaptureTime> {
    [
        (Tag::DateTimeOriginal, Tag::OffsetTimeOriginal),
        (Tag::DateTime, Tag::OffsetTime),
    ]
    .into_iter()
    .find_map(|(time, offset)| {
        parse_capture_time(ascii_bytes(exif, time)?, ascii_bytes(exif, offset))
    })
}

/// Parses EXIF's "YYYY:MM:DD HH:MM:SS" and an optional "+HH:MM"; `None` for blank or impossible
/// values ("0000:00:00 00:00:00" is common).
fn parse_capture_time(time: &[u8], offset: Option<&[u8]>) -> Option<CaptureTime> {
    let mut dt = exif::DateTime::from_ascii(time).ok()?;
    let valid = (1..=9999).contains(&dt.year)
        && (1..=12).contains(&dt.month)
        && dt.day >= 1
        && dt.day <= days_in_month(i64::from(dt.year), dt.month)
        && dt.hour < 24
        && dt.minute < 60
        && dt.second <= 60;
    if !valid {
        return None;
    }
    if let Some(offset) = offset {
        // A blank or malformed offset leaves the time floating rather than discarding it.
        let _ = dt.parse_offset(offset);
    }
    let offset = dt.offset.filter(|m| m.abs() <= 18 * 60);
    let days = days_from_civil(i64::from(dt.year), dt.month, dt.day);
    let wall = days * 86_400
        + i64::from(dt.hour) * 3600
        + i64::from(dt.minute) * 60
        + i64::from(dt.second);
    let mut iso8601 = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second
    );
    if let Some(m) = offset {
        let sign = if m < 0 { '-' } else { '+' };
        iso8601.push_str(&format!("{sign}{:02}:{:02}", m.abs() / 60, m.abs() % 60));
    }
    Some(CaptureTime {
        iso8601,
        seconds: wall - i64::from(offset.unwrap_or(0)) * 60,
        utc_offset_minutes: offset,
    })
}

fn days_in_month(year: i64, month: u8) -> u8 {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{self, Entry};

    const MAKE: u16 = 0x010F;
    const MODEL: u16 = 0x0110;
    const ORIENTATION: u16 = 0x0112;
    const DATE_TIME: u16 = 0x0132;
    const DATE_TIME_ORIGINAL: u16 = 0x9003;
    const OFFSET_TIME_ORIGINAL: u16 = 0x9011;

    #[test]
    fn exif_fields_are_read_from_a_jpeg_app1_segment() {
        let tiff = testutil::tiff(
            &[
                Entry::Ascii(MAKE, "FUJIFILM  "),
                Entry::Ascii(MODEL, " X100V"),
                Entry::Short(ORIENTATION, 6),
                Entry::Ascii(DATE_TIME, "2022:01:01 00:00:00"),
            ],
            &[
                Entry::Ascii(DATE_TIME_ORIGINAL, "2021:07:04 15:30:00"),
                Entry::Ascii(OFFSET_TIME_ORIGINAL, "+02:00"),
            ],
        );
        let bytes = testutil::with_exif(&testutil::jpeg(40, 30), &tiff);
        let info = image_info_from_bytes(&bytes, Path::new("p.jpg")).unwrap();
        assert_eq!(
            (info.width, info.height),
            (30, 40),
            "orientation 6 swaps the sides"
        );
        assert_eq!(info.orientation, 6);
        assert_eq!(info.camera_make.as_deref(), Some("FUJIFILM"));
        assert_eq!(info.camera_model.as_deref(), Some("X100V"));
        let t = info.captured_at.unwrap();
        assert_eq!(
            t.iso8601, "2021-07-04T15:30:00+02:00",
            "DateTimeOriginal wins over DateTime"
        );
        assert_eq!(t.utc_offset_minutes, Some(120));
        // 2021-07-04T13:30:00Z, computed independently: 18812 days after the epoch.
        assert_eq!(t.seconds, 18_812 * 86_400 + 13 * 3600 + 30 * 60);
    }

    #[test]
    fn datetime_is_the_fallback_and_floats_without_an_offset() {
        let tiff = testutil::tiff(&[Entry::Ascii(DATE_TIME, "1999:12:31 23:59:59")], &[]);
        let bytes = testutil::with_exif(&testutil::jpeg(8, 8), &tiff);
        let info = image_info_from_bytes(&bytes, Path::new("p.jpg")).unwrap();
        let t = info.captured_at.unwrap();
        assert_eq!(t.iso8601, "1999-12-31T23:59:59");
        assert_eq!(t.utc_offset_minutes, None);
        assert_eq!(t.seconds, 946_684_799, "wall clock read as UTC");
        assert_eq!(info.orientation, 1);
        assert_eq!(info.camera_make, None);
    }

    #[test]
    fn missing_blank_or_impossible_exif_is_not_an_error() {
        let plain = image_info_from_bytes(&testutil::png(7, 5), Path::new("s.png")).unwrap();
        assert_eq!(
            plain,
            ImageInfo {
                width: 7,
                height: 5,
                orientation: 1,
                captured_at: None,
                camera_make: None,
                camera_model: None
            }
        );
        let tiff = testutil::tiff(
            &[
                Entry::Ascii(MAKE, "   "),
                Entry::Short(ORIENTATION, 42),
                Entry::Ascii(DATE_TIME, "0000:00:00 00:00:00"),
            ],
            &[Entry::Ascii(DATE_TIME_ORIGINAL, "2021:02:30 10:00:00")],
        );
        let bytes = testutil::with_exif(&testutil::jpeg(8, 6), &tiff);
        let info = image_info_from_bytes(&bytes, Path::new("p.jpg")).unwrap();
        assert_eq!((info.width, info.height, info.orientation), (8, 6, 1));
        assert_eq!(info.camera_make, None, "blank make");
        assert_eq!(info.captured_at, None, "30 February and year 0 are refused");
        // Garbage in the APP1 segment: the image is still fine.
        let bytes = testutil::with_exif(&testutil::jpeg(8, 6), b"MM\0\x2a\0\0\xff\xff");
        assert_eq!(
            image_info_from_bytes(&bytes, Path::new("g.jpg"))
                .unwrap()
                .width,
            8
        );
    }

    #[test]
    fn header_only_reading_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.png");
        std::fs::write(&path, testutil::png_claiming(30_000, 20_000)).unwrap();
        let info = read_image_info(&path).unwrap();
        assert_eq!((info.width, info.height), (30_000, 20_000));
        let text = dir.path().join("t.jpg");
        std::fs::write(&text, "text").unwrap();
        let err = read_image_info(&text).unwrap_err();
        assert!(matches!(err, MetadataError::NotAnImage { .. }), "{err}");
        assert!(err.to_string().contains("t.jpg"));
        assert!(matches!(
            read_image_info(&dir.path().join("absent.png")),
            Err(MetadataError::Io { .. })
        ));
    }

    #[test]
    fn civil_days_and_offsets() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        let t = parse_capture_time(b"1970:01:01 00:00:00", Some(b"-05:30")).unwrap();
        assert_eq!(t.seconds, 5 * 3600 + 30 * 60);
        assert_eq!(t.iso8601, "1970-01-01T00:00:00-05:30");
        let t = parse_capture_time(b"2024:02:29 12:00:00", Some(b"      ")).unwrap();
        assert_eq!(
            (t.utc_offset_minutes, t.iso8601.as_str()),
            (None, "2024-02-29T12:00:00")
        );
        assert!(parse_capture_time(b"2023:02:29 12:00:00", None).is_none());
    }
}
