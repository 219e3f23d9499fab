//! Search parameters from a query string or a JSON body, checked with messages that say
//! which parameter is wrong and what is accepted.

use std::path::PathBuf;

use serde_json::Value;

use super::ApiError;
use crate::indexer::ImageKind;
use crate::search::{SortOrder, TextQuery};

/// Results returned when `k` is not given.
pub const DEFAULT_K: usize = 24;

/// The image formats the `type` filter accepts: every format the indexer records (camera RAW
/// files are TIFF structures and are recorded as `tiff`).
pub const FORMATS: [&str; 9] = {
    let mut names = [""; 9];
    let mut i = 0;
    while i < ImageKind::ALL.len() {
        names[i] = ImageKind::ALL[i].name();
        i += 1;
    }
    names
};

/// Where a parameter came from: a query string gives text for everything; a JSON body gives
/// typed values, and the document says which type each field has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `?k=5&q=…`: numbers are written in digits.
    Query,
    /// `{"k": 5, "q": "…"}`: numbers are JSON numbers, texts JSON strings.
    Json,
}

/// A text parameter: a JSON string, or any query value.
fn text_value(key: &str, value: &Value, source: Source) -> Result<String, ApiError> {
    match value {
        Value::String(s) => Ok(s.clone()),
        _ if source == Source::Query => Ok(value.to_string()),
        _ => Err(ApiError::bad_request(format!(
            "parameter `{key}` must be a JSON string"
        ))),
    }
}

/// A numeric parameter as text: digits from a query string, a JSON number from a body. Empty
/// query values are refused: `k=` is not a number, and is not "not given" either.
fn number_text(key: &str, value: &Value, source: Source) -> Result<String, ApiError> {
    let text = match (value, source) {
        // JSON Schema counts 62.0 as the integer 62: so does the API.
        (Value::Number(n), Source::Json) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => u.to_string(),
            (_, Some(i), _) => i.to_string(),
            (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => format!("{f:.0}"),
            _ => n.to_string(),
        },
        (Value::String(s), Source::Query) => s.clone(),
        _ => {
            return Err(ApiError::bad_request(format!(
                "parameter `{key}` must be a JSON number"
            )))
        }
    };
    if text.is_empty() {
        return Err(ApiError::bad_request(format!(
            "parameter `{key}` is empty: leave it out, or give a number"
        )));
    }
    Ok(text)
}

/// Parses `k` (also used by the image routes): a whole number written in digits; out of range
/// is `k_out_of_range`, anything else `bad_request`. Absent: the default.
pub fn parse_k(value: Option<&str>, max: usize) -> Result<usize, ApiError> {
    let Some(raw) = value else {
        return Ok(DEFAULT_K.min(max));
    };
    let out_of_range = || {
        ApiError::new(
            actix_web::http::StatusCode::BAD_REQUEST,
            "k_out_of_range",
            format!("k = {raw} is out of range: ask for 1 to {max} results"),
        )
    };
    if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
        let k: u64 = raw.parse().map_err(|_| out_of_range())?;
        if k == 0 || k > max as u64 {
            return Err(out_of_range());
        }
        return Ok(k as usize);
    }
    if raw.len() > 1 && raw.starts_with('-') && raw[1..].bytes().all(|b| b.is_ascii_digit()) {
        return Err(out_of_range());
    }
    Err(ApiError::bad_request(format!(
        "k = {raw:?} is not a whole number; ask for 1 to {max} results"
    )))
}

