//! Side-by-side comparison of a run with the numbers published for the paper ("KV Cache
//! Compression, But What Must We Give in Return?", Yuan et al., EMNLP'24 Findings), so a
//! reproduction can be judged against the original cell by cell, and the paper's Figure 1 redrawn
//! with the run's numbers: per model, a radar chart over the six LongBench categories with one
//! solid polygon per method × budget the run shares with the paper (kvbench's per-category means)
//! and a dashed one in the same colour (the published means), written by `kvbench report
//! --compare paper` as `paper_radar_<model-slug>.svg` and embedded under the model's section of
//! `paper_comparison.md` ([`radar_svg`], [`paper_report`]).
//!
//! The published numbers are transcribed in `data/paper_results.csv` (embedded) from
//! `paper-protocol.md` §4: the per-category LongBench means the authors committed
//! (`longctx_bench visualization/longbench_radar/longbench_results.py`, §4.2), the 15-task
//! average derived from them, and the per-dataset numbers of KIVI's `docs/long_bench.md` (§4.3).
//! The CSV keeps the paper's own names; the mapping to kvbench names is:
//!
//! Models (kvbench model name, compared after dropping any `org/` prefix, lower-casing and
//! keeping only letters and digits):
//!
//! | paper | kvbench model names |
//! |---|---|
//! | `llama3-8b-instruct` | `llama3-8b-instruct`, `llama-3-8b-instruct`, `Meta-Llama-3-8B-Instruct`, `llama-3-8b-instruct-rope32x` (the paper's passkey variant) |
//! | `mistral-7b-instruct-v0.2` | `mistral-7b-instruct-v0.2`, `Mistral-7B-Instruct-v0.2` |
//! | `longchat-7b-v1.5-32k` | `longchat-7b-v1.5-32k` |
//! | `mamba-2.8b`, `mamba-chat-2.8b`, `rwkv-5-world-7b`, `recurrentgemma-{2b,9b}-it` | the same names |
//!
//! Methods (paper label and budget ↔ kvbench row):
//!
//! | paper | kvbench |
//! |---|---|
//! | Baseline | method or label `full` (no budget) |
//! | KIVI-2bit / KIVI-4bit | method `kivi` with `bits` = 2 / 4, or label `kivi-2bit` / `kivi-4bit` |
//! | FlexGen-4bit | method `flexgen` with `bits` = 4, or label `flexgen-4bit` |
//! | H2O N× | label or method `h2o` with ratio N |
//! | StreamLLM N× | label or method `streamingllm` (or `streamllm`) with ratio N |
//! | InfLLM N× | label or method `infllm` with ratio N |
//! | LLMLingua2 N× | label or method `llmlingua2` with ratio N |
//!
//! Other kvbench methods (snapkv, tova, knorm, ...) have no published counterpart.
//!
//! Categories: kvbench `single_doc_qa` ↔ "Single-Doc QA", `multi_doc_qa` ↔ "Multi-Doc QA",
//! `summarization` ↔ "Summarization", `few_shots` ↔ "Few-shot", `synthetic` ↔ "Synthetic"
//! (passage_retrieval_en only, as in the paper), `code` ↔ "Code" (spellings with other
//! separators or a `longbench` prefix are accepted). Per-dataset numbers match a kvbench task whose
//! last path segment is the LongBench dataset name (e.g. `longbench/qasper`). "Average (15 tasks)"
//! is compared with the run's (3·SD + 3·MD + 3·Sum + 3·FS + Syn + 2·Code)/15 when all six
//! categories are present, else with the mean of the 15 datasets when all are present.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::format::{budget_label, fixed, md_escape};
use crate::html::{COLORS, FULL_COLOR};
use crate::svg::{RadarChart, RadarSeries};
// The paper's 15 averaged datasets, in the order its summary script adds them up.
use crate::leaderboard::{markdown_table, LeaderboardRow};
use kvtasks::longbench::prompts::AVERAGE_15 as DATASETS;

/// The published numbers, as transcribed.
pub const PAPER_RESULTS_CSV: &str = include_str!("../data/paper_results.csv");

/// The category name of the derived 15-task average in the CSV.
pub const AVERAGE_15: &str = "Average (15 tasks)";

