//! Words a user might type for a file: from its name and the folders above it.
//!
//! File names are written by cameras and people: `IMG_20230714_1532.jpg`, `beachDay-02.png`,
//! `HTMLExport(3).webp`. [`split_words`] cuts a string at
//! * anything that is not a letter or digit (`_`, `-`, `.`, spaces, brackets, …),
//! * a lower-case letter followed by an upper-case one (`beachDay` → `beach Day`),
//! * the last capital of a capital run followed by a lower-case letter (`HTMLExport` →
//!   `HTML Export`),
//! * a change between letters and digits (`IMG1234` → `IMG 1234`, `2023trip` → `2023 trip`),
//!
//! and, when a run was cut by case or digits, also keeps the whole run (`beachDay` →
//! `beach Day beachDay`), so both `beach` and `beachday` find it. Lower-casing and stemming are
//! left to the index's analyzer. The extension is not a word (every photo has one).

use std::path::Path;

/// How many folders above the file contribute words. The nearest folders name events and
/// places (`2023/Rome trip/`); the ones near the root (`home`, the user name) only add noise.
pub const FOLDER_DEPTH: usize = 4;

/// Words of a file name without its extension, see the module docs.
pub fn name_words(path: &Path) -> String {
    path.file_stem()
        .map(|s| split_words(&s.to_string_lossy()))
        .unwrap_or_default()
}

/// Words of the [`FOLDER_DEPTH`] folders nearest the file, nearest first.
pub fn folder_words(path: &Path) -> String {
    let Some(parent) = path.parent() else {
        return String::new();
    };
    let words: Vec<String> = parent
        .components()
        .rev()
        .filter_map(|c| match c {
            std::path::Component::Normal(s) => Some(split_words(&s.to_string_lossy())),
            _ => None,
        })
        .filter(|w| !w.is_empty())
        .take(FOLDER_DEPTH)
        .collect();
    words.join(" ")
}

#[derive(Clone, Copy, PartialEq)]
enum Class {
    Lower,
    Upper,
    Digit,
    /// Letters without case (CJK, …).
    Other,
}

fn class(c: char) -> Class {
    if c.is_numeric() {
        Class::Digit
    } else if c.is_uppercase() {
        Class::Upper
    } else if c.is_lowercase() {
        Class::Lower
    } else {
        Class::Other
    }
}

/// Splits `s` into space-separated words, see the module docs.
pub fn split_words(s: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    for run in s
        .split(|c: char| !c.is_alphanumeric())
        .filter(|r| !r.is_empty())
    {
        let chars: Vec<char> = run.chars().collect();
        let mut parts: Vec<String> = Vec::new();
        let mut start = 0;
        for i in 1..chars.len() {
            let (a, b) = (class(chars[i - 1]), class(chars[i]));
            let next_lower = chars.get(i + 1).is_some_and(|&c| class(c) == Class::Lower);
            let cut = (a == Class::Lower && b == Class::Upper)
                || (a == Class::Upper && b == Class::Upper && next_lower)
                || ((a == Class::Digit) != (b == Class::Digit));
            if cut {
                parts.push(chars[start..i].iter().collect());
                start = i;
            }
        }
        parts.push(chars[start..].iter().collect());
        let whole = parts.len() > 1;
        out.extend(parts);
        if whole {
            out.push(run.to_string());
        }
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_separators_case_and_digits() {
        assert_eq!(split_words("IMG_20230714_1532"), "IMG 20230714 1532");
        assert_eq!(split_words("beachDay-02"), "beach Day beachDay 02");
        assert_eq!(split_words("HTMLExport(3)"), "HTML Export HTMLExport 3");
        assert_eq!(split_words("DSC0042"), "DSC 0042 DSC0042");
        assert_eq!(split_words("été à Nîmes"), "été à Nîmes");
        assert_eq!(split_words("__--"), "");
    }

    #[test]
    fn names_drop_the_extension_and_folders_stop_at_depth() {
        let p = Path::new("/home/ann/Photos/2023/Rome trip/dayTwo/IMG_1.final.JPG");
        assert_eq!(name_words(p), "IMG 1 final");
        assert_eq!(folder_words(p), "day Two dayTwo Rome trip 2023 Photos");
        assert_eq!(folder_words(Path::new("a.jpg")), "");
    }
}