/// Parses `rerank`: a whole number written in digits (0 = no ITM re-ranking); absent: `None`.
pub fn parse_rerank(value: Option<&str>) -> Result<Option<usize>, ApiError> {
    let Some(raw) = value else {
        return Ok(None);
    };
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::bad_request(format!(
            "rerank = {raw:?} is not a whole number (0 = no ITM re-ranking)"
        )));
    }
    raw.parse()
        .map(Some)
        .map_err(|_| ApiError::bad_request(format!("rerank = {raw} is too large")))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD` → seconds since the epoch at the start of that day (UTC, as capture times
/// without a zone are stored).
pub fn parse_date(key: &str, raw: &str) -> Result<i64, ApiError> {
    let bad = || {
        ApiError::bad_request(format!(
            "`{key}` = {raw:?} is not a date: write it as YYYY-MM-DD, e.g. 2021-06-01"
        ))
    };
    let parts: Vec<&str> = raw.trim().split('-').collect();
    if parts.len() != 3 || parts[0].len() != 4 || parts[1].len() != 2 || parts[2].len() != 2 {
        return Err(bad());
    }
    let n = |s: &str| s.parse::<i64>().map_err(|_| bad());
    let (y, m, d) = (n(parts[0])?, n(parts[1])?, n(parts[2])?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || d < 1 || d > days_in[(m - 1) as usize] {
        return Err(bad());
    }
    Ok(days_from_civil(y, m, d) * 86_400)
}

/// A text query from `(key, value)` pairs, read as the API document describes them: unknown
/// keys are refused so typos do not pass silently, and so are empty values of typed
/// parameters (`type=`, `from=`, `k=`): they match no value the document allows.
pub fn text_query<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a Value)>,
    source: Source,
    max_k: usize,
) -> Result<TextQuery, ApiError> {
    let mut q = None;
    let mut query = TextQuery::new("", DEFAULT_K.min(max_k));
    let mut k = None;
    for (key, value) in pairs {
        match key {
            "q" => q = Some(text_value(key, value, source)?),
            "k" => k = Some(number_text(key, value, source)?),
            "min_match" => {
                let text = number_text(key, value, source)?;
                let m: f32 = text
                    .parse()
                    .ok()
                    .filter(|m: &f32| m.is_finite())
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                        "min_match = {text:?} is not a number; give a match probability from 0 to 1"
                    ))
                    })?;
                if !(0.0..=1.0).contains(&m) {
                    return Err(ApiError::bad_request(format!(
                        "min_match = {m} is out of range: give a match probability from 0 to 1"
                    )));
                }
                query.min_match = Some(m);
            }
            "rerank" => {
                query.rerank = parse_rerank(Some(&number_text(key, value, source)?))?;
            }
            "folder" => {
                let folder = text_value(key, value, source)?;
                // An empty folder is no folder filter (the document allows any string).
                if !folder.is_empty() {
                    query.filters.folder = Some(PathBuf::from(folder));
                }
            }
            "from" => {
                query.filters.from_s = Some(parse_date("from", &text_value(key, value, source)?)?)
            }
            "to" => {
                // Inclusive: up to the end of that day.
                query.filters.to_s =
                    Some(parse_date("to", &text_value(key, value, source)?)? + 86_400)
            }
            "type" => {
                let t = text_value(key, value, source)?;
                if !FORMATS.contains(&t.as_str()) {
                    return Err(ApiError::bad_request(format!(
                        "type = {t:?} is not a known format; use one of {}",
                        FORMATS.join(", ")
                    )));
                }
                query.filters.format = Some(t);
            }
            "sort" => {
                query.sort = match text_value(key, value, source)?.as_str() {
                    "relevance" => SortOrder::Relevance,
                    "date" => SortOrder::Date,
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "sort = {other:?} is not an order; use relevance or date"
                        )))
                    }
                }
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter `{other}`; search takes q, k, min_match, rerank, folder, \
                     from, to, type and sort"
                )))
            }
        }
    }
    query.text = q.filter(|q| !q.trim().is_empty()).ok_or_else(|| {
        ApiError::new(
            actix_web::http::StatusCode::BAD_REQUEST,
            "empty_query",
            "the query is empty: give the text to search for as `q`",
        )
    })?;
    query.k = parse_k(k.as_deref(), max_k)?;
    // `from` after `to` is an empty range: no hits, as the document says (each date is valid
    // on its own, and a schema cannot relate two fields).
    Ok(query)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_match_known_epoch_offsets() {
        assert_eq!(parse_date("from", "1970-01-01").unwrap(), 0);
        assert_eq!(parse_date("from", "2000-03-01").unwrap(), 951_868_800);
        assert_eq!(parse_date("from", "2024-02-29").unwrap(), 1_709_164_800);
        assert!(parse_date("from", "2023-02-29").is_err());
        assert!(parse_date("from", "2023-1-01").is_err());
        assert!(parse_date("from", "yesterday").is_err());
    }

    #[test]
    fn k_is_checked_with_the_right_code() {
        assert_eq!(parse_k(Some("5"), 200).unwrap(), 5);
        assert_eq!(parse_k(None, 200).unwrap(), DEFAULT_K);
        for bad in ["0", "1000000000", "99999999999999999999999", "-3"] {
            assert_eq!(
                parse_k(Some(bad), 200).unwrap_err().code,
                "k_out_of_range",
                "{bad}"
            );
        }
        for bad in ["ten", "", " 5", "5.0", "-"] {
            assert_eq!(
                parse_k(Some(bad), 200).unwrap_err().code,
                "bad_request",
                "{bad:?}"
            );
        }
        assert_eq!(parse_rerank(Some("0")).unwrap(), Some(0));
        assert_eq!(parse_rerank(None).unwrap(), None);
        assert!(parse_rerank(Some("")).is_err() && parse_rerank(Some("x")).is_err());
    }

    #[test]
    fn query_pairs_parse_and_refuse_unknown_keys() {
        let v = |s: &str| Value::String(s.into());
        let (q, k, t, to) = (v("red circle"), Value::from(7), v("jpeg"), v("2021-06-01"));
        let query = text_query(
            [("q", &q), ("k", &k), ("type", &t), ("to", &to)],
            Source::Json,
            200,
        )
        .unwrap();
        assert_eq!(query.text, "red circle");
        assert_eq!(query.k, 7);
        assert_eq!(query.filters.format.as_deref(), Some("jpeg"));
        assert_eq!(query.filters.to_s, Some(1_622_505_600 + 86_400));
        let bad = v("x");
        assert_eq!(
            text_query([("q", &q), ("kk", &bad)], Source::Query, 200)
                .unwrap_err()
                .code,
            "bad_request"
        );
        assert_eq!(
            text_query([("k", &k)], Source::Json, 200).unwrap_err().code,
            "empty_query"
        );
        // What the document does not allow is refused, from either source.
        let (empty, null, five) = (v(""), Value::Null, v("5"));
        for (key, value, source) in [
            ("k", &empty, Source::Query),
            ("type", &empty, Source::Query),
            ("sort", &empty, Source::Query),
            ("from", &empty, Source::Query),
            ("min_match", &empty, Source::Query),
            ("rerank", &empty, Source::Query),
            ("type", &v("JPG"), Source::Query),
            ("k", &five, Source::Json),
            ("q", &null, Source::Json),
        ] {
            let pairs = [("q", &q), (key, value)];
            let pairs: Vec<(&str, &Value)> = if key == "q" {
                vec![(key, value)]
            } else {
                pairs.to_vec()
            };
            assert!(
                text_query(pairs, source, 200).is_err(),
                "{key} = {value} from {source:?} is refused"
            );
        }
        // An empty folder is no filter.
        assert!(text_query([("q", &q), ("folder", &empty)], Source::Query, 200).is_ok());
    }
}
