//! The leaderboard: one row per (model, method label, budget) with a score per task category,
//! their average, and the measured cost (compression ratio, KV bytes held, peak memory, prefill
//! and decode speed), written as CSV and as the paper's Markdown layout. Sums run in a fixed
//! order and floats have fixed formats, so identical cells give byte-identical files however
//! they were sharded.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use crate::format::{budget_label, fixed, fixed_opt, human_bytes, md_escape, shortest};
use crate::load::Cell;
use crate::record::{CellInfo, SampleRecord, FULL_METHOD};

/// What groups cells into one leaderboard row: (model, method label, budget ratio as bits).
pub type RowKey = (String, String, Option<u64>);

/// The row a cell belongs to (see [`RowKey`]).
pub fn row_key(info: &CellInfo) -> RowKey {
    (info.model.clone(), info.method_label.clone(), info.ratio.map(f64::to_bits))
}

/// One category (or task) of one row.
#[derive(Clone, Debug, PartialEq)]
pub struct CategoryStat {
    /// Mean of the cell means of the category's cells.
    pub mean: f64,
    /// 95% confidence half-width, 1.96·sd/√n over the category's records (sample sd); None for n < 2.
    pub ci95: Option<f64>,
    pub records: usize,
    pub cells: usize,
}

impl CategoryStat {
    /// `mean ± half-width` (one decimal each), or the mean alone when there is no half-width.
    pub fn markdown_cell(&self) -> String {
        match self.ci95 {
            Some(ci) => format!("{} ± {}", fixed(self.mean, 1), fixed(ci, 1)),
            None => fixed(self.mean, 1),
        }
    }
}

/// One leaderboard row.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaderboardRow {
    pub model: String,
    /// Registered method name of the row's cells (the first cell's, by id).
    pub method: String,
    pub method_label: String,
    pub ratio: Option<f64>,
    /// Quantization bits from the method parameters, if any.
    pub quant_bits: Option<u32>,
    /// By category name.
    pub categories: BTreeMap<String, CategoryStat>,
    /// By task name (same statistics, per task).
    pub tasks: BTreeMap<String, CategoryStat>,
    /// Mean of the category means present in the row.
    pub average: Option<f64>,
    /// Mean measured compression ratio over the row's records.
    pub compression_ratio: Option<f64>,
    /// Mean bytes held by the cache at the end of a sample.
    pub kv_bytes_held: Option<f64>,
    /// Mean bytes the last attention step read (below `kv_bytes_held` for retrieval methods).
    pub kv_bytes_attended: Option<f64>,
    /// Largest peak memory of any record.
    pub peak_memory_bytes: Option<u64>,
    /// Σ input tokens / Σ prefill seconds.
    pub prefill_tokens_per_s: Option<f64>,
    /// Mean decode tokens/s over the records that generated more than one token.
    pub decode_tokens_per_s: Option<f64>,
    pub records: usize,
    pub cells: usize,
    /// Cells without every sample recorded or without the done marker.
    pub incomplete_cells: usize,
    /// Records whose time and memory a shared run measured (`"timing": "shared"`: one prefill
    /// for several methods, batched decoding), so not the method's own; 0 when the time and
    /// memory figures come from isolated measurements.
    pub shared_timing_records: usize,
    /// Samples run alone (`kvbench run --measure N`) that the time and memory figures are over,
    /// when every cell of the row has them; 0: they are over the row's records.
    pub measured_samples: usize,
}

impl LeaderboardRow {
    /// True for the full-cache reference row.
    pub fn is_full(&self) -> bool {
        self.method == FULL_METHOD || self.method_label == FULL_METHOD
    }

    /// The key of the row's cells (see [`row_key`]).
    pub fn key(&self) -> RowKey {
        (self.model.clone(), self.method_label.clone(), self.ratio.map(f64::to_bits))
    }

