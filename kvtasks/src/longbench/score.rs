//! Scoring predictions the way LongBench's `eval.py` (per dataset, `-e` length buckets) and
//! longctx_bench's tasks summary (six categories, 15-task average) do, including their rounding:
//! Python's `round(x, 2)` for dataset scores, numpy's `rint(x*100)/100` for the `-e` buckets and
//! the averages, and numpy's pairwise summation inside `np.mean`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use super::metrics::{Metric, MetricError};
use super::prompts::{first_line, subset, Category, Subset, AVERAGE_15, SUBSETS};

#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error("cannot read predictions file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: {message}")]
    BadLine { path: PathBuf, line: usize, message: String },
    #[error("{path}:{line}: {source}")]
    Metric { path: PathBuf, line: usize, source: MetricError },
    #[error("{path}: no predictions in the file")]
    Empty { path: PathBuf },
}

/// One line of a predictions file: `{"dataset","pred","answers","all_classes"}` (+ `"length"`).
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub dataset: String,
    pub pred: String,
    pub answers: Vec<String>,
    pub all_classes: Option<Vec<String>>,
    pub length: Option<f64>,
}

/// `max(0.0, metric(pred, gt) for gt in answers)` after the first-line rule, as `scorer` does.
pub fn score_sample(subset: &Subset, prediction: &str, answers: &[String], all_classes: Option<&[String]>) -> Result<f64, MetricError> {
    score_with_metric(subset.metric, subset.first_line_only, prediction, answers, all_classes)
}

/// [`score_sample`] given the subset's metric and first-line rule instead of the subset (what a
/// [`crate::sample::ScoringKind::Longbench`] carries): the prediction is cut with
/// [`first_line`] if `first_line_only`, then the best `metric(prediction, gt, all_classes)`
/// over the answers, starting from 0.0 as `scorer` does.
pub fn score_with_metric(
    metric: Metric,
    first_line_only: bool,
    prediction: &str,
    answers: &[String],
    all_classes: Option<&[String]>,
) -> Result<f64, MetricError> {
    let prediction = if first_line_only { first_line(prediction) } else { prediction };
    let mut score = 0.0f64;
    for gt in answers {
        let s = metric.score(prediction, gt, all_classes)?;
        if s > score {
            score = s;
        }
    }
    Ok(score)
}

/// Python's `round(x, 2)` (correctly rounded, ties to even on the exact binary value).
pub fn python_round2(x: f64) -> f64 {
    format!("{x:.2}").parse().unwrap_or(x)
}

/// numpy's `np.round(x, 2)` / `round(np.float64(x), 2)`: `rint(x * 100) / 100`.
pub fn numpy_round2(x: f64) -> f64 {
    (x * 100.0).round_ties_even() / 100.0
}

