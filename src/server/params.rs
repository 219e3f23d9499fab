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

/// One parameter's value as text (numbers in JSON bodies are accepted as numbers or strings).
fn as_text(key: &str, value: &Value) -> Result<Option<String>, ApiError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Number(n) => Ok(Some(n.to_string())),
        Value::Bool(b) => Ok(Some(b.to_string())),
        _ => Err(ApiError::bad_request(format!(
            "parameter `{key}` must be a string or a number"
        ))),
    }
}

/// Parses `k` (also used by the image routes): a whole number; out of range is
/// `k_out_of_range`, not a number is `bad_request`.
pub fn parse_k(value: Option<&str>, max: usize) -> Result<usize, ApiError> {
    let Some(raw) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(DEFAULT_K.min(max));
    };
    let out_of_range = || {
        ApiError::new(
            actix_web::http::StatusCode::BAD_REQUEST,
            "k_out_of_range",
            format!("k = {raw} is out of range: ask for 1 to {max} results"),
        )
    };
    if raw.bytes().all(|b| b.is_ascii_digit()) {
        let k: u64 = raw.parse().map_err(|_| out_of_range())?;
        if k == 0 || k > max as u64 {
            return Err(out_of_range());
        }
        return Ok(k as usize);
    }
    if raw.starts_with('-') && raw[1..].bytes().all(|b| b.is_ascii_digit()) {
        return Err(out_of_range());
    }
    Err(ApiError::bad_request(format!(
        "k = {raw:?} is not a whole number; ask for 1 to {max} results"
    )))
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

/// A text query from `(key, value)` pairs; unknown keys are refused so typos do not pass
/// silently.
pub fn text_query<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a Value)>,
    max_k: usize,
) -> Result<TextQuery, ApiError> {
    let mut q = None;
    let mut query = TextQuery::new("", DEFAULT_K.min(max_k));
    let mut k = None;
    for (key, value) in pairs {
        let Some(text) = as_text(key, value)? else {
            continue;
        };
        match key {
            "q" => q = Some(text),
            "k" => k = Some(text),
            "min_match" => {
                if text.trim().is_empty() {
                    continue;
                }
                let m: f32 = text.trim().parse().map_err(|_| {
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
                if text.trim().is_empty() {
                    continue;
                }
                query.rerank = Some(text.trim().parse().map_err(|_| {
                    ApiError::bad_request(format!(
                        "rerank = {text:?} is not a whole number (0 = no ITM re-ranking)"
                    ))
                })?);
            }
            "folder" if !text.trim().is_empty() => {
                query.filters.folder = Some(PathBuf::from(text.trim()))
            }
            "from" if !text.trim().is_empty() => {
                query.filters.from_s = Some(parse_date("from", &text)?)
            }
            "to" if !text.trim().is_empty() => {
                // Inclusive: up to the end of that day.
                query.filters.to_s = Some(parse_date("to", &text)? + 86_400)
            }
            "type" if !text.trim().is_empty() => {
                let t = text.trim().to_ascii_lowercase();
                let t = if t == "jpg" { "jpeg".to_string() } else { t };
                if !FORMATS.contains(&t.as_str()) {
                    return Err(ApiError::bad_request(format!(
                        "type = {text:?} is not a known format; use one of {}",
                        FORMATS.join(", ")
                    )));
                }
                query.filters.format = Some(t);
            }
            "sort" => {
                query.sort = match text.trim() {
                    "" | "relevance" => SortOrder::Relevance,
                    "date" => SortOrder::Date,
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "sort = {other:?} is not an order; use relevance or date"
                        )))
                    }
                }
            }
            "folder" | "from" | "to" | "type" => {}
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter `{other}`; search takes q, k, min_match, rerank, folder, \
                     from, to, type and sort"
                )))
            }
        }
    }
    query.text = q.ok_or_else(|| {
        ApiError::new(
            actix_web::http::StatusCode::BAD_REQUEST,
            "empty_query",
            "the query is empty: give the text to search for as `q`",
        )
    })?;
    query.k = parse_k(k.as_deref(), max_k)?;
    if let (Some(from), Some(to)) = (query.filters.from_s, query.filters.to_s) {
        if from >= to {
            return Err(ApiError::bad_request(
                "`from` is after `to`: the date range is empty",
            ));
        }
    }
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
        assert_eq!(parse_k(Some("ten"), 200).unwrap_err().code, "bad_request");
    }

    #[test]
    fn query_pairs_parse_and_refuse_unknown_keys() {
        let v = |s: &str| Value::String(s.into());
        let (q, k, t, to) = (v("red circle"), Value::from(7), v("JPG"), v("2021-06-01"));
        let query = text_query([("q", &q), ("k", &k), ("type", &t), ("to", &to)], 200).unwrap();
        assert_eq!(query.text, "red circle");
        assert_eq!(query.k, 7);
        assert_eq!(query.filters.format.as_deref(), Some("jpeg"));
        assert_eq!(query.filters.to_s, Some(1_622_505_600 + 86_400));
        let bad = v("x");
        assert_eq!(
            text_query([("q", &q), ("kk", &bad)], 200).unwrap_err().code,
            "bad_request"
        );
        assert_eq!(
            text_query([("k", &k)], 200).unwrap_err().code,
            "empty_query"
        );
    }
}