/// One published number.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct PaperResult {
    /// The paper's model name (longctx_bench's short name).
    pub model: String,
    /// The paper's method label (`Baseline`, `KIVI-2bit`, `H2O`, ...).
    pub method_label: String,
    /// The paper's N× budget, for token-dropping and prompt-compression methods.
    pub ratio: Option<f64>,
    /// A paper category, a LongBench dataset name, or [`AVERAGE_15`].
    pub category: String,
    pub score: f64,
    pub source: String,
}

/// Parses the embedded CSV.
pub fn paper_results() -> Result<Vec<PaperResult>, csv::Error> {
    let mut r = csv::Reader::from_reader(PAPER_RESULTS_CSV.as_bytes());
    r.deserialize().collect()
}

fn norm(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_lowercase()).collect()
}

const MODELS: &[(&str, &[&str])] = &[
    ("llama3-8b-instruct", &["llama38binstruct", "metallama38binstruct", "llama38binstructrope32x"]),
    ("mistral-7b-instruct-v0.2", &["mistral7binstructv02"]),
    ("longchat-7b-v1.5-32k", &["longchat7bv1532k", "longchatv157b32k"]),
    ("mamba-2.8b", &["mamba28b", "mamba28bhf"]),
    ("mamba-chat-2.8b", &["mambachat28b", "mambachat"]),
    ("rwkv-5-world-7b", &["rwkv5world7b", "rwkv5world7bv2"]),
    ("recurrentgemma-2b-it", &["recurrentgemma2bit"]),
    ("recurrentgemma-9b-it", &["recurrentgemma9bit"]),
];

/// The paper's name for a kvbench model.
pub fn paper_model(model: &str) -> Option<&'static str> {
    let base = model.rsplit('/').next().unwrap_or(model);
    let n = norm(base);
    MODELS.iter().find(|(_, aliases)| aliases.contains(&n.as_str())).map(|(p, _)| *p)
}

/// The paper's method label (and budget) for a kvbench leaderboard row.
pub fn paper_method(row: &LeaderboardRow) -> Option<(&'static str, Option<f64>)> {
    let label = norm(&row.method_label);
    let method = norm(&row.method);
    let is = |names: &[&str]| names.contains(&label.as_str()) || names.contains(&method.as_str());
    if row.is_full() {
        return row.ratio.is_none().then_some(("Baseline", None));
    }
    let bits = |m: &str| if method == m { row.quant_bits } else { None };
    let quant = |m: &str, b: u32| match bits(m) {
        Some(x) => x == b,
        None => label == format!("{m}{b}bit") || label == format!("{m}{b}"),
    };
    if row.ratio.is_none() {
        if (method == "kivi" || label.starts_with("kivi")) && quant("kivi", 2) {
            return Some(("KIVI-2bit", None));
        }
        if (method == "kivi" || label.starts_with("kivi")) && quant("kivi", 4) {
            return Some(("KIVI-4bit", None));
        }
        if (method == "flexgen" || label.starts_with("flexgen")) && quant("flexgen", 4) {
            return Some(("FlexGen-4bit", None));
        }
        return None;
    }
    let name = if is(&["h2o"]) {
        "H2O"
    } else if is(&["streamingllm", "streamllm"]) {
        "StreamLLM"
    } else if is(&["infllm"]) {
        "InfLLM"
    } else if is(&["llmlingua2", "llmlingua"]) {
        "LLMLingua2"
    } else {
        return None;
    };
    Some((name, row.ratio))
}

const CATEGORIES: &[(&str, &[&str], f64)] = &[
    ("Single-Doc QA", &["singledocqa", "singledocumentqa", "singledoc", "sdqa"], 3.0),
    ("Multi-Doc QA", &["multidocqa", "multidocumentqa", "multidoc", "mdqa"], 3.0),
    ("Summarization", &["summarization", "summarisation", "summ"], 3.0),
    ("Few-shot", &["fewshot", "fewshots", "fewshotlearning"], 3.0),
    ("Synthetic", &["synthetic", "synth"], 1.0),
    ("Code", &["code", "codecompletion"], 2.0),
];

/// The paper's category for a kvbench category.
pub fn paper_category(category: &str) -> Option<&'static str> {
    let n = norm(category);
    let n = n.strip_prefix("longbench").unwrap_or(&n);
    CATEGORIES.iter().find(|(_, aliases, _)| aliases.contains(&n)).map(|(p, _, _)| *p)
}

