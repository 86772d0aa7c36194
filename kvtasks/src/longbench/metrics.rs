//! LongBench v1's metric functions (`LongBench/metrics.py`) with the official semantics, down to
//! the quirks that move scores: ASCII-only punctuation stripping, Python's `\b`, jieba's default
//! segmentation, rouge 1.0.1's set-based ROUGE-L, difflib-backed `fuzz.ratio`, and the list
//! mutation inside `classification_score`.

use std::collections::HashMap;
use std::sync::OnceLock;

use jieba_rs::Jieba;
use serde::{Deserialize, Serialize};

use super::difflib::fuzz_ratio;
use super::pytext::{decimal_runs, first_number_after, lower, replace_articles, split_whitespace};
use super::rouge::rouge_l_f;

/// A metric call that the official code would not survive (it raises, and `eval.py` crashes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetricError {
    #[error("{metric}: reference {reference:?} contains no {pattern}<number>")]
    NoReferenceId { metric: &'static str, pattern: &'static str, reference: String },
    #[error("{metric} needs all_classes, but the sample has none (null)")]
    MissingClasses { metric: &'static str },
}

/// The nine metric functions of `metrics.py`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    QaF1,
    QaF1Zh,
    Rouge,
    RougeZh,
    Classification,
    Retrieval,
    RetrievalZh,
    Count,
    CodeSim,
}

impl Metric {
    pub const ALL: [Metric; 9] = [
        Metric::QaF1,
        Metric::QaF1Zh,
        Metric::Rouge,
        Metric::RougeZh,
        Metric::Classification,
        Metric::Retrieval,
        Metric::RetrievalZh,
        Metric::Count,
        Metric::CodeSim,
    ];

    /// The Python function name (`qa_f1_score`, ...), as used in longctx_bench's result files.
    pub fn function_name(self) -> &'static str {
        match self {
            Metric::QaF1 => "qa_f1_score",
            Metric::QaF1Zh => "qa_f1_zh_score",
            Metric::Rouge => "rouge_score",
            Metric::RougeZh => "rouge_zh_score",
            Metric::Classification => "classification_score",
            Metric::Retrieval => "retrieval_score",
            Metric::RetrievalZh => "retrieval_zh_score",
            Metric::Count => "count_score",
            Metric::CodeSim => "code_sim_score",
        }
    }

    pub fn from_function_name(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.function_name() == name)
    }

    /// `metric(prediction, ground_truth, all_classes=all_classes)`, in [0, 1].
    pub fn score(self, prediction: &str, ground_truth: &str, all_classes: Option<&[String]>) -> Result<f64, MetricError> {
        Ok(match self {
            Metric::QaF1 => qa_f1_score(prediction, ground_truth),
            Metric::QaF1Zh => qa_f1_zh_score(prediction, ground_truth),
            Metric::Rouge => rouge_score(prediction, ground_truth),
            Metric::RougeZh => rouge_zh_score(prediction, ground_truth),
            Metric::Classification => {
                let classes = all_classes.ok_or(MetricError::MissingClasses { metric: "classification_score" })?;
                classification_score(prediction, ground_truth, classes)
            }
            Metric::Retrieval => retrieval_score(prediction, ground_truth)?,
            Metric::RetrievalZh => retrieval_zh_score(prediction, ground_truth)?,
            Metric::Count => count_score(prediction, ground_truth),
            Metric::CodeSim => code_sim_score(prediction, ground_truth),
        })
    }
}

/// `string.punctuation`
fn is_ascii_punct(c: char) -> bool {
    c.is_ascii_punctuation()
}

const ZH_PUNCTUATION: &str =
    "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏.";

/// `normalize_answer`: lower, drop ASCII punctuation, articles -> " ", collapse whitespace.
pub fn normalize_answer(s: &str) -> String {
    let no_punc: String = lower(s).chars().filter(|&c| !is_ascii_punct(c)).collect();
    split_whitespace(&replace_articles(&no_punc)).join(" ")
}

/// `normalize_zh_answer`: lower, drop ASCII and Chinese punctuation, remove all whitespace.
pub fn normalize_zh_answer(s: &str) -> String {
    let no_punc: String = lower(s).chars().filter(|&c| !is_ascii_punct(c) && !ZH_PUNCTUATION.contains(c)).collect();
    split_whitespace(&no_punc).concat()
}

/// `f1_score` over token lists with a multiset (`Counter`) intersection.
fn f1_tokens(prediction: &[&str], ground_truth: &[&str]) -> f64 {
    let mut gt_counts: HashMap<&str, usize> = HashMap::new();
    for t in ground_truth {
        *gt_counts.entry(t).or_insert(0) += 1;
    }
    let mut num_same = 0usize;
    for t in prediction {
        if let Some(c) = gt_counts.get_mut(t) {
            if *c > 0 {
                *c -= 1;
                num_same += 1;
            }
        }
    }
    if num_same == 0 {
        return 0.0;
    }
    let precision = 1.0 * num_same as f64 / prediction.len() as f64;
    let recall = 1.0 * num_same as f64 / ground_truth.len() as f64;
    (2.0 * precision * recall) / (precision + recall)
}

pub fn qa_f1_score(prediction: &str, ground_truth: &str) -> f64 {
    let p = normalize_answer(prediction);
    let g = normalize_answer(ground_truth);
    f1_tokens(&split_whitespace(&p), &split_whitespace(&g))
}

