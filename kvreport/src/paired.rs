//! Paired differences from the full cache: for every leaderboard row that is not the full cache,
//! its score minus the full-cache row's of the same model **on the same samples**, with a 95%
//! confidence interval, a Holm–Bonferroni-corrected significance mark, and the share of samples
//! whose prediction is the full cache's. Written as a section of `leaderboard.md`, as
//! `paired.csv`, and as a table of `index.html`.
//!
//! # Pairing
//!
//! A row's record and a full-cache record of the same model pair when they have the same task,
//! seed, prompt template and sample id (a sample id names the same prompt only under the same
//! seed and template). The full-cache row of a model is its first full row in leaderboard order
//! ([`LeaderboardRow::is_full`]; there is normally one). A sample found on one side only, or
//! found more than once on either side (two cells of one task in a row), is left out; the
//! number left out is reported. A row without pairs (its model has no full-cache row, or no
//! sample matches) shows `—`.
//!
//! # Statistics
//!
//! With `d_i` = the row's score − the full cache's on pair `i` (points, 0–100):
//!
//! * **task** (its `n` pairs in `C` clusters): `Δ = d̄ = Σ d_i / n` and the clustered standard
//!   error of Miller (2024, "Adding Error Bars to Evals", arXiv:2411.00640), with the
//!   small-sample factor `C/(C−1)`:
//!   `SE² = C/(C−1) · (1/n²) · Σ_c (Σ_{i∈c} (d_i − d̄))²`.
//!   Records whose metadata carry the same [`CLUSTER_KEY`] value share a context and form one
//!   cluster (clusters never span tasks); every other record is a cluster of its own. When
//!   every record is its own cluster (`C = n`) this is exactly the ordinary `SE² = s²/n` with
//!   the sample variance `s² = Σ (d_i − d̄)² / (n−1)`, the form of the leaderboard's absolute
//!   columns. With a single pair there is no SE.
//! * **one shared context** (a task whose `n ≥ 2` pairs all carry the same [`CLUSTER_KEY`]:
//!   RULER's niah and variable tracking at one length, whose noise haystack is a fixed
//!   function of the length): `C = 1` and the clustered SE is undefined. The SE is then the
//!   within-context `SE² = s²/n`, treating the samples as independent *given* that one fixed
//!   context (they differ by needle, key and position), and the stat is marked
//!   [`within_one_context`](DeltaStat::within_one_context) (`†` in the tables). It says nothing
//!   about how the Δ would vary over other contexts.
//! * **category** (its `T` tasks with pairs): `Δ = Σ_t Δ_t / T`, `SE² = Σ_t SE_t² / T²`
//!   (tasks independent), the same averaging as the leaderboard's category columns (mean of
//!   the cells' means), so when every sample pairs and each task has one cell per row, Δ is the
//!   row's category score minus the full cache's.
//! * **average** (its `K` categories with pairs): `Δ = Σ_k Δ_k / K`, `SE² = Σ_k SE_k² / K²`,
//!   mirroring the leaderboard's *average* (mean of the category columns).
//!
//! An SE is missing when any part of it is (a task with one pair or one cluster). The 95%
//! half-width is `1.96·SE`. The two-sided p-value is the normal approximation
//! `p = 2·(1 − Φ(|Δ|/SE)) = erfc(|Δ|/(SE·√2))`; with `SE = 0` (every pair differs by the
//! same amount) `p = 0` when `Δ ≠ 0` (significant: the limit of the approximation) and `p = 1`
//! when `Δ = 0`; without an SE there is no p-value and no test. The category and average Δs
//! of every row (all models) that have a p-value form one family, corrected by Holm–Bonferroni
//! at [`ALPHA`]: sorted `p_(1) ≤ … ≤ p_(m)`, `p_(k)` is significant while
//! `p_(j) ≤ α/(m − j + 1)` for every `j ≤ k`. Per-task Δs get a p-value but are not in the
//! family (their `holm_significant` stays false).
//!
//! *Agreement* is the share of pairs whose predictions are equal after trimming white space at
//! both ends, pooled over the pairs it covers (not averaged over tasks).

use std::collections::BTreeMap;

use crate::format::{budget_label, fixed, md_escape, shortest};
use crate::leaderboard::{markdown_table, row_key, Leaderboard, LeaderboardRow, RowKey};
use crate::load::Cell;
use crate::record::SampleRecord;