/// The LongBench dataset of a kvbench task (`longbench/qasper` → `qasper`).
pub fn paper_dataset(task: &str) -> Option<&'static str> {
    let last = task.rsplit(['/', ':']).next().unwrap_or(task);
    let n = norm(last);
    DATASETS.iter().find(|d| norm(d) == n).copied()
}

/// One (run, paper) pair of numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    pub model: String,
    pub row: String,
    pub budget: String,
    pub paper_method: String,
    pub category: String,
    pub kvbench: f64,
    pub paper: f64,
    pub source: String,
}

impl Comparison {
    pub fn difference(&self) -> f64 {
        self.kvbench - self.paper
    }
}

/// The run's 15-task average as the paper computes it, if the run covers it.
fn average_15(row: &LeaderboardRow) -> Option<f64> {
    let mut by_cat: BTreeMap<&str, f64> = BTreeMap::new();
    for (c, s) in &row.categories {
        if let Some(p) = paper_category(c) {
            by_cat.insert(p, s.mean);
        }
    }
    if by_cat.len() == CATEGORIES.len() {
        let sum: f64 = CATEGORIES.iter().map(|(p, _, w)| w * by_cat[p]).sum();
        return Some(sum / 15.0);
    }
    let mut by_ds: BTreeMap<&str, f64> = BTreeMap::new();
    for (t, s) in &row.tasks {
        if let Some(d) = paper_dataset(t) {
            by_ds.insert(d, s.mean);
        }
    }
    (by_ds.len() == DATASETS.len()).then(|| DATASETS.iter().map(|d| by_ds[d]).sum::<f64>() / 15.0)
}

/// Every (model, method, budget, category) present both in `rows` and in the paper.
pub fn comparisons(rows: &[LeaderboardRow], paper: &[PaperResult]) -> Vec<Comparison> {
    let find = |model: &str, method: &str, ratio: Option<f64>, category: &str| {
        paper.iter().find(|p| {
            p.model == model
                && p.method_label == method
                && p.category == category
                && match (p.ratio, ratio) {
                    (None, None) => true,
                    (Some(a), Some(b)) => (a - b).abs() < 1e-9,
                    _ => false,
                }
        })
    };
    let mut out = Vec::new();
    for row in rows {
        let (Some(model), Some((method, ratio))) = (paper_model(&row.model), paper_method(row)) else { continue };
        let mut push = |category: String, kvbench: f64, p: &PaperResult| {
            out.push(Comparison {
                model: row.model.clone(),
                row: row.method_label.clone(),
                budget: budget_label(row.ratio),
                paper_method: match ratio {
                    Some(r) => format!("{method} {}", budget_label(Some(r))),
                    None => method.to_string(),
                },
                category,
                kvbench,
                paper: p.score,
                source: p.source.clone(),
            })
        };
        let mut cats: Vec<(&'static str, f64)> = row.categories.iter().filter_map(|(c, s)| Some((paper_category(c)?, s.mean))).collect();
        cats.sort_by_key(|(c, _)| CATEGORIES.iter().position(|(p, _, _)| p == c));
        for (c, v) in cats {
            if let Some(p) = find(model, method, ratio, c) {
                push(c.to_string(), v, p);
            }
        }
        let mut tasks: Vec<(&'static str, f64)> = row.tasks.iter().filter_map(|(t, s)| Some((paper_dataset(t)?, s.mean))).collect();
        tasks.sort_by_key(|(d, _)| DATASETS.iter().position(|x| x == d));
        for (d, v) in tasks {
            if let Some(p) = find(model, method, ratio, d) {
                push(d.to_string(), v, p);
            }
        }
        if let (Some(v), Some(p)) = (average_15(row), find(model, method, ratio, AVERAGE_15)) {
            push(AVERAGE_15.to_string(), v, p);
        }
    }
    out
}

/// Paper cells whose published number is ambiguous in the paper's own source, with why: the
/// side-by-side table marks them (issue 24 item 11).
pub fn ambiguity(paper_model: &str, paper_method: &str) -> Option<&'static str> {
    (paper_model == "llama3-8b-instruct" && paper_method == "StreamLLM 4x").then_some(
        "ambiguous: the paper's source has two Llama-3 StreamingLLM 4x sets (the \"Compression-Llama-3-8B\" and \
         \"StreamLLM-Llama-3-8B\" groups of its radar script); the active one is shown, the other gives \
         20.90 / 24.88 / 23.46 / 63.56 / 32.00 / 51.03 by category (15-task average 35.50)",
    )
}

fn signed(v: f64) -> String {
    let s = fixed(v, 2);
    if s.starts_with('-') {
        s
    } else {
        format!("+{s}")
    }
}

/// The `class` of a radar polygon drawn from the run's scores (solid line).
pub const RADAR_RUN_CLASS: &str = "radar-kvbench";
/// The `class` of a radar polygon drawn from the paper's published scores (dashed line).
pub const RADAR_PAPER_CLASS: &str = "radar-paper";

/// A model name as a file-name part: ASCII letters lower-cased, digits kept, every other run of
/// characters one `-` (none at either end); `model` when nothing is left.
pub fn model_slug(model: &str) -> String {
    let mut s = String::new();
    for c in model.chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c.to_ascii_lowercase());
        } else if !s.is_empty() && !s.ends_with('-') {
            s.push('-');
        }
    }
    let s = s.trim_end_matches('-');
    if s.is_empty() {
        "model".into()
    } else {
        s.to_string()
    }
}