/// numpy's pairwise summation of float64 (`pairwise_sum` in `loops_utils.h`), as used by
/// `np.mean`/`np.sum` on a contiguous array.
pub fn numpy_sum(a: &[f64]) -> f64 {
    const BLOCK: usize = 128;
    let n = a.len();
    if n < 8 {
        let mut res = 0.0;
        for &x in a {
            res += x;
        }
        res
    } else if n <= BLOCK {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - (n % 8) {
            for (k, rk) in r.iter_mut().enumerate() {
                *rk += a[i + k];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &x in &a[i..] {
            res += x;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        numpy_sum(&a[..n2]) + numpy_sum(&a[n2..])
    }
}

/// `scorer`: `round(100 * sum(scores) / N, 2)` with a sequential sum.
pub fn dataset_score(scores: &[f64]) -> Option<f64> {
    if scores.is_empty() {
        return None;
    }
    let mut total = 0.0f64;
    for &s in scores {
        total += s;
    }
    Some(python_round2(100.0 * total / scores.len() as f64))
}

/// `round(100 * np.mean(scores), 2)` for one LongBench-E bucket; `None` where numpy gives NaN.
pub fn bucket_score(scores: &[f64]) -> Option<f64> {
    if scores.is_empty() {
        return None;
    }
    Some(numpy_round2(100.0 * (numpy_sum(scores) / scores.len() as f64)))
}

/// LongBench-E scores by input length (`length` field): `<4000`, `<8000`, the rest.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Buckets {
    #[serde(rename = "0-4k")]
    pub short: Option<f64>,
    #[serde(rename = "4-8k")]
    pub medium: Option<f64>,
    #[serde(rename = "8k+")]
    pub long: Option<f64>,
}

/// `scorer_e` over (score, length) pairs.
pub fn length_buckets(scored: &[(f64, f64)]) -> Buckets {
    let pick = |lo: f64, hi: f64| -> Vec<f64> { scored.iter().filter(|(_, len)| *len >= lo && *len < hi).map(|(s, _)| *s).collect() };
    Buckets {
        short: bucket_score(&pick(f64::NEG_INFINITY, 4000.0)),
        medium: bucket_score(&pick(4000.0, 8000.0)),
        long: bucket_score(&pick(8000.0, f64::INFINITY)),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatasetScore {
    pub dataset: String,
    /// the Python metric function name, e.g. `qa_f1_score`
    pub metric: &'static str,
    pub samples: usize,
    /// `round(100*mean, 2)`; `None` in `-e` mode
    pub score: Option<f64>,
    /// LongBench-E buckets; `None` unless `-e`
    pub buckets: Option<Buckets>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CategoryScore {
    pub category: &'static str,
    /// `np.round(sum / len, 2)`; `None` if a member dataset is missing
    pub score: Option<f64>,
    pub datasets: Vec<&'static str>,
}

/// Everything `kvbench score` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreReport {
    pub source: String,
    pub longbench_e: bool,
    /// in the official subset order
    pub datasets: Vec<DatasetScore>,
    /// the paper's six categories (not computed in `-e` mode)
    pub categories: Vec<CategoryScore>,
    /// the paper's LongBench average over 15 datasets (passage_count excluded), if all present
    pub average_15: Option<f64>,
}

fn string_list(v: &Value) -> Option<Vec<String>> {
    v.as_array()?
        .iter()
        .map(|x| match x {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()), // str(12) == "12", as the official code compares
            _ => None,
        })
        .collect()
}

/// Parse one predictions line; `Err(message)` says what is wrong with it.
pub fn parse_prediction_line(line: &str, need_length: bool) -> Result<Prediction, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
    let obj = v.as_object().ok_or("expected a JSON object")?;
    let dataset = obj.get("dataset").and_then(Value::as_str).ok_or("missing string field \"dataset\"")?;
    if subset(dataset).is_none() {
        return Err(format!("unknown LongBench dataset {dataset:?}"));
    }
    let pred = obj.get("pred").and_then(Value::as_str).ok_or("missing string field \"pred\"")?;
    let answers = obj.get("answers").and_then(string_list).ok_or("\"answers\" must be a list of strings")?;
    let all_classes = match obj.get("all_classes") {
        None | Some(Value::Null) => None,
        Some(v) => Some(string_list(v).ok_or("\"all_classes\" must be null or a list of strings")?),
    };
    let length = match obj.get("length") {
        Some(Value::Number(n)) => n.as_f64(),
        None | Some(Value::Null) => None,
        Some(_) => return Err("\"length\" must be a number".to_string()),
    };
    if need_length && length.is_none() {
        return Err("LongBench-E scoring needs a numeric \"length\" field".to_string());
    }
    Ok(Prediction { dataset: dataset.to_string(), pred: pred.to_string(), answers, all_classes, length })
}

/// Score a predictions JSONL file (`kvbench score FILE.jsonl [-e]`). Lines may mix datasets.
/// As in `eval.py`, a dataset's `all_classes` is taken from its last line (they are constant
/// within a LongBench subset). Blank lines are ignored.
pub fn score_predictions_file(path: &Path, longbench_e: bool) -> Result<ScoreReport, ScoreError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScoreError::Io { path: path.to_path_buf(), source })?;
    let mut by_dataset: HashMap<String, Vec<(usize, Prediction)>> = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let p = parse_prediction_line(line, longbench_e).map_err(|message| ScoreError::BadLine { path: path.to_path_buf(), line: i + 1, message })?;
        by_dataset.entry(p.dataset.clone()).or_default().push((i + 1, p));
    }
    if by_dataset.is_empty() {
        return Err(ScoreError::Empty { path: path.to_path_buf() });
    }
    let mut datasets = Vec::new();
    for subset in SUBSETS.iter() {
        let Some(rows) = by_dataset.get(subset.name) else {
            continue;
        };
        let all_classes = rows.last().and_then(|(_, p)| p.all_classes.clone());
        let mut scored = Vec::with_capacity(rows.len());
        for (line, p) in rows {
            let s = score_sample(subset, &p.pred, &p.answers, all_classes.as_deref()).map_err(|source| ScoreError::Metric {
                path: path.to_path_buf(),
                line: *line,
                source,
            })?;
            scored.push((s, p.length.unwrap_or(0.0)));
        }
        let scores: Vec<f64> = scored.iter().map(|(s, _)| *s).collect();
        datasets.push(DatasetScore {
            dataset: subset.name.to_string(),
            metric: subset.metric.function_name(),
            samples: rows.len(),
            score: if longbench_e { None } else { dataset_score(&scores) },
            buckets: longbench_e.then(|| length_buckets(&scored)),
        });
    }
    let (categories, average_15) = if longbench_e { (Vec::new(), None) } else { summarize(&datasets) };
    Ok(ScoreReport { source: path.display().to_string(), longbench_e, datasets, categories, average_15 })
}