/// The metadata key of a record that names the context it shares with other samples of its
/// task (a haystack, a document): records with the same value are one cluster.
pub const CLUSTER_KEY: &str = "context_id";

/// The family-wise error rate of the Holm–Bonferroni correction.
pub const ALPHA: f64 = 0.05;

/// The `category` value of a row's overall line in `paired.csv` (the leaderboard's *average*).
pub const AVERAGE: &str = "average";

/// The paired difference of one task, category or average of one row (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct DeltaStat {
    /// Mean difference, points (row − full cache).
    pub delta: f64,
    /// Standard error of `delta`; None with fewer than two clusters somewhere below it.
    pub se: Option<f64>,
    pub pairs: usize,
    pub clusters: usize,
    /// Pairs whose trimmed predictions are equal.
    pub agreeing: usize,
    /// Two-sided normal-approximation p-value; None without an SE.
    pub p_value: Option<f64>,
    /// Significant after Holm–Bonferroni over the table's category and average cells.
    pub holm_significant: bool,
    /// The SE (of this task, or of a task below it) is the within-context one of a task whose
    /// pairs all share one context (see the module docs); `†` in the tables.
    pub within_one_context: bool,
}

impl DeltaStat {
    /// The 95% confidence half-width, 1.96·SE.
    pub fn ci95(&self) -> Option<f64> {
        self.se.map(|s| 1.96 * s)
    }

    /// Share of agreeing pairs, 0–1 (None without pairs).
    pub fn agreement(&self) -> Option<f64> {
        (self.pairs > 0).then(|| self.agreeing as f64 / self.pairs as f64)
    }

    /// `-3.3 ± 4.0 *`: signed Δ and half-width with one decimal, `*` when Holm-significant.
    pub fn markdown_cell(&self) -> String {
        let mut out = signed(self.delta, 1);
        if let Some(ci) = self.ci95() {
            out.push_str(&format!(" ± {}", fixed(ci, 1)));
            if self.within_one_context {
                out.push('†');
            }
        }
        if self.holm_significant {
            out.push_str(" *");
        }
        out
    }
}

/// One non-full leaderboard row against its model's full-cache row.
#[derive(Clone, Debug, PartialEq)]
pub struct PairedRow {
    pub model: String,
    pub method: String,
    pub method_label: String,
    pub ratio: Option<f64>,
    /// Display name of the full-cache row compared with; None when the model has none.
    pub full: Option<String>,
    /// By task name.
    pub tasks: BTreeMap<String, DeltaStat>,
    /// By category name (categories with pairs only).
    pub categories: BTreeMap<String, DeltaStat>,
    /// Over the categories with pairs; None without pairs.
    pub average: Option<DeltaStat>,
    /// The row's records, paired or not.
    pub records: usize,
}

impl PairedRow {
    pub fn pairs(&self) -> usize {
        self.average.as_ref().map_or(0, |a| a.pairs)
    }

    /// `snapkv 4x`, or the label alone (as [`LeaderboardRow::display_name`]).
    pub fn display_name(&self) -> String {
        match self.ratio {
            Some(_) => format!("{} {}", self.method_label, budget_label(self.ratio)),
            None => self.method_label.clone(),
        }
    }
}

/// Every non-full row of a leaderboard, paired with its full cache, in leaderboard order.
#[derive(Clone, Debug, PartialEq)]
pub struct Paired {
    /// The leaderboard's category columns, in display order.
    pub categories: Vec<String>,
    pub rows: Vec<PairedRow>,
    /// Size of the Holm family: the category and average cells with a p-value.
    pub tests: usize,
}

/// `+1.5`, `-3.0`, `+0.0`: a number with its sign.
fn signed(v: f64, decimals: usize) -> String {
    let s = fixed(v, decimals);
    if s.starts_with('-') || s == "nan" {
        s
    } else {
        format!("+{s}")
    }
}

/// erfc(x) for x ≥ 0, fractional error below 1.2e-7 (the Chebyshev fit of Numerical Recipes,
/// `erfcc`).
fn erfc(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.5 * x);
    let poly = -1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06 + t * (0.278_868_07 + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    t * (-x * x + poly).exp()
}

/// Two-sided p-value of `delta` with standard error `se` under the normal approximation (see
/// the module docs for `se = 0`); None without an SE.
pub fn p_value(delta: f64, se: Option<f64>) -> Option<f64> {
    let se = se?;
    if se > 0.0 {
        let z = (delta / se).abs();
        Some(if z == 0.0 { 1.0 } else { erfc(z / std::f64::consts::SQRT_2).min(1.0) })
    } else if delta == 0.0 {
        Some(1.0)
    } else {
        Some(0.0)
    }
}

