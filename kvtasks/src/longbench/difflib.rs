//! `fuzzywuzzy.fuzz.ratio` as LongBench's `code_sim_score` computes it: fuzzywuzzy 0.18 without
//! python-Levenshtein falls back to `difflib.SequenceMatcher(None, a, b).ratio()`, whose value
//! depends on difflib's greedy longest-match recursion and its "autojunk" heuristic, so both are
//! reproduced step by step here (over Unicode code points, as Python strings are).

use std::collections::HashMap;

/// `difflib.SequenceMatcher(None, a, b)` with the default `autojunk=True`.
struct SequenceMatcher<'a> {
    a: &'a [char],
    b: &'a [char],
    /// element of `b` -> ascending indices, minus the "popular" elements (autojunk)
    b2j: HashMap<char, Vec<usize>>,
}

impl<'a> SequenceMatcher<'a> {
    fn new(a: &'a [char], b: &'a [char]) -> Self {
        let mut b2j: HashMap<char, Vec<usize>> = HashMap::new();
        for (j, &c) in b.iter().enumerate() {
            b2j.entry(c).or_default().push(j);
        }
        // autojunk: in a `b` of 200+ elements, anything occurring more than 1% (+1) is popular
        if b.len() >= 200 {
            let ntest = b.len() / 100 + 1;
            b2j.retain(|_, idxs| idxs.len() <= ntest);
        }
        SequenceMatcher { a, b, b2j }
    }

    /// `find_longest_match(alo, ahi, blo, bhi)`; with no junk function, `bjunk` is empty, so only
    /// the first pair of extension loops (over non-junk, i.e. also popular, elements) does anything.
    fn find_longest_match(&self, alo: usize, ahi: usize, blo: usize, bhi: usize) -> (usize, usize, usize) {
        let (a, b) = (self.a, self.b);
        let (mut besti, mut bestj, mut bestsize) = (alo, blo, 0usize);
        let mut j2len: HashMap<usize, usize> = HashMap::new();
        for i in alo..ahi {
            let mut newj2len: HashMap<usize, usize> = HashMap::new();
            if let Some(js) = a.get(i).and_then(|c| self.b2j.get(c)) {
                for &j in js {
                    if j < blo {
                        continue;
                    }
                    if j >= bhi {
                        break;
                    }
                    let k = j.checked_sub(1).and_then(|p| j2len.get(&p)).copied().unwrap_or(0) + 1;
                    newj2len.insert(j, k);
                    if k > bestsize {
                        besti = i + 1 - k;
                        bestj = j + 1 - k;
                        bestsize = k;
                    }
                }
            }
            j2len = newj2len;
        }
        while besti > alo && bestj > blo && a.get(besti - 1) == b.get(bestj - 1) {
            besti -= 1;
            bestj -= 1;
            bestsize += 1;
        }
        while besti + bestsize < ahi && bestj + bestsize < bhi && a.get(besti + bestsize) == b.get(bestj + bestsize) {
            bestsize += 1;
        }
        (besti, bestj, bestsize)
    }

    /// Total size of `get_matching_blocks()` (merging adjacent blocks does not change the sum).
    fn matches(&self) -> usize {
        let mut queue = vec![(0, self.a.len(), 0, self.b.len())];
        let mut total = 0;
        while let Some((alo, ahi, blo, bhi)) = queue.pop() {
            let (i, j, k) = self.find_longest_match(alo, ahi, blo, bhi);
            if k > 0 {
                total += k;
                if alo < i && blo < j {
                    queue.push((alo, i, blo, j));
                }
                if i + k < ahi && j + k < bhi {
                    queue.push((i + k, ahi, j + k, bhi));
                }
            }
        }
        total
    }
}

/// `difflib.SequenceMatcher(None, a, b).ratio()`: `2*M/T`, and 1.0 when both are empty.
pub fn sequence_ratio(a: &str, b: &str) -> f64 {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let total = a.len() + b.len();
    if total == 0 {
        return 1.0;
    }
    let m = SequenceMatcher::new(&a, &b).matches();
    2.0 * m as f64 / total as f64
}

/// `fuzz.ratio(s1, s2)`: 100 for equal strings, 0 if either is empty, otherwise
/// `int(round(100 * ratio))` with Python's round-half-to-even.
pub fn fuzz_ratio(s1: &str, s2: &str) -> u32 {
    if s1 == s2 {
        return 100;
    }
    if s1.is_empty() || s2.is_empty() {
        return 0;
    }
    (100.0 * sequence_ratio(s1, s2)).round_ties_even() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // difflib docs: ratio("abcd", "bcde") = 0.75
        assert_eq!(sequence_ratio("abcd", "bcde"), 0.75);
        assert_eq!(fuzz_ratio("", ""), 100);
        assert_eq!(fuzz_ratio("", "x"), 0);
        // 2*1/8 = 0.25 -> 25
        assert_eq!(fuzz_ratio("abcd", "xyzd"), 25);
        // 2*1/16 = 0.125 -> 12.5 rounds half to even -> 12
        assert_eq!(fuzz_ratio("abcdefgh", "zzzzzzzh"), 12);
    }
}
