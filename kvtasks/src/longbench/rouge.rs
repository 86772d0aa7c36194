//! ROUGE-L F as `rouge==1.0.1` (pltrdy) computes it for LongBench's `rouge_score`:
//! `Rouge().get_scores([hyp], [ref], avg=True)["rouge-l"]["f"]`. That package is not the textbook
//! ROUGE-L: it splits "sentences" on `.`, counts *distinct* words, and takes the union of the
//! reconstructed LCS words as a set. Its LCS reconstruction is recursive, so a long enough
//! dot-free pair raises `RecursionError`, which LongBench turns into a score of 0; this module
//! reports that case as an error for the caller to map the same way.

use std::collections::HashSet;

use super::pytext::collapse_whitespace;

/// CPython's default recursion limit (`sys.getrecursionlimit()`).
const PY_RECURSION_LIMIT: usize = 1000;
/// Python frames between `rouge_score`'s caller frame and the first `_recon` call:
/// `rouge_score` itself, `get_scores`, `_get_avg_scores`, the metric lambda,
/// `rouge_l_summary_level`, `_union_lcs`, `_recon_lcs`.
const ROUGE_INTERNAL_FRAMES: usize = 7;
/// A table larger than this many cells (200 MB) is treated like Python's `MemoryError` (score 0);
/// Python would need a dict of that many entries, tens of GB.
const MAX_LCS_CELLS: usize = 50_000_000;

/// Why `get_scores` raised; LongBench's `rouge_score` maps every one of them to 0.0.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RougeError {
    #[error("Hypothesis is empty.")]
    HypothesisEmpty,
    #[error("Reference is empty.")]
    ReferenceEmpty,
    #[error("maximum recursion depth exceeded reconstructing an LCS of {calls} steps")]
    Recursion { calls: usize },
    #[error("LCS table of {cells} cells is too large")]
    TooLarge { cells: usize },
}

/// `[" ".join(s.split()) for s in text.split(".") if len(s) > 0]`
fn sentences(text: &str) -> Vec<String> {
    text.split('.').filter(|s| !s.is_empty()).map(collapse_whitespace).collect()
}

/// `_split_into_words`: `s.split(" ")` for each sentence, flattened (an empty sentence gives `""`).
fn words(sentences: &[String]) -> Vec<&str> {
    sentences.iter().flat_map(|s| s.split(' ')).collect()
}

/// `_recon_lcs(x, y)`: the LCS words of `x` against `y`, following rouge's tie-breaking, or the
/// `RecursionError` Python hits when the recursive `_recon` needs more than `max_calls` calls.
fn recon_lcs<'a>(x: &[&'a str], y: &[&'a str], max_calls: usize) -> Result<Vec<&'a str>, RougeError> {
    let (n, m) = (x.len(), y.len());
    // every call moves i or j (or both) one step towards 0, so at least min(n, m) + 1 calls
    if n.min(m) + 1 > max_calls {
        return Err(RougeError::Recursion { calls: n.min(m) + 1 });
    }
    let width = m + 1;
    let cells = (n + 1).saturating_mul(width);
    if cells > MAX_LCS_CELLS {
        return Err(RougeError::TooLarge { cells });
    }
    let mut table = vec![0u32; cells];
    for i in 1..=n {
        for j in 1..=m {
            table[i * width + j] =
                if x[i - 1] == y[j - 1] { table[(i - 1) * width + j - 1] + 1 } else { table[(i - 1) * width + j].max(table[i * width + j - 1]) };
        }
    }
    let (mut i, mut j) = (n, m);
    let mut calls = 1; // the call that reaches i == 0 or j == 0
    let mut lcs = Vec::new();
    while i > 0 && j > 0 {
        calls += 1;
        if x[i - 1] == y[j - 1] {
            lcs.push(x[i - 1]);
            i -= 1;
            j -= 1;
        } else if table[(i - 1) * width + j] > table[i * width + j - 1] {
            i -= 1;
        } else {
            j -= 1;
        }
    }
    if calls > max_calls {
        return Err(RougeError::Recursion { calls });
    }
    lcs.reverse();
    Ok(lcs)
}

/// ROUGE-L F of `hyp` against `reference`, called from a Python frame at depth `caller_depth`
/// (LongBench's `eval.py` calls `rouge_score` from `scorer`, depth 2; `rouge_zh_score` adds one).
pub fn rouge_l_f(hyp: &str, reference: &str, caller_depth: usize) -> Result<f64, RougeError> {
    let hyp = sentences(hyp);
    let reference = sentences(reference);
    // rouge-1 is evaluated first and raises these two
    if hyp.is_empty() {
        return Err(RougeError::HypothesisEmpty);
    }
    if reference.is_empty() {
        return Err(RougeError::ReferenceEmpty);
    }
    let ref_words = words(&reference);
    let hyp_words = words(&hyp);
    let m = ref_words.iter().collect::<HashSet<_>>().len();
    let n = hyp_words.iter().collect::<HashSet<_>>().len();
    let max_calls = PY_RECURSION_LIMIT.saturating_sub(caller_depth + ROUGE_INTERNAL_FRAMES);
    let mut union: HashSet<&str> = HashSet::new();
    for r in &reference {
        let r_words: Vec<&str> = r.split(' ').collect();
        for h in &hyp {
            let h_words: Vec<&str> = h.split(' ').collect();
            union.extend(recon_lcs(&r_words, &h_words, max_calls)?);
        }
    }
    let llcs = union.len() as f64;
    let r_lcs = llcs / m as f64;
    let p_lcs = llcs / n as f64;
    Ok(2.0 * ((p_lcs * r_lcs) / (p_lcs + r_lcs + 1e-8)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_based_union_lcs() {
        assert_eq!(rouge_l_f("", "a", 2), Err(RougeError::HypothesisEmpty));
        assert_eq!(rouge_l_f("...", "a", 2), Err(RougeError::HypothesisEmpty));
        assert_eq!(rouge_l_f("a", ". .", 2).map(|f| f > 0.0), Ok(false));
        // identical single sentence: P = R = 1, F = 2/(2 + 1e-8)
        assert_eq!(rouge_l_f("the cat sat", "the cat sat", 2), Ok(2.0 * (1.0 / (2.0 + 1e-8))));
        // repeated words count once
        let f = rouge_l_f("a a a b", "a b", 2).unwrap_or(-1.0);
        assert!((f - 2.0 * (1.0 / (2.0 + 1e-8))).abs() < 1e-15);
    }

    #[test]
    fn recursion_limit_matches_cpython() {
        // from eval.py's scorer (depth 2), 990 identical words reconstruct in 991 calls: fine; 991 fail
        let t990: Vec<String> = (0..990).map(|i| format!("w{i}")).collect();
        let t991: Vec<String> = (0..991).map(|i| format!("w{i}")).collect();
        assert!(rouge_l_f(&t990.join(" "), &t990.join(" "), 2).is_ok());
        assert_eq!(rouge_l_f(&t991.join(" "), &t991.join(" "), 2), Err(RougeError::Recursion { calls: 992 }));
    }
}