/// One pair: the difference, whether the predictions agree, and its cluster (None: its own).
struct Pair {
    d: f64,
    agree: bool,
    cluster: Option<String>,
}

/// A record's cluster value, when its metadata carry [`CLUSTER_KEY`].
fn cluster_of(r: &SampleRecord) -> Option<String> {
    match r.metadata.get(CLUSTER_KEY)? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        v => Some(v.to_string()),
    }
}

/// Δ and Miller's clustered SE of one task's pairs (non-empty).
fn task_stat(pairs: &[Pair]) -> DeltaStat {
    let n = pairs.len() as f64;
    let mean = pairs.iter().map(|p| p.d).sum::<f64>() / n;
    let mut keyed: BTreeMap<&str, f64> = BTreeMap::new();
    let mut sum_sq = 0.0;
    let mut singletons = 0usize;
    for p in pairs {
        let e = p.d - mean;
        match &p.cluster {
            Some(c) => *keyed.entry(c.as_str()).or_insert(0.0) += e,
            None => {
                sum_sq += e * e;
                singletons += 1;
            }
        }
    }
    sum_sq += keyed.values().map(|s| s * s).sum::<f64>();
    let clusters = singletons + keyed.len();
    // All pairs in one shared context: the within-context SE, s²/n (see the module docs).
    let within_one_context = clusters == 1 && pairs.len() >= 2;
    let se = if clusters >= 2 {
        let c = clusters as f64;
        Some((c / (c - 1.0) * sum_sq / (n * n)).sqrt())
    } else if within_one_context {
        let within: f64 = pairs.iter().map(|p| (p.d - mean) * (p.d - mean)).sum();
        Some((within / (n - 1.0) / n).sqrt())
    } else {
        None
    };
    DeltaStat {
        delta: mean,
        se,
        pairs: pairs.len(),
        clusters,
        agreeing: pairs.iter().filter(|p| p.agree).count(),
        p_value: p_value(mean, se),
        holm_significant: false,
        within_one_context,
    }
}

/// The mean of independent parts: Δ = Σ Δ_j / k, SE² = Σ SE_j² / k² (None if any part lacks one).
fn mean_stat(parts: &[&DeltaStat]) -> Option<DeltaStat> {
    if parts.is_empty() {
        return None;
    }
    let k = parts.len() as f64;
    let delta = parts.iter().map(|s| s.delta).sum::<f64>() / k;
    let se = parts.iter().map(|s| s.se.map(|v| v * v)).sum::<Option<f64>>().map(|v| v.sqrt() / k);
    Some(DeltaStat {
        delta,
        se,
        pairs: parts.iter().map(|s| s.pairs).sum(),
        clusters: parts.iter().map(|s| s.clusters).sum(),
        agreeing: parts.iter().map(|s| s.agreeing).sum(),
        p_value: p_value(delta, se),
        holm_significant: false,
        within_one_context: parts.iter().any(|s| s.within_one_context),
    })
}

/// What makes two records the same sample: task, seed, template, sample id.
type SampleKey<'a> = (&'a str, u64, &'a str, &'a str);

/// The records of a row's cells by sample, each with its cell.
fn index<'a>(cells: &[&'a Cell]) -> BTreeMap<SampleKey<'a>, Vec<(&'a Cell, &'a SampleRecord)>> {
    let mut out: BTreeMap<SampleKey<'a>, Vec<(&'a Cell, &'a SampleRecord)>> = BTreeMap::new();
    for c in cells {
        for r in &c.records {
            out.entry((c.info.task.as_str(), c.info.seed, c.info.template.as_str(), r.sample_id.as_str())).or_default().push((c, r));
        }
    }
    out
}