    /// `snapkv 4x`, or the label alone when the method has no budget (`kivi-2bit`).
    pub fn display_name(&self) -> String {
        match self.ratio {
            Some(_) => format!("{} {}", self.method_label, budget_label(self.ratio)),
            None => self.method_label.clone(),
        }
    }
}

/// All rows, ordered by model, then `full`, then method label, then budget ascending (none first).
#[derive(Clone, Debug, PartialEq)]
pub struct Leaderboard {
    /// Category columns, in display order (the paper's LongBench order first).
    pub categories: Vec<String>,
    /// Every task as (category, task), in display order (category order, then task name).
    pub tasks: Vec<(String, String)>,
    pub rows: Vec<LeaderboardRow>,
}

fn norm(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_lowercase()).collect()
}

/// Known categories in display order, by normalized spelling.
const CATEGORY_ORDER: &[&[&str]] = &[
    &["singledocqa", "singledocumentqa", "singledoc", "sdqa"],
    &["multidocqa", "multidocumentqa", "multidoc", "mdqa"],
    &["summarization", "summarisation", "summ", "summary"],
    &["fewshot", "fewshotlearning", "fewshots"],
    &["synthetic", "synth", "synthetictasks"],
    &["code", "codecompletion"],
    &["needle", "niah", "passkey"],
    &["ruler"],
    &["realtext"],
];

/// Display rank of a category: the paper's LongBench categories first, then the others by name.
pub fn category_rank(category: &str) -> (usize, String) {
    let n = norm(category);
    let n = n.strip_prefix("longbench").unwrap_or(&n);
    let rank = CATEGORY_ORDER.iter().position(|names| names.contains(&n)).unwrap_or(CATEGORY_ORDER.len());
    (rank, category.to_string())
}

/// Orders two rows: model, full first, method label, ratio ascending with none first.
pub fn row_order(a: &LeaderboardRow, b: &LeaderboardRow) -> Ordering {
    a.model.cmp(&b.model).then_with(|| b.is_full().cmp(&a.is_full())).then_with(|| a.method_label.cmp(&b.method_label)).then_with(|| match (a.ratio, b.ratio) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(x), Some(y)) => x.total_cmp(&y),
    })
}

/// The arithmetic mean, summed in order; None for no values.
pub(crate) fn mean(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut n = 0usize;
    let mut sum = 0.0;
    for v in values {
        sum += v;
        n += 1;
    }
    (n > 0).then(|| sum / n as f64)
}

/// 1.96 · sample sd / √n, None for fewer than two values.
fn ci95(values: &[f64]) -> Option<f64> {
    let n = values.len();
    if n < 2 {
        return None;
    }
    let m = values.iter().sum::<f64>() / n as f64;
    let var = values.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (n - 1) as f64;
    Some(1.96 * var.sqrt() / (n as f64).sqrt())
}

fn stat(cells: &[&Cell]) -> Option<CategoryStat> {
    let cell_means: Vec<f64> = cells.iter().filter_map(|c| c.mean_score()).collect();
    let scores: Vec<f64> = cells.iter().flat_map(|c| c.records.iter().map(|r| r.score)).collect();
    Some(CategoryStat { mean: mean(cell_means.iter().copied())?, ci95: ci95(&scores), records: scores.len(), cells: cell_means.len() })
}

