//! LAVIS's caption normalisation (`BlipCaptionProcessor.pre_caption`), which every caption goes
//! through before tokenization in LAVIS's retrieval evaluation.
//!
//! Reproduced step by step, because the paper's numbers depend on it (punctuation becomes
//! spaces, which changes WordPiece tokens):
//! 1. lower-case (Unicode, as Python's `str.lower`);
//! 2. each of `. ! " ( ) * # : ; ~` becomes a space;
//! 3. every run of two or more whitespace characters becomes one space (a single tab or
//!    newline is kept, as Python's `re.sub(r"\s{2,}", " ", …)` keeps it);
//! 4. trailing newlines are removed, then leading and trailing spaces (spaces only);
//! 5. split on single spaces; more than `max_words` pieces are cut to the first `max_words`.

/// LAVIS's default `max_words` for `blip_caption` (BLIP-2's retrieval configs keep it).
pub const LAVIS_MAX_WORDS: usize = 50;

/// The characters `pre_caption` replaces by a space.
const PUNCTUATION: &[char] = &['.', '!', '"', '(', ')', '*', '#', ':', ';', '~'];

/// Python's `\s` for `str` patterns: Unicode whitespace plus the ASCII separators U+001C–U+001F,
/// which `str.isspace` counts and Rust's `char::is_whitespace` does not.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Normalises one caption exactly as LAVIS's `pre_caption` does (see the module docs).
pub fn pre_caption(caption: &str, max_words: usize) -> String {
    let lowered: String = caption
        .to_lowercase()
        .chars()
        .map(|c| if PUNCTUATION.contains(&c) { ' ' } else { c })
        .collect();
    // Collapse runs of >= 2 whitespace characters into one space; a lone one is kept as is.
    let chars: Vec<char> = lowered.chars().collect();
    let mut collapsed = String::with_capacity(lowered.len());
    let mut i = 0;
    while i < chars.len() {
        if is_python_space(chars[i]) {
            let mut j = i;
            while j < chars.len() && is_python_space(chars[j]) {
                j += 1;
            }
            if j - i >= 2 {
                collapsed.push(' ');
            } else {
                collapsed.push(chars[i]);
            }
            i = j;
        } else {
            collapsed.push(chars[i]);
            i += 1;
        }
    }
    let trimmed = collapsed.trim_end_matches('\n').trim_matches(' ');
    let words: Vec<&str> = trimmed.split(' ').collect();
    if words.len() > max_words {
        words[..max_words].join(" ")
    } else {
        trimmed.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn punctuation_and_case_become_lavis_text() {
        assert_eq!(
            pre_caption("A man (with a RED helmet) on a moped.", 50),
            "a man with a red helmet on a moped"
        );
        assert_eq!(
            pre_caption("  Dogs!!  \"Running\"; on: the ~beach*#  ", 50),
            "dogs running on the beach"
        );
        // Commas, apostrophes and hyphens are not in LAVIS's list: they stay.
        assert_eq!(
            pre_caption("It's a well-known dog, sitting.", 50),
            "it's a well-known dog, sitting"
        );
    }

    #[test]
    fn only_runs_of_whitespace_collapse() {
        // A single tab survives (Python's \s{2,} needs two); a tab+space run collapses.
        assert_eq!(pre_caption("a\tb \tc", 50), "a\tb c");
        assert_eq!(pre_caption("a.\n", 50), "a");
        assert_eq!(pre_caption("word\n", 50), "word");
    }

    #[test]
    fn long_captions_are_cut_to_max_words() {
        let long = (0..60)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        let cut = pre_caption(&long, LAVIS_MAX_WORDS);
        assert_eq!(cut.split(' ').count(), 50);
        assert!(cut.ends_with("w49"));
        assert_eq!(pre_caption("one two three", 2), "one two");
    }

    #[test]
    fn empty_and_all_punctuation_captions_are_empty() {
        assert_eq!(pre_caption("", 50), "");
        assert_eq!(pre_caption("...!!!", 50), "");
    }
}