fn pair_row(row: &LeaderboardRow, full: Option<&LeaderboardRow>, cells: &BTreeMap<RowKey, Vec<&Cell>>) -> PairedRow {
    let empty = Vec::new();
    let own = cells.get(&row.key()).unwrap_or(&empty);
    let mut out = PairedRow {
        model: row.model.clone(),
        method: row.method.clone(),
        method_label: row.method_label.clone(),
        ratio: row.ratio,
        full: full.map(LeaderboardRow::display_name),
        tasks: BTreeMap::new(),
        categories: BTreeMap::new(),
        average: None,
        records: own.iter().map(|c| c.records.len()).sum(),
    };
    let Some(full) = full else { return out };
    let reference = index(cells.get(&full.key()).unwrap_or(&empty));
    // (category, task) -> pairs, in sample-key order.
    let mut by_task: BTreeMap<(&str, &str), Vec<Pair>> = BTreeMap::new();
    for (key, mine) in index(own) {
        let (Some(theirs), [(cell, r)]) = (reference.get(&key), mine.as_slice()) else { continue };
        let [(_, f)] = theirs.as_slice() else { continue };
        by_task.entry((cell.info.category.as_str(), cell.info.task.as_str())).or_default().push(Pair {
            d: r.score - f.score,
            agree: r.prediction.trim() == f.prediction.trim(),
            cluster: cluster_of(r).or_else(|| cluster_of(f)),
        });
    }
    let mut by_category: BTreeMap<&str, Vec<DeltaStat>> = BTreeMap::new();
    for ((category, task), pairs) in &by_task {
        let s = task_stat(pairs);
        out.tasks.insert(task.to_string(), s.clone());
        by_category.entry(category).or_default().push(s);
    }
    for (category, stats) in &by_category {
        if let Some(s) = mean_stat(&stats.iter().collect::<Vec<_>>()) {
            out.categories.insert(category.to_string(), s);
        }
    }
    out.average = mean_stat(&out.categories.values().collect::<Vec<_>>());
    out
}

impl Paired {
    /// Pairs every non-full row of `lb` (built from `cells`) with its model's full-cache row.
    pub fn build(cells: &[Cell], lb: &Leaderboard) -> Paired {
        let mut sorted: Vec<&Cell> = cells.iter().collect();
        sorted.sort_by(|a, b| a.info.id.cmp(&b.info.id));
        let mut by_row: BTreeMap<RowKey, Vec<&Cell>> = BTreeMap::new();
        for c in sorted {
            by_row.entry(row_key(&c.info)).or_default().push(c);
        }
        let mut rows: Vec<PairedRow> = lb
            .rows
            .iter()
            .filter(|r| !r.is_full())
            .map(|r| {
                let full = lb.rows.iter().find(|f| f.model == r.model && f.is_full());
                pair_row(r, full, &by_row)
            })
            .collect();
        let tests = holm(&mut rows);
        Paired { categories: lb.categories.clone(), rows, tests }
    }

    /// Models with a paired row, in row order.
    pub fn models(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in &self.rows {
            if !out.contains(&r.model) {
                out.push(r.model.clone());
            }
        }
        out
    }