fn build_row(cells: &[&Cell]) -> LeaderboardRow {
    let first = &cells[0].info;
    let mut by_category: BTreeMap<String, Vec<&Cell>> = BTreeMap::new();
    let mut by_task: BTreeMap<String, Vec<&Cell>> = BTreeMap::new();
    for c in cells {
        by_category.entry(c.info.category.clone()).or_default().push(c);
        by_task.entry(c.info.task.clone()).or_default().push(c);
    }
    let categories: BTreeMap<String, CategoryStat> = by_category.iter().filter_map(|(k, v)| Some((k.clone(), stat(v)?))).collect();
    let tasks: BTreeMap<String, CategoryStat> = by_task.iter().filter_map(|(k, v)| Some((k.clone(), stat(v)?))).collect();
    let records: Vec<_> = cells.iter().flat_map(|c| c.records.iter()).collect();
    // Time and memory: from the isolated measurements when every cell has them.
    let measured = cells.iter().all(|c| !c.measurements.is_empty());
    let timed: Vec<&SampleRecord> = if measured { cells.iter().flat_map(|c| c.measurements.iter()).collect() } else { records.clone() };
    let input_tokens: f64 = timed.iter().map(|r| r.input_tokens as f64).sum();
    let prefill_seconds: f64 = timed.iter().map(|r| r.prefill_seconds).sum();
    LeaderboardRow {
        model: first.model.clone(),
        method: first.method.clone(),
        method_label: first.method_label.clone(),
        ratio: first.ratio,
        quant_bits: first.quant_bits(),
        average: mean(categories.values().map(|s| s.mean)),
        categories,
        tasks,
        compression_ratio: mean(records.iter().map(|r| r.compression_ratio)),
        kv_bytes_held: mean(records.iter().map(|r| r.kv_bytes_held as f64)),
        kv_bytes_attended: mean(records.iter().map(|r| r.kv_bytes_attended as f64)),
        peak_memory_bytes: timed.iter().map(|r| r.peak_memory_bytes).max(),
        prefill_tokens_per_s: (prefill_seconds > 0.0).then(|| input_tokens / prefill_seconds),
        decode_tokens_per_s: mean(timed.iter().filter(|r| r.generated_tokens > 1).map(|r| r.decode_tokens_per_s)),
        records: records.len(),
        cells: cells.len(),
        incomplete_cells: cells.iter().filter(|c| !c.is_complete()).count(),
        shared_timing_records: timed.iter().filter(|r| r.timing.as_deref() == Some(crate::record::TIMING_SHARED)).count(),
        measured_samples: if measured { timed.len() } else { 0 },
    }
}

impl Leaderboard {
    /// Aggregates cells into rows (see [`LeaderboardRow`] for each figure).
    pub fn build(cells: &[Cell]) -> Leaderboard {
        let mut sorted: Vec<&Cell> = cells.iter().collect();
        sorted.sort_by(|a, b| a.info.id.cmp(&b.info.id));
        let mut groups: BTreeMap<RowKey, Vec<&Cell>> = BTreeMap::new();
        for c in sorted {
            groups.entry(row_key(&c.info)).or_default().push(c);
        }
        let mut rows: Vec<LeaderboardRow> = groups.values().map(|cells| build_row(cells)).collect();
        rows.sort_by(row_order);
        let mut categories: Vec<String> = Vec::new();
        for r in &rows {
            for c in r.categories.keys() {
                if !categories.contains(c) {
                    categories.push(c.clone());
                }
            }
        }
        categories.sort_by_key(|c| category_rank(c));
        let mut tasks: Vec<(String, String)> = cells.iter().map(|c| (c.info.category.clone(), c.info.task.clone())).collect();
        tasks.sort_by(|a, b| (category_rank(&a.0), &a.1).cmp(&(category_rank(&b.0), &b.1)));
        tasks.dedup();
        Leaderboard { categories, tasks, rows }
    }

    /// Models in row order.
    pub fn models(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in &self.rows {
            if !out.contains(&r.model) {
                out.push(r.model.clone());
            }
        }
        out
    }

    /// Category columns any row of `model` has, in display order.
    pub fn categories_of(&self, model: &str) -> Vec<String> {
        self.categories.iter().filter(|c| self.rows.iter().any(|r| r.model == model && r.categories.contains_key(*c))).cloned().collect()
    }

    /// Tasks (category, task) any row of `model` has, in display order.
    pub fn tasks_of(&self, model: &str) -> Vec<(String, String)> {
        self.tasks.iter().filter(|(_, t)| self.rows.iter().any(|r| r.model == model && r.tasks.contains_key(t))).cloned().collect()
    }