/// The paper's Figure 1 for one model of the run (`model` as in [`Comparison::model`]): a radar
/// chart over the six LongBench categories (Single-Doc QA, Multi-Doc QA, Summarization,
/// Few-shot, Synthetic, Code, clockwise from the top) with, per method × budget the run shares
/// with the paper, kvbench's per-category means as a solid polygon and the paper's as a dashed one
/// in the same colour. Only the categories both have a number for are drawn; a method with fewer
/// than three is left out, and so is a category no method has. None when nothing is left.
pub fn radar_svg(model: &str, comparisons: &[Comparison]) -> Option<String> {
    // (row, budget, paper method) → (kvbench, paper) per category, in first-seen order
    type Group<'a> = ((&'a str, &'a str, &'a str), BTreeMap<usize, (f64, f64)>);
    let mut groups: Vec<Group> = Vec::new();
    for c in comparisons.iter().filter(|c| c.model == model && c.kvbench.is_finite() && c.paper.is_finite()) {
        let Some(axis) = CATEGORIES.iter().position(|(p, _, _)| *p == c.category) else { continue };
        let key = (c.row.as_str(), c.budget.as_str(), c.paper_method.as_str());
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => {
                v.insert(axis, (c.kvbench, c.paper));
            }
            None => groups.push((key, BTreeMap::from([(axis, (c.kvbench, c.paper))]))),
        }
    }
    groups.retain(|(_, v)| v.len() >= 3);
    if groups.is_empty() {
        return None;
    }
    let mut axes: Vec<usize> = groups.iter().flat_map(|(_, v)| v.keys().copied()).collect();
    axes.sort_unstable();
    axes.dedup();
    let mut series = Vec::new();
    let mut next_color = 0;
    for ((row, budget, method), v) in &groups {
        let color = if *method == "Baseline" {
            FULL_COLOR.to_string()
        } else {
            next_color += 1;
            COLORS[(next_color - 1) % COLORS.len()].to_string()
        };
        let name = if *budget == budget_label(None) { row.to_string() } else { format!("{row} {budget}") };
        let values = |pick: fn(&(f64, f64)) -> f64| -> Vec<Option<f64>> { axes.iter().map(|a| v.get(a).map(pick)).collect() };
        series.push(RadarSeries {
            name: format!("{name} (kvbench)"),
            color: color.clone(),
            dashed: false,
            class: RADAR_RUN_CLASS.into(),
            values: values(|p| p.0),
        });
        series.push(RadarSeries { name: format!("{method} (paper)"), color, dashed: true, class: RADAR_PAPER_CLASS.into(), values: values(|p| p.1) });
    }
    let chart = RadarChart {
        title: format!("{model}: LongBench by category, kvbench vs the paper"),
        subtitle: Some(format!("paper model {}; solid: kvbench, dashed: published (the paper's Figure 1)", paper_model(model).unwrap_or("?"))),
        axes: axes.iter().map(|a| CATEGORIES[*a].0.to_string()).collect(),
        series,
    };
    Some(chart.render())
}