    /// `paired.csv`: one line per (non-full row, category of its model's leaderboard table, and
    /// `average`): counts, Δ, its 95% half-width, p-value (`{:.4e}`), Holm decision and agreement
    /// (share 0–1); empty fields where there are no pairs or no SE.
    pub fn to_csv(&self, lb: &Leaderboard) -> Result<String, csv::Error> {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record([
            "model",
            "method",
            "method_label",
            "ratio",
            "category",
            "n_pairs",
            "n_clusters",
            "delta",
            "ci95_half_width",
            "p_value",
            "holm_significant",
            "agreement",
            "se_within_one_context",
        ])?;
        for model in self.models() {
            // The model's categories, then None for the average.
            let cats = lb.categories_of(&model);
            let columns: Vec<Option<&String>> = cats.iter().map(Some).chain([None]).collect();
            for r in self.rows.iter().filter(|r| r.model == model) {
                for c in &columns {
                    let s = match c {
                        Some(c) => r.categories.get(*c),
                        None => r.average.as_ref(),
                    };
                    w.write_record([
                        r.model.clone(),
                        r.method.clone(),
                        r.method_label.clone(),
                        r.ratio.map(shortest).unwrap_or_default(),
                        c.map_or(AVERAGE, String::as_str).to_string(),
                        s.map_or(0, |s| s.pairs).to_string(),
                        s.map_or(0, |s| s.clusters).to_string(),
                        s.map(|s| fixed(s.delta, 4)).unwrap_or_default(),
                        s.and_then(DeltaStat::ci95).map(|v| fixed(v, 4)).unwrap_or_default(),
                        s.and_then(|s| s.p_value).map(|p| format!("{p:.4e}")).unwrap_or_default(),
                        s.is_some_and(|s| s.holm_significant).to_string(),
                        s.and_then(DeltaStat::agreement).map(|v| fixed(v, 4)).unwrap_or_default(),
                        s.is_some_and(|s| s.within_one_context).to_string(),
                    ])?;
                }
            }
        }
        let bytes = w.into_inner().map_err(|e| csv::Error::from(e.into_error()))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The section of `leaderboard.md` after the leaderboard tables: what the columns mean, then
    /// one table per model (rows: its non-full rows; columns: its categories, average,
    /// agreement, pairs, clusters).
    pub fn to_markdown(&self, lb: &Leaderboard) -> String {
        let mut out = String::from("\n## Difference from the full cache (paired)\n\n");
        out.push_str(&format!(
            "Each cell is Δ, the row's score minus its model's full cache's on the same samples (paired by task, seed, \
             template and sample id; a sample on one side only is left out), in points, ± the 95% confidence half-width \
             1.96·SE. Per task, Δ is the mean of the n per-sample differences d_i and SE² = C/(C−1) · Σ_c (Σ_(i∈c) \
             (d_i − d̄))² / n², the clustered standard error of Miller (2024, arXiv:2411.00640) over C clusters: samples \
             whose metadata share a `{CLUSTER_KEY}` (one context) form a cluster, every other sample is its own, and \
             without shared contexts this is the usual sd/√n. A category's Δ is the mean of its tasks' Δs, SE² = Σ SE_task² \
             / T² over its T tasks, and *average* is the mean of the category Δs, SE² = Σ SE_category² / K² over K \
             categories: the leaderboard's averaging, so with every sample paired Δ is the row's score minus the full \
             cache's. \\* marks a Δ significant at α = {ALPHA} after Holm–Bonferroni correction over all {} category and \
             average cells with an SE, from the two-sided normal-approximation p-value of z = Δ/SE (a Δ ≠ 0 with SE 0, \
             every pair differing by the same amount, counts as p = 0; Δ = 0 with SE 0 as p = 1); with a single pair \
             there is no SE, no ± and no test. † marks a half-width resting on a task whose paired samples all share one \
             context (one cluster, where the clustered SE is undefined; for example RULER's niah and variable tracking at one \
             length, whose noise haystack is fixed by the length): its SE is then the within-context sd/√n, treating the samples as \
             independent given that fixed context (they differ by needle, key and position); it does not cover variation \
             over other contexts. *agreement* is the share of the row's pairs whose prediction equals \
             the full cache's (ignoring white space at both ends), *pairs* the number of paired samples and *clusters* \
             the clusters they fall in. — marks a row or category without pairs. Also in `paired.csv`.\n",
            self.tests
        ));
        if self.rows.is_empty() {
            out.push_str("\nNo rows besides the full cache to compare.\n");
        }
        for model in self.models() {
            out.push_str(&format!("\n### {}\n\n", md_escape(&model)));
            let rows: Vec<&PairedRow> = self.rows.iter().filter(|r| r.model == model).collect();
            if rows.iter().all(|r| r.full.is_none()) {
                out.push_str("No full-cache row for this model: nothing to pair.\n\n");
            }
            let cats = lb.categories_of(&model);
            let mut header: Vec<String> = vec!["method".into(), "budget".into()];
            header.extend(cats.iter().map(|c| md_escape(c)));
            header.extend(["average", "agreement", "pairs", "clusters"].iter().map(|s| s.to_string()));
            let mut table = Vec::new();
            for r in &rows {
                let mut line = vec![md_escape(&r.method_label), budget_label(r.ratio)];
                for c in &cats {
                    line.push(r.categories.get(c).map(DeltaStat::markdown_cell).unwrap_or_else(|| "—".into()));
                }
                line.push(r.average.as_ref().map(DeltaStat::markdown_cell).unwrap_or_else(|| "—".into()));
                line.push(r.average.as_ref().and_then(DeltaStat::agreement).map(|a| format!("{}%", fixed(100.0 * a, 1))).unwrap_or_else(|| "—".into()));
                line.push(r.pairs().to_string());
                line.push(r.average.as_ref().map_or(0, |a| a.clusters).to_string());
                table.push(line);
            }
            let right: Vec<bool> = (0..header.len()).map(|i| i >= 1).collect();
            out.push_str(&markdown_table(&header, &table, &right));
            let unpaired: Vec<String> = rows
                .iter()
                .filter(|r| r.full.is_some() && r.records > r.pairs())
                .map(|r| format!("{} {} of {}", md_escape(&r.display_name()), r.records - r.pairs(), r.records))
                .collect();
            if !unpaired.is_empty() {
                out.push_str(&format!("\nSamples without a full-cache counterpart, left out: {}.\n", unpaired.join("; ")));
            }
        }
        out
    }
}

/// Holm–Bonferroni at [`ALPHA`] over the category and average cells of `rows` with a p-value
/// (ties kept in table order); marks the significant ones and returns the family size.
fn holm(rows: &mut [PairedRow]) -> usize {
    let mut family: Vec<(f64, &mut DeltaStat)> = Vec::new();
    for r in rows.iter_mut() {
        for s in r.categories.values_mut().chain(r.average.as_mut()) {
            if let Some(p) = s.p_value {
                family.push((p, s));
            }
        }
    }
    family.sort_by(|a, b| a.0.total_cmp(&b.0));
    let m = family.len();
    for (k, (p, s)) in family.into_iter().enumerate() {
        if p <= ALPHA / (m - k) as f64 {
            s.holm_significant = true;
        } else {
            break;
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p_values_match_the_normal_table() {
        // 2·(1 − Φ(z)) from the standard normal table.
        for (z, p) in [(1.96, 0.049_995_8), (2.0, 0.045_500_3), (2.575_829, 0.010_000_0), (0.5, 0.617_075_1), (3.290_527, 0.001_000_0)] {
            let got = p_value(z, Some(1.0)).unwrap();
            assert!((got - p).abs() < 2e-7, "z = {z}: {got} vs {p}");
        }
        assert_eq!(p_value(0.0, Some(2.0)), Some(1.0));
        assert_eq!(p_value(0.0, Some(0.0)), Some(1.0));
        assert_eq!(p_value(-3.0, Some(0.0)), Some(0.0));
        assert_eq!(p_value(1.0, None), None);
    }

    #[test]
    fn clustered_se_reduces_to_the_sample_sd_without_clusters() {
        let pairs: Vec<Pair> = [1.0, 4.0, 6.0, 9.0].iter().map(|&d| Pair { d, agree: false, cluster: None }).collect();
        let s = task_stat(&pairs);
        // mean 5, residuals −4 −1 1 4, Σe² = 34, s² = 34/3, SE² = s²/4 = 34/12
        assert!((s.delta - 5.0).abs() < 1e-12);
        assert!((s.se.unwrap() - (34.0f64 / 12.0).sqrt()).abs() < 1e-12);
        assert_eq!(s.clusters, 4);
        let one = task_stat(&pairs[..1]);
        assert_eq!((one.se, one.p_value, one.clusters), (None, None, 1));
    }

    #[test]
    fn one_shared_context_gives_the_within_context_se_marked() {
        let shared = |d: &[f64]| -> Vec<Pair> { d.iter().map(|&d| Pair { d, agree: false, cluster: Some("ruler-noise-x".into()) }).collect() };
        // All four in one cluster: Miller's SE is undefined (C = 1); within the context,
        // mean 5, Σe² = 34, SE² = 34/(3·4), as if unclustered, and marked.
        let s = task_stat(&shared(&[1.0, 4.0, 6.0, 9.0]));
        assert_eq!(s.clusters, 1);
        assert!((s.se.unwrap() - (34.0f64 / 12.0).sqrt()).abs() < 1e-12);
        assert!(s.within_one_context);
        assert_eq!(s.markdown_cell(), "+5.0 ± 3.3†");
        // One pair in it: still no SE, no mark.
        let one = task_stat(&shared(&[3.0]));
        assert_eq!((one.se, one.within_one_context), (None, false));
        // Two clusters: Miller's SE, unmarked. A mean over a marked part is marked.
        let mut two = shared(&[1.0, 4.0]);
        two.extend([6.0, 9.0].iter().map(|&d| Pair { d, agree: false, cluster: Some("other".into()) }));
        let t = task_stat(&two);
        assert!(!t.within_one_context);
        let m = mean_stat(&[&s, &t]).unwrap();
        assert!(m.within_one_context && !mean_stat(&[&t, &t]).unwrap().within_one_context);
        // (5 ± 1.96·√(34/12) = 3.299 → "3.3"; a mean with a marked part keeps the mark.)
        assert!(m.markdown_cell().contains('†'));
    }
}