    /// The widest 95% half-width of any (row, task) average: (half-width, row, task).
    pub fn widest_task_ci(&self) -> Option<(f64, &LeaderboardRow, &str)> {
        self.rows.iter().flat_map(|r| r.tasks.iter().filter_map(move |(t, s)| Some((s.ci95?, r, t.as_str())))).max_by(|a, b| a.0.total_cmp(&b.0))
    }

    /// `tasks.csv`: one line per (row, task): the task average, its 95% half-width and samples.
    pub fn to_tasks_csv(&self) -> Result<String, csv::Error> {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(["model", "method", "method_label", "ratio", "category", "task", "mean", "ci95", "samples"])?;
        for r in &self.rows {
            for (cat, task) in &self.tasks {
                let Some(s) = r.tasks.get(task) else { continue };
                w.write_record([
                    r.model.clone(),
                    r.method.clone(),
                    r.method_label.clone(),
                    r.ratio.map(shortest).unwrap_or_default(),
                    cat.clone(),
                    task.clone(),
                    fixed(s.mean, 4),
                    s.ci95.map(|v| fixed(v, 4)).unwrap_or_default(),
                    s.records.to_string(),
                ])?;
            }
        }
        let bytes = w.into_inner().map_err(|e| csv::Error::from(e.into_error()))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// `tasks.md`: per model, one column per task with its average ± 95% half-width, and the
    /// widest half-width of all (the figure a claim of "every task average within ±X" rests on).
    pub fn to_tasks_markdown(&self, experiment: &str) -> String {
        let mut out = format!("# Per task: {}\n\n", md_escape(experiment));
        out.push_str(
            "Each cell is a task average (0–100) over the row's samples of that task, ± the 95% confidence \
             half-width 1.96·sd/√n (sample sd), with n samples below the table.\n",
        );
        if self.rows.is_empty() {
            out.push_str("\nNo results yet.\n");
        }
        for model in self.models() {
            out.push_str(&format!("\n## {}\n\n", md_escape(&model)));
            let tasks = self.tasks_of(&model);
            let mut header: Vec<String> = vec!["method".into(), "budget".into()];
            header.extend(tasks.iter().map(|(_, t)| md_escape(t)));
            let mut table: Vec<Vec<String>> = Vec::new();
            let mut samples: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
            for r in self.rows.iter().filter(|r| r.model == model) {
                let mut row = vec![md_escape(&r.method_label), budget_label(r.ratio)];
                for (_, t) in &tasks {
                    row.push(match r.tasks.get(t) {
                        Some(s) => {
                            let e = samples.entry(t.as_str()).or_insert((usize::MAX, 0));
                            *e = (e.0.min(s.records), e.1.max(s.records));
                            s.markdown_cell()
                        }
                        None => "–".into(),
                    });
                }
                table.push(row);
            }
            let mut n_row = vec!["*n*".to_string(), String::new()];
            n_row.extend(tasks.iter().map(|(_, t)| match samples.get(t.as_str()) {
                Some((lo, hi)) if lo == hi => lo.to_string(),
                Some((lo, hi)) => format!("{lo}–{hi}"),
                None => "–".into(),
            }));
            table.push(n_row);
            let right: Vec<bool> = (0..header.len()).map(|i| i >= 1).collect();
            out.push_str(&markdown_table(&header, &table, &right));
        }
        if let Some((ci, r, t)) = self.widest_task_ci() {
            out.push_str(&format!(
                "\nWidest 95% half-width of any task average: ±{} ({} / {} / {}).\n",
                fixed(ci, 2),
                md_escape(&r.model),
                md_escape(&r.display_name()),
                md_escape(t)
            ));
        }
        out
    }

    /// `leaderboard.csv`: a header row, plain numbers, empty fields where a figure is missing.
    pub fn to_csv(&self) -> Result<String, csv::Error> {
        let mut w = csv::Writer::from_writer(Vec::new());
        let mut header: Vec<String> = ["model", "method", "method_label", "ratio"].iter().map(|s| s.to_string()).collect();
        for c in &self.categories {
            header.push(c.clone());
            header.push(format!("{c}_ci95"));
        }
        header.extend(
            [
                "average",
                "compression_ratio",
                "kv_bytes_held",
                "peak_memory_bytes",
                "prefill_tokens_per_s",
                "decode_tokens_per_s",
                "records",
                "cells",
                "incomplete_cells",
                // Appended after the original columns, so readers that index by position still work.
                "kv_bytes_attended",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        w.write_record(&header)?;
        for r in &self.rows {
            let mut rec = vec![r.model.clone(), r.method.clone(), r.method_label.clone(), r.ratio.map(shortest).unwrap_or_default()];
            for c in &self.categories {
                let s = r.categories.get(c);
                rec.push(s.map(|s| fixed(s.mean, 4)).unwrap_or_default());
                rec.push(s.and_then(|s| s.ci95).map(|v| fixed(v, 4)).unwrap_or_default());
            }
            rec.push(fixed_opt(r.average, 4, ""));
            rec.push(fixed_opt(r.compression_ratio, 4, ""));
            rec.push(fixed_opt(r.kv_bytes_held, 1, ""));
            rec.push(r.peak_memory_bytes.map(|v| v.to_string()).unwrap_or_default());
            rec.push(fixed_opt(r.prefill_tokens_per_s, 3, ""));
            rec.push(fixed_opt(r.decode_tokens_per_s, 3, ""));
            rec.push(r.records.to_string());
            rec.push(r.cells.to_string());
            rec.push(r.incomplete_cells.to_string());
            rec.push(fixed_opt(r.kv_bytes_attended, 1, ""));
            w.write_record(&rec)?;
        }
        let bytes = w.into_inner().map_err(|e| csv::Error::from(e.into_error()))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// `leaderboard.md`: one table per model (rows method × budget, columns categories, average,
    /// then the measured ratio, KV held, peak memory, prefill and decode tokens/s).
    pub fn to_markdown(&self, experiment: &str) -> String {
        let mut out = String::new();
        out.push_str(&format!("# Leaderboard: {}\n\n", md_escape(experiment)));
        out.push_str(
            "Scores are 0–100: per category, the mean of its cells' mean scores, ± the 95% confidence \
             half-width over its samples (1.96·sd/√n). *average* is the mean of the row's category \
             columns. Measured figures are over all the row's samples: *ratio* (full-cache bytes / \
             held bytes) and *KV held* are means, *peak memory* is the maximum, *prefill* is Σ input \
             tokens / Σ prefill seconds, *decode* the mean tokens/s of samples generating more than one token. \
             *KV attended* (shown when a method attends to less than it holds, as retrieval methods do) is \
             the mean of what the last decoding step read.\n",
        );
        if self.rows.is_empty() {
            out.push_str("\nNo results yet.\n");
        }
        let mut any_incomplete = false;
        let mut any_shared = false;
        for model in self.models() {
            out.push_str(&format!("\n## {}\n\n", md_escape(&model)));
            let cats = self.categories_of(&model);
            let attended_differs = self.rows.iter().any(|r| r.model == model && r.kv_bytes_attended != r.kv_bytes_held);
            let mut header: Vec<String> = vec!["method".into(), "budget".into()];
            header.extend(cats.iter().map(|c| md_escape(c)));
            let mut figures = vec!["average", "ratio", "KV held"];
            if attended_differs {
                figures.push("KV attended");
            }
            figures.extend(["peak memory", "prefill tok/s", "decode tok/s"]);
            header.extend(figures.iter().map(|s| s.to_string()));
            let mut table: Vec<Vec<String>> = Vec::new();
            for r in self.rows.iter().filter(|r| r.model == model) {
                let mut name = md_escape(&r.method_label);
                if r.incomplete_cells > 0 {
                    name.push_str(" †");
                    any_incomplete = true;
                }
                if r.shared_timing_records > 0 {
                    name.push_str(" ‡");
                    any_shared = true;
                }
                let mut row = vec![name, budget_label(r.ratio)];
                for c in &cats {
                    row.push(r.categories.get(c).map(CategoryStat::markdown_cell).unwrap_or_else(|| "–".into()));
                }
                row.push(fixed_opt(r.average, 1, "–"));
                row.push(r.compression_ratio.map(|v| format!("{}x", fixed(v, 2))).unwrap_or_else(|| "–".into()));
                row.push(r.kv_bytes_held.map(human_bytes).unwrap_or_else(|| "–".into()));
                if attended_differs {
                    row.push(r.kv_bytes_attended.map(human_bytes).unwrap_or_else(|| "–".into()));
                }
                row.push(r.peak_memory_bytes.map(|v| human_bytes(v as f64)).unwrap_or_else(|| "–".into()));
                row.push(fixed_opt(r.prefill_tokens_per_s, 1, "–"));
                row.push(fixed_opt(r.decode_tokens_per_s, 1, "–"));
                table.push(row);
            }
            let right: Vec<bool> = (0..header.len()).map(|i| i >= 1).collect();
            out.push_str(&markdown_table(&header, &table, &right));
        }
        if any_incomplete {
            out.push_str("\n† some of the row's cells are incomplete (samples missing or no done marker).\n");
        }
        let measured: Vec<usize> = self.rows.iter().map(|r| r.measured_samples).filter(|&n| n > 0).collect();
        if let (Some(lo), Some(hi)) = (measured.iter().min(), measured.iter().max()) {
            let range = if lo == hi { lo.to_string() } else { format!("{lo}–{hi}") };
            out.push_str(&format!(
                "\nTime and memory figures of {} row(s) are over {range} sample(s) per row run alone after the grid \
                 (`kvbench run --measure N`: each sample with its own prefill and decoding, not interleaved with other methods).\n",
                measured.len()
            ));
        }
        if any_shared {
            out.push_str(
                "\n‡ the row's time and memory figures (peak memory, prefill and decode tok/s) come from a shared run: one \
                 prefill served several methods and sequences decoded in batches, so they are the group's, not the \
                 method's own (its scores and bytes are exactly its own). Measure them with `kvbench run --isolated`.\n",
            );
        }
        out
    }
}

/// A Markdown table with columns padded to equal width (by characters), right-aligned where asked.
pub fn markdown_table(header: &[String], rows: &[Vec<String>], right: &[bool]) -> String {
    let cols = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count().max(3)).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(cols) {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let pad = |s: &str, i: usize| {
        let n = width[i].saturating_sub(s.chars().count());
        if right.get(i).copied().unwrap_or(false) {
            format!("{}{}", " ".repeat(n), s)
        } else {
            format!("{}{}", s, " ".repeat(n))
        }
    };
    let mut out = String::new();
    out.push('|');
    for (i, h) in header.iter().enumerate() {
        out.push_str(&format!(" {} |", pad(h, i)));
    }
    out.push_str("\n|");
    for (i, w) in width.iter().enumerate() {
        if right.get(i).copied().unwrap_or(false) {
            out.push_str(&format!(" {}: |", "-".repeat(w - 1)));
        } else {
            out.push_str(&format!(" {} |", "-".repeat(*w)));
        }
    }
    out.push('\n');
    for r in rows {
        out.push('|');
        for i in 0..cols {
            let c = r.get(i).map(String::as_str).unwrap_or("");
            out.push_str(&format!(" {} |", pad(c, i)));
        }
        out.push('\n');
    }
    out
}
