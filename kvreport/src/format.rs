//! Fixed number formats and text escaping shared by every report, so that identical input gives
//! byte-identical files and no prediction text can break out of its HTML or Markdown context.

/// How every report writes a value that is not finite (`nan`, `inf`, `-inf`); None when finite.
pub fn non_finite(v: f64) -> Option<&'static str> {
    if v.is_nan() {
        Some("nan")
    } else if v.is_infinite() {
        Some(if v > 0.0 { "inf" } else { "-inf" })
    } else {
        None
    }
}

/// `v` with exactly `decimals` decimals; never prints a negative zero ("-0.00" becomes "0.00").
pub fn fixed(v: f64, decimals: usize) -> String {
    if let Some(word) = non_finite(v) {
        return word.into();
    }
    let s = format!("{v:.decimals$}");
    match s.strip_prefix('-') {
        Some(rest) if rest.chars().all(|c| c == '0' || c == '.') => rest.to_string(),
        _ => s,
    }
}

/// `fixed` for an optional value, with `missing` when absent.
pub fn fixed_opt(v: Option<f64>, decimals: usize, missing: &str) -> String {
    v.map(|v| fixed(v, decimals)).unwrap_or_else(|| missing.to_string())
}

/// A budget ratio as written in the paper: `4x`, `2.5x`; `–` when the method has none.
pub fn budget_label(ratio: Option<f64>) -> String {
    match ratio {
        Some(r) => format!("{}x", shortest(r)),
        None => "–".to_string(),
    }
}

/// Shortest round-trip decimal form of a float (`4` for 4.0, `2.5` for 2.5).
pub fn shortest(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    format!("{v}")
}

/// Bytes in binary units with one decimal: `512 B`, `1.5 KiB`, `12.3 MiB`, `1.4 GiB`.
pub fn human_bytes(bytes: f64) -> String {
    if !bytes.is_finite() {
        return "–".into();
    }
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes.abs() < 1024.0 {
        return format!("{} B", fixed(bytes, 0));
    }
    let mut v = bytes / 1024.0;
    let mut unit = 0;
    while v.abs() >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{} {}", fixed(v, 1), UNITS[unit])
}

/// A count with thousands separators: `20,480`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut groups: Vec<&str> = Vec::new();
    let mut end = digits.len();
    while end > 3 {
        groups.push(&digits[end - 3..end]);
        end -= 3;
    }
    groups.push(&digits[..end]);
    groups.reverse();
    groups.join(",")
}

/// Compact axis numbers: `512`, `2.7k`, `20k`, `1.5M`, `0.25`.
pub fn compact(v: f64) -> String {
    let a = v.abs();
    let (scaled, suffix) = if a >= 1e9 {
        (v / 1e9, "G")
    } else if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let decimals = if scaled.abs() >= 100.0 {
        0
    } else if scaled.abs() >= 1.0 || !suffix.is_empty() {
        1
    } else {
        2
    };
    let s = fixed(scaled, decimals);
    let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s };
    s + suffix
}

/// Text for HTML element content and attribute values (also valid inside inline SVG).
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Text for one Markdown table cell or inline run: Markdown and HTML specials are
/// backslash-escaped, and line breaks become a visible `⏎` so a cell stays on one line.
pub fn md_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev: Option<char> = None;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        let next = chars.peek().copied();
        let intraword = prev.is_some_and(char::is_alphanumeric) && next.is_some_and(char::is_alphanumeric);
        prev = Some(c);
        match c {
            // an underscore inside a word never starts emphasis (CommonMark): keep snake_case readable
            '_' if intraword => out.push('_'),
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '~' | '#' | '&' | '$' => {
                out.push('\\');
                out.push(c);
            }
            '\r' => {
                if chars.peek() != Some(&'\n') {
                    out.push_str(" ⏎ ");
                }
            }
            '\n' => out.push_str(" ⏎ "),
            '\t' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_has_no_negative_zero() {
        assert_eq!(fixed(-0.0, 2), "0.00");
        assert_eq!(fixed(-0.001, 2), "0.00");
        assert_eq!(fixed(-1.5, 1), "-1.5");
        assert_eq!(fixed(36.83, 2), "36.83");
    }

    #[test]
    fn bytes_and_budgets() {
        assert_eq!(human_bytes(512.0), "512 B");
        assert_eq!(human_bytes(1536.0), "1.5 KiB");
        assert_eq!(human_bytes(12.3 * 1024.0 * 1024.0), "12.3 MiB");
        assert_eq!(budget_label(Some(4.0)), "4x");
        assert_eq!(budget_label(Some(2.5)), "2.5x");
        assert_eq!(budget_label(None), "–");
        assert_eq!(thousands(20480), "20,480");
        assert_eq!(thousands(512), "512");
    }

    #[test]
    fn compact_numbers() {
        assert_eq!(compact(512.0), "512");
        assert_eq!(compact(2730.0), "2.7k");
        assert_eq!(compact(20000.0), "20k");
        assert_eq!(compact(20480.0), "20.5k");
        assert_eq!(compact(1_500_000.0), "1.5M");
        assert_eq!(compact(0.25), "0.25");
        assert_eq!(compact(2.5), "2.5");
    }

    #[test]
    fn escapes() {
        assert_eq!(html_escape("<script>&\"'"), "&lt;script&gt;&amp;&quot;&#39;");
        assert_eq!(md_escape("a|b*c\nd"), "a\\|b\\*c ⏎ d");
        assert_eq!(md_escape("single_doc_qa _x_"), "single_doc_qa \\_x\\_");
    }
}