/// longctx_bench's tasks summary: per-category `np.round(mean, 2)` and the 15-dataset average.
pub fn summarize(datasets: &[DatasetScore]) -> (Vec<CategoryScore>, Option<f64>) {
    let score_of = |name: &str| datasets.iter().find(|d| d.dataset == name).and_then(|d| d.score);
    let mean_of = |names: &[&str]| -> Option<f64> {
        let mut total = 0.0f64;
        for n in names {
            total += score_of(n)?;
        }
        Some(numpy_round2(total / names.len() as f64))
    };
    let categories = Category::ALL.iter().map(|c| CategoryScore { category: c.key(), score: mean_of(c.datasets()), datasets: c.datasets().to_vec() }).collect();
    (categories, mean_of(&AVERAGE_15))
}

fn cell(x: Option<f64>) -> String {
    x.map_or_else(|| "-".to_string(), |v| format!("{v:.2}"))
}

impl ScoreReport {
    /// A plain-text table for the terminal.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "LongBench{} scores for {}", if self.longbench_e { "-E" } else { "" }, self.source);
        if self.longbench_e {
            let _ = writeln!(out, "{:<22} {:<22} {:>7} {:>8} {:>8} {:>8}", "dataset", "metric", "n", "0-4k", "4-8k", "8k+");
            for d in &self.datasets {
                let b = d.buckets.unwrap_or(Buckets { short: None, medium: None, long: None });
                let _ = writeln!(out, "{:<22} {:<22} {:>7} {:>8} {:>8} {:>8}", d.dataset, d.metric, d.samples, cell(b.short), cell(b.medium), cell(b.long));
            }
            return out;
        }
        let _ = writeln!(out, "{:<22} {:<22} {:>7} {:>8}", "dataset", "metric", "n", "score");
        for d in &self.datasets {
            let _ = writeln!(out, "{:<22} {:<22} {:>7} {:>8}", d.dataset, d.metric, d.samples, cell(d.score));
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "{:<22} {:>8}", "category", "score");
        for c in &self.categories {
            let _ = writeln!(out, "{:<22} {:>8}", c.category, cell(c.score));
        }
        let _ = writeln!(out, "{:<22} {:>8}", "average (15 tasks)", cell(self.average_15));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_flavours_differ_like_python_and_numpy() {
        assert_eq!(python_round2(0.005), 0.01);
        assert_eq!(numpy_round2(0.005), 0.0);
        assert_eq!(python_round2(0.015), 0.01);
        assert_eq!(numpy_round2(0.015), 0.02);
    }

    #[test]
    fn pairwise_sum_matches_numpy_order() {
        // np.mean([1e16, 1, -1e16, 1] + [0.1]*10) == 1/14 (pairwise), not 2/14 (sequential)
        let mut a = vec![1e16, 1.0, -1e16, 1.0];
        a.extend(std::iter::repeat_n(0.1, 10));
        assert_eq!(numpy_sum(&a) / 14.0, 0.07142857142857142);
    }
}
