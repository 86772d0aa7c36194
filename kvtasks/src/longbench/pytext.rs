//! The few Python `str` and `re` behaviours the official metrics rely on (`lower()`, `split()`,
//! `\b`, `\d`), reproduced with Python's own character tables: Rust's `\w`, whitespace and
//! lowercase tables differ from Python's at the edges (combining marks, U+001C..U+001F, `²`).

use super::pyunicode::{DECIMAL, LOWER, SPACE, WORD};

fn in_ranges(table: &[(u32, u32)], c: char) -> bool {
    let c = c as u32;
    table
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// `c.isspace()`.
pub fn is_space(c: char) -> bool {
    in_ranges(SPACE, c)
}

/// A word character for `re`'s `\b`/`\w` on str patterns: `c.isalnum() or c == '_'`.
pub fn is_word(c: char) -> bool {
    in_ranges(WORD, c)
}

/// What `re`'s `\d` matches on str patterns: `c.isdecimal()`.
pub fn is_decimal(c: char) -> bool {
    in_ranges(DECIMAL, c)
}

/// `s.split()`: runs of non-whitespace, Python's whitespace definition.
pub fn split_whitespace(s: &str) -> Vec<&str> {
    s.split(is_space).filter(|w| !w.is_empty()).collect()
}

/// `" ".join(s.split())`.
pub fn collapse_whitespace(s: &str) -> String {
    split_whitespace(s).join(" ")
}

/// `s.lower()` with Python's (Unicode 14) mapping. The final-sigma context of `Σ` is taken from
/// Rust's `to_lowercase`, which implements the same Unicode rule.
pub fn lower(s: &str) -> String {
    let contextual: Vec<char> = if s.contains('Σ') { s.to_lowercase().chars().collect() } else { Vec::new() };
    let mut pos = 0usize; // position in `contextual`, advanced by what std emits for each char
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == 'Σ' {
            out.push(contextual.get(pos).copied().unwrap_or('σ'));
        } else if c == '\u{130}' {
            out.push_str("i\u{307}");
        } else {
            let mapped =
                LOWER.binary_search_by_key(&(c as u32), |&(from, _)| from).ok().and_then(|i| LOWER.get(i)).and_then(|&(_, to)| char::from_u32(to)).unwrap_or(c);
            out.push(mapped);
        }
        if !contextual.is_empty() {
            pos += if c == 'Σ' { 1 } else { c.to_lowercase().count() };
        }
    }
    out
}

/// `re.findall(r"\d+", s)`: maximal runs of decimal characters.
pub fn decimal_runs(s: &str) -> Vec<&str> {
    s.split(|c: char| !is_decimal(c)).filter(|r| !r.is_empty()).collect()
}

/// `re.findall(PREFIX + r"(\d+)", s)[0]`: the digits after the leftmost `prefix` that is
/// directly followed by a decimal character; `None` where `findall` would return `[]`.
pub fn first_number_after<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let mut from = 0;
    while let Some(found) = s.get(from..).and_then(|rest| rest.find(prefix)) {
        let start = from + found + prefix.len();
        let rest = s.get(start..).unwrap_or("");
        let len: usize = rest.chars().take_while(|&c| is_decimal(c)).map(char::len_utf8).sum();
        if len > 0 {
            return rest.get(..len);
        }
        // advance by one character past the match start and search again
        from += found + s.get(from + found..).and_then(|r| r.chars().next()).map_or(1, char::len_utf8);
    }
    None
}

/// `re.sub(r"\b(a|an|the)\b", " ", s)` with Python's `\b`.
pub fn replace_articles(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        let boundary_before = i == 0 || !chars.get(i - 1).is_some_and(|&c| is_word(c));
        let mut matched = 0;
        if boundary_before {
            for word in ["a", "an", "the"] {
                let n = word.chars().count();
                let same = chars.get(i..i + n).is_some_and(|w| w.iter().copied().eq(word.chars()));
                let boundary_after = !chars.get(i + n).is_some_and(|&c| is_word(c));
                if same && boundary_after {
                    matched = n;
                    break;
                }
            }
        }
        if matched > 0 {
            out.push(' ');
            i += matched;
        } else {
            if let Some(&c) = chars.get(i) {
                out.push(c);
            }
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_edges() {
        assert_eq!(split_whitespace("a\x1cb\u{a0}c  d"), vec!["a", "b", "c", "d"]);
        assert_eq!(replace_articles("a b the\u{301} an²x the_ an"), "  b  \u{301} an²x the_  ");
        assert_eq!(replace_articles("a\u{301}"), " \u{301}");
        assert_eq!(decimal_runs("x12 ١٢ y３"), vec!["12", "١٢", "３"]);
        assert_eq!(first_number_after("Paragraph x Paragraph 12, Paragraph 3", "Paragraph "), Some("12"));
        assert_eq!(first_number_after("段落٣", "段落"), Some("٣"));
        assert_eq!(first_number_after("Paragraph", "Paragraph "), None);
        assert_eq!(lower("ΣΟΦΟΣ İ ÀB"), "σοφος i\u{307} àb");
    }
}