/// The process-wide jieba segmenter with its default dictionary (loaded once).
fn jieba() -> &'static Jieba {
    static JIEBA: OnceLock<Jieba> = OnceLock::new();
    JIEBA.get_or_init(Jieba::new)
}

/// `list(jieba.cut(text, cut_all=False))` (HMM on, the Python default).
pub fn jieba_cut(text: &str) -> Vec<&str> {
    jieba().cut(text, true)
}

pub fn qa_f1_zh_score(prediction: &str, ground_truth: &str) -> f64 {
    let tokens = |s: &str| -> Vec<String> { jieba_cut(s).into_iter().map(normalize_zh_answer).filter(|t| !t.is_empty()).collect() };
    let p = tokens(prediction);
    let g = tokens(ground_truth);
    let p: Vec<&str> = p.iter().map(String::as_str).collect();
    let g: Vec<&str> = g.iter().map(String::as_str).collect();
    f1_tokens(&p, &g)
}

/// `rouge_score`: ROUGE-L F of rouge 1.0.1, 0.0 wherever that package raises.
pub fn rouge_score(prediction: &str, ground_truth: &str) -> f64 {
    // eval.py's scorer (depth 2) calls rouge_score
    rouge_l_f(prediction, ground_truth, 2).unwrap_or(0.0)
}

/// `rouge_zh_score`: jieba tokens joined by spaces, then `rouge_score` (one Python frame deeper).
pub fn rouge_zh_score(prediction: &str, ground_truth: &str) -> f64 {
    let p = jieba_cut(prediction).join(" ");
    let g = jieba_cut(ground_truth).join(" ");
    rouge_l_f(&p, &g, 3).unwrap_or(0.0)
}

/// `classification_score`, including the official loop that removes from the list it iterates
/// (so the element after a removed one is skipped) and `list.remove`'s first-occurrence rule.
pub fn classification_score(prediction: &str, ground_truth: &str, all_classes: &[String]) -> f64 {
    let mut matches: Vec<&str> = all_classes.iter().map(String::as_str).filter(|c| prediction.contains(c)).collect();
    let mut idx = 0;
    while let Some(&term) = matches.get(idx) {
        if ground_truth.contains(term) && term != ground_truth {
            if let Some(first) = matches.iter().position(|&t| t == term) {
                matches.remove(first);
            }
        }
        idx += 1;
    }
    if matches.contains(&ground_truth) {
        1.0 / matches.len() as f64
    } else {
        0.0
    }
}

/// Share of the numbers in `prediction` equal to `id`; 0 if it has none.
fn share_equal(prediction: &str, id: &str) -> f64 {
    let numbers = decimal_runs(prediction);
    if numbers.is_empty() {
        return 0.0;
    }
    let right = numbers.iter().filter(|&&n| n == id).count();
    right as f64 / numbers.len() as f64
}

pub fn retrieval_score(prediction: &str, ground_truth: &str) -> Result<f64, MetricError> {
    let id = first_number_after(ground_truth, "Paragraph ").ok_or_else(|| MetricError::NoReferenceId {
        metric: "retrieval_score",
        pattern: "Paragraph ",
        reference: ground_truth.to_string(),
    })?;
    Ok(share_equal(prediction, id))
}

pub fn retrieval_zh_score(prediction: &str, ground_truth: &str) -> Result<f64, MetricError> {
    let id = first_number_after(ground_truth, "段落").ok_or_else(|| MetricError::NoReferenceId {
        metric: "retrieval_zh_score",
        pattern: "段落",
        reference: ground_truth.to_string(),
    })?;
    Ok(share_equal(prediction, id))
}

pub fn count_score(prediction: &str, ground_truth: &str) -> f64 {
    share_equal(prediction, ground_truth)
}

/// The line `code_sim_score` compares: the first line (after leading newlines) containing none
/// of `` ` ``, `#`, `//`; empty if there is none.
pub fn first_code_line(prediction: &str) -> &str {
    prediction.trim_start_matches('\n').split('\n').find(|line| !line.contains('`') && !line.contains('#') && !line.contains("//")).unwrap_or("")
}

pub fn code_sim_score(prediction: &str, ground_truth: &str) -> f64 {
    fuzz_ratio(first_code_line(prediction), ground_truth) as f64 / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_known_values() {
        assert_eq!(normalize_answer("The  Cat, a DOG!"), "cat dog");
        assert_eq!(qa_f1_score("the cat sat", "a cat sat down"), 2.0 * 1.0 * (2.0 / 3.0) / (1.0 + 2.0 / 3.0));
        assert_eq!(count_score("3 and 3 or 4", "3"), 2.0 / 3.0);
        assert_eq!(retrieval_score("Paragraph 12", "Paragraph 12").ok(), Some(1.0));
        assert!(retrieval_score("1", "nothing").is_err());
        assert_eq!(first_code_line("\n\n# c\n```\nx = 1\ny"), "x = 1");
        let classes: Vec<String> = ["Description of something", "Description of a person", "Other"].iter().map(|s| s.to_string()).collect();
        assert_eq!(classification_score("Other, Description of a person", "Description of a person", &classes), 0.5);
    }

    #[test]
    fn classification_skips_after_removal() {
        // ["ab", "a", "b"] all in the prediction; gt "abc": "ab" is removed, so "a" is skipped
        // and stays; "b" is removed. Left: ["a", "abc"...] -> gt present among 2 -> 0.5
        let classes: Vec<String> = ["ab", "a", "b", "abc"].iter().map(|s| s.to_string()).collect();
        assert_eq!(classification_score("abc", "abc", &classes), 0.5);
    }
}