/// One radar chart of a [`PaperReport`].
#[derive(Clone, Debug, PartialEq)]
pub struct Radar {
    /// The run's model name (as in [`Comparison::model`]).
    pub model: String,
    /// `paper_radar_<slug>.svg`, the slug from [`model_slug`] (with `-2`, `-3`, ... when two
    /// models' slugs coincide).
    pub file_name: String,
    pub svg: String,
}

/// What `kvbench report --compare paper` writes: `paper_comparison.md` and the radar charts it
/// embeds, to be written next to it.
#[derive(Clone, Debug, PartialEq)]
pub struct PaperReport {
    pub markdown: String,
    pub radars: Vec<Radar>,
}

/// The Markdown of [`paper_report`] (its radar charts are referenced by file name, not written).
pub fn compare_paper(rows: &[LeaderboardRow]) -> String {
    paper_report(rows).markdown
}

/// A Markdown report: per model, a table of the run's number, the paper's and the difference
/// (kvbench − paper) for every (method, budget, category) both have, and a radar chart of the
/// per-category means ([`radar_svg`]) embedded from its own SVG file.
pub fn paper_report(rows: &[LeaderboardRow]) -> PaperReport {
    let mut o = String::from("# Comparison with the paper\n\n");
    let mut radars: Vec<Radar> = Vec::new();
    o.push_str(
        "kvbench's scores next to those published for *KV Cache Compression, But What Must We Give in \
         Return?* (Yuan et al., EMNLP'24 Findings), as transcribed in `kvreport/data/paper_results.csv` from \
         paper-protocol.md §4 (per-category LongBench means from the authors' code, §4.2; per-dataset KIVI numbers, \
         §4.3). Δ = kvbench − paper, in score points (0–100). The name mapping is documented in \
         `kvreport/src/paper.rs`.\n",
    );
    let paper = match paper_results() {
        Ok(p) => p,
        Err(e) => {
            o.push_str(&format!("\nThe embedded paper results could not be read: {}\n", md_escape(&e.to_string())));
            return PaperReport { markdown: o, radars };
        }
    };
    let comps = comparisons(rows, &paper);
    if comps.is_empty() {
        o.push_str(
            "\nNo (model, method, budget, category) of this run has a published counterpart: the paper covers \
             Llama-3-8B-Instruct, Mistral-7B-Instruct-v0.2 and LongChat-7B-v1.5-32K (plus five linear-time models) \
             with full, KIVI-2/4bit, FlexGen-4bit, H2O, StreamingLLM, InfLLM and LLMLingua-2 at 2/4/6/8x on the \
             LongBench categories.\n",
        );
        return PaperReport { markdown: o, radars };
    }
    let mut models: Vec<&str> = Vec::new();
    for c in &comps {
        if !models.contains(&c.model.as_str()) {
            models.push(&c.model);
        }
    }
    for model in models {
        let these: Vec<&Comparison> = comps.iter().filter(|c| c.model == model).collect();
        let mean_abs = these.iter().map(|c| c.difference().abs()).sum::<f64>() / these.len() as f64;
        o.push_str(&format!(
            "\n## {} (paper: {})\n\n{} numbers compared; mean |Δ| = {}.\n\n",
            md_escape(model),
            paper_model(model).unwrap_or("?"),
            these.len(),
            fixed(mean_abs, 2)
        ));
        if let Some(svg) = radar_svg(model, &comps) {
            let base = model_slug(model);
            let mut slug = base.clone();
            let mut n = 1;
            while radars.iter().any(|r| r.file_name == format!("paper_radar_{slug}.svg")) {
                n += 1;
                slug = format!("{base}-{n}");
            }
            let file_name = format!("paper_radar_{slug}.svg");
            o.push_str(&format!(
                "![radar]({file_name})\n\nSolid lines are kvbench's per-category LongBench means for each method and budget, \
                 dashed lines in the same colour the paper's published numbers for it (the paper's Figure 1).\n\n"
            ));
            radars.push(Radar { model: model.to_string(), file_name, svg });
        }
        let header: Vec<String> = ["method", "budget", "paper method", "category", "kvbench", "paper", "Δ", "source"].iter().map(|s| s.to_string()).collect();
        let table: Vec<Vec<String>> = these
            .iter()
            .map(|c| {
                vec![
                    md_escape(&c.row),
                    c.budget.clone(),
                    md_escape(&c.paper_method),
                    md_escape(&c.category),
                    fixed(c.kvbench, 2),
                    fixed(c.paper, 2),
                    signed(c.difference()),
                    match paper_model(&c.model).and_then(|m| ambiguity(m, &c.paper_method)) {
                        Some(_) => format!("{} ‡", md_escape(&c.source)),
                        None => md_escape(&c.source),
                    },
                ]
            })
            .collect();
        o.push_str(&markdown_table(&header, &table, &[false, true, false, false, true, true, true, false]));
        if let Some(why) = these.iter().find_map(|c| ambiguity(paper_model(&c.model)?, &c.paper_method)) {
            o.push_str(&format!("\n‡ {}.\n", md_escape(why)));
        }
    }
    PaperReport { markdown: o, radars }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_csv_parses_and_is_complete() {
        let p = paper_results().unwrap();
        // 3 transformer models × 20 method-budgets × 7 columns, 5 linear models × 7, 6 × 15 KIVI datasets
        assert_eq!(p.len(), 3 * 20 * 7 + 5 * 7 + 6 * 15);
        let h2o = p.iter().find(|r| r.model == "llama3-8b-instruct" && r.method_label == "H2O" && r.ratio == Some(4.0) && r.category == "Code").unwrap();
        assert_eq!(h2o.score, 53.01);
        assert!(p.iter().all(|r| !r.source.is_empty()));
    }

    #[test]
    fn transcribed_averages_match_the_category_formula() {
        // The 15-task average is (3·SD + 3·MD + 3·Sum + 3·FS + Syn + 2·Code)/15: checks every
        // transcribed category row against the average printed next to it.
        let p = paper_results().unwrap();
        let mut keys: Vec<(String, String, Option<u64>)> = p.iter().map(|r| (r.model.clone(), r.method_label.clone(), r.ratio.map(f64::to_bits))).collect();
        keys.sort();
        keys.dedup();
        let mut checked = 0;
        for (m, l, r) in keys {
            let get = |c: &str| p.iter().find(|x| x.model == m && x.method_label == l && x.ratio.map(f64::to_bits) == r && x.category == c).map(|x| x.score);
            let Some(avg) = get(AVERAGE_15) else { continue };
            let sum: f64 = CATEGORIES.iter().map(|(c, _, w)| w * get(c).unwrap()).sum();
            assert!((sum / 15.0 - avg).abs() < 0.011, "{m} {l} {r:?}: {} vs {avg}", sum / 15.0);
            checked += 1;
        }
        assert_eq!(checked, 3 * 20 + 5);
    }

    #[test]
    fn kivi_per_dataset_numbers_average_to_the_published_average() {
        let p = paper_results().unwrap();
        for model in ["longchat-7b-v1.5-32k", "mistral-7b-instruct-v0.2"] {
            for method in ["Baseline", "KIVI-2bit", "KIVI-4bit"] {
                let vals: Vec<f64> =
                    DATASETS.iter().map(|d| p.iter().find(|x| x.model == model && x.method_label == method && x.category == *d).unwrap().score).collect();
                let avg = p.iter().find(|x| x.model == model && x.method_label == method && x.category == AVERAGE_15).unwrap().score;
                assert!((vals.iter().sum::<f64>() / 15.0 - avg).abs() < 0.006, "{model} {method}");
            }
        }
    }

    #[test]
    fn name_mapping() {
        assert_eq!(paper_model("meta-llama/Meta-Llama-3-8B-Instruct"), Some("llama3-8b-instruct"));
        assert_eq!(paper_model("llama3-8b-instruct"), Some("llama3-8b-instruct"));
        assert_eq!(paper_model("Mistral-7B-Instruct-v0.2"), Some("mistral-7b-instruct-v0.2"));
        assert_eq!(paper_model("smollm2-135m"), None);
        assert_eq!(paper_category("single_doc_qa"), Some("Single-Doc QA"));
        assert_eq!(paper_category("few_shots"), Some("Few-shot"));
        assert_eq!(paper_category("needle"), None);
        assert_eq!(paper_dataset("longbench/passage_retrieval_en"), Some("passage_retrieval_en"));
        assert_eq!(paper_dataset("longbench/repobench-p"), Some("repobench-p"));
        assert_eq!(paper_dataset("passkey"), None);
    }
}
