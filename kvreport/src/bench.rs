//! Speed and memory from `kvbench bench` files (`bench.json`) in the report: one chart per figure
//! (decode and prefill tokens/s, peak memory) against context length, a line per method, with
//! the decode ceiling of the full cache as a dashed line, and the table of every measurement;
//! and, for `--memory-budget` runs, the serving section: decode throughput and memory against
//! batch size per method, with the budget as a line, and what the budget buys each method.

use crate::format::{fixed, html_escape};
use crate::svg::{Axis, Marker, Point, RefLine, Series, XyChart};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// One row of `bench.json` (the fields the report draws; the file has more).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct BenchRow {
    pub model: String,
    pub label: String,
    pub context_tokens: usize,
    pub prefill_tokens_per_s: f64,
    pub ttft_seconds: f64,
    pub decode_tokens_per_s: f64,
    pub kv_bytes_held: u64,
    pub kv_bytes_attended: u64,
    pub peak_rss_bytes: u64,
    pub decode_ceiling_tokens_per_s: f64,
    pub decode_pct_of_ceiling: f64,
    pub prefill_pct_of_ceiling: f64,
    pub device: String,
    pub threads: usize,
}

/// One row of `bench.json`'s `batched` (batched decoding at one batch size).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct BatchedRow {
    pub model: String,
    pub label: String,
    pub context_tokens: usize,
    pub batch: usize,
    pub decode_tokens_per_s_summed: f64,
    pub kv_bytes_held: u64,
}

/// One row of `bench.json`'s `serving` (`kvbench bench --memory-budget`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ServingRow {
    pub model: String,
    pub label: String,
    pub context_tokens: usize,
    pub budget_bytes: u64,
    pub weight_bytes: u64,
    pub kv_bytes_per_sequence: u64,
    pub batch: usize,
    pub bytes_at_batch: u64,
    pub decode_tokens_per_s_summed: f64,
    /// Batch sizes over the budget (not run), space-separated.
    pub over_budget: String,
}

/// Everything the report draws from bench files: a `bench.json` as read (`batched` and
/// `serving` are absent from files written without `--batch` / `--memory-budget`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct BenchData {
    pub rows: Vec<BenchRow>,
    #[serde(default)]
    pub batched: Vec<BatchedRow>,
    #[serde(default)]
    pub serving: Vec<ServingRow>,
}

impl BenchData {
    pub fn extend(&mut self, other: BenchData) {
        self.rows.extend(other.rows);
        self.batched.extend(other.batched);
        self.serving.extend(other.serving);
    }
}

/// Why a bench file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", .path.display())]
pub struct BenchError {
    pub path: PathBuf,
    pub problem: String,
}

/// Reads `path` (a `bench.json`, or a directory holding one).
pub fn load_bench(path: &Path) -> Result<BenchData, BenchError> {
    let file = if path.is_dir() { path.join("bench.json") } else { path.to_path_buf() };
    let text = std::fs::read_to_string(&file).map_err(|e| BenchError { path: file.clone(), problem: e.to_string() })?;
    serde_json::from_str(&text).map_err(|e| BenchError { path: file.clone(), problem: format!("not a kvbench bench file ({e})") })
}

fn gib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0 * 1024.0)
}

/// The serving section (`kvbench bench --memory-budget`): per model and context, decode
/// tokens/s summed over the batch against batch size, and the bytes each batch size needs
/// (weights + B × one sequence's measured cache bytes) with the budget as a line, then what the
/// budget buys each method. No serving rows give an empty string.
pub fn serving_section(batched: &[BatchedRow], serving: &[ServingRow]) -> String {
    if serving.is_empty() {
        return String::new();
    }
    let mut groups: Vec<(&str, usize)> = serving.iter().map(|r| (r.model.as_str(), r.context_tokens)).collect();
    groups.sort();
    groups.dedup();
    let mut o = String::new();
    o.push_str("<h2 id=\"serving\">What a memory budget buys (kvbench bench --memory-budget)</h2>");
    o.push_str(
        "<p class=\"lead\">Each method serves as many copies of one prompt as fit the budget: a batch of B needs the \
         weights plus B times one sequence's cache bytes, measured at the end of its generation. Batch sizes over the \
         budget were not run. Decode tokens/s are summed over the batch (one forward step for all sequences).</p>",
    );
    for (model, ctx) in groups {
        let mine: Vec<&ServingRow> = serving.iter().filter(|r| r.model == model && r.context_tokens == ctx).collect();
        let budget = mine[0].budget_bytes;
        o.push_str(&format!("<h3>{} at {ctx} tokens, {} GiB budget</h3><div class=\"grid3\">", html_escape(model), fixed(gib(budget), 1)));
        let log_axis = |label: &str| Axis { log: true, ..Axis::linear(label) };
        let mut speed = XyChart::new("Decode throughput by batch", log_axis("batch size"), Axis { zero: true, ..Axis::linear("decode tokens/s (sum)") });
        let mut memory = XyChart::new("Memory by batch", log_axis("batch size"), Axis { zero: true, ..Axis::linear("weights + caches (GiB)") });
        for chart in [&mut speed, &mut memory] {
            chart.subtitle = Some(format!("{model}, {ctx} tokens"));
            chart.width = 440.0;
            chart.height = 340.0;
            chart.legend_below = true;
        }
        memory.reference.push(RefLine { y: gib(budget), label: format!("budget {} GiB", fixed(gib(budget), 1)), color: "#dc2626".into() });
        for (k, r) in mine.iter().enumerate() {
            let (color, marker) = (COLORS[k % COLORS.len()], Marker::ALL[k % Marker::ALL.len()]);
            let mut s = Series::new(r.label.as_str(), color, marker);
            s.line = true;
            let mut runs: Vec<&BatchedRow> = batched.iter().filter(|b| b.model == model && b.context_tokens == ctx && b.label == r.label).collect();
            runs.sort_by_key(|b| b.batch);
            for b in &runs {
                s.points.push(Point {
                    x: b.batch as f64,
                    y: b.decode_tokens_per_s_summed,
                    tip: format!("{}: batch {}, {} tok/s", r.label, b.batch, fixed(b.decode_tokens_per_s_summed, 1)),
                    label: None,
                });
            }
            speed.series.push(s);
            let mut sizes: Vec<usize> = runs.iter().map(|b| b.batch).chain(r.over_budget.split_whitespace().filter_map(|t| t.parse().ok())).collect();
            sizes.sort_unstable();
            sizes.dedup();
            let mut m = Series::new(r.label.as_str(), color, marker);
            m.line = true;
            for b in sizes {
                let bytes = r.weight_bytes + b as u64 * r.kv_bytes_per_sequence;
                let fits = if bytes <= budget { "fits" } else { "over budget, not run" };
                m.points.push(Point { x: b as f64, y: gib(bytes), tip: format!("{}: batch {b}, {} GiB ({fits})", r.label, fixed(gib(bytes), 2)), label: None });
            }
            memory.series.push(m);
        }
        o.push_str(&format!("<div class=\"card\">{}</div><div class=\"card\">{}</div></div>", speed.render(), memory.render()));
        o.push_str("<div class=\"tablewrap\"><table class=\"lb\"><thead><tr><th>method</th><th class=\"num\">KV per sequence MiB</th><th class=\"num\">largest batch that fits</th><th class=\"num\">GiB at it</th><th class=\"num\">decode tok/s (sum)</th><th>over budget (not run)</th></tr></thead><tbody>");
        for r in &mine {
            let batch = if r.batch == 0 { "none fits".to_string() } else { r.batch.to_string() };
            o.push_str(&format!(
                "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                html_escape(&r.label),
                fixed(mib(r.kv_bytes_per_sequence), 1),
                batch,
                fixed(gib(r.bytes_at_batch), 2),
                fixed(r.decode_tokens_per_s_summed, 1),
                if r.over_budget.is_empty() { "–".to_string() } else { html_escape(&r.over_budget) },
            ));
        }
        o.push_str("</tbody></table></div>");
    }
    o
}

const COLORS: [&str; 12] = ["#111827", "#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#db2777", "#0891b2", "#65a30d", "#9333ea", "#b45309", "#475569"];

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// The report section: per model, three charts and a table. Empty rows give an empty string.
pub fn bench_section(rows: &[BenchRow]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut models: Vec<&str> = rows.iter().map(|r| r.model.as_str()).collect();
    models.sort();
    models.dedup();
    let mut o = String::new();
    o.push_str("<h2 id=\"bench\">Speed and memory by context (kvbench bench)</h2>");
    o.push_str(
        "<p class=\"lead\">Measured by <code>kvbench bench</code>: medians of repeated runs after a warm-up, one prompt \
         per context length. The dashed line is the full cache's decode ceiling (weight bytes + KV bytes read, over \
         the machine's measured copy bandwidth), an estimate.</p>",
    );
    for model in models {
        let mine: Vec<&BenchRow> = rows.iter().filter(|r| r.model == model).collect();
        let mut labels: Vec<&str> = Vec::new();
        for r in &mine {
            if !labels.contains(&r.label.as_str()) {
                labels.push(&r.label);
            }
        }
        type Get = fn(&BenchRow) -> f64;
        let specs: [(&str, &str, Get); 3] = [
            ("Decode speed", "decode tokens/s", |r| r.decode_tokens_per_s),
            ("Prefill speed", "prefill tokens/s", |r| r.prefill_tokens_per_s),
            ("Peak memory", "peak RSS (MiB)", |r| mib(r.peak_rss_bytes)),
        ];
        o.push_str(&format!("<h3>{}</h3><div class=\"grid3\">", html_escape(model)));
        for (i, (title, ylabel, get)) in specs.iter().enumerate() {
            let mut chart = XyChart::new(format!("{title} — {model}"), Axis::linear("context (tokens)"), Axis { zero: true, ..Axis::linear(*ylabel) });
            chart.width = 440.0;
            chart.height = 340.0;
            chart.legend_below = true;
            for (k, label) in labels.iter().enumerate() {
                let mut s = Series::new(*label, COLORS[k % COLORS.len()], Marker::ALL[k % Marker::ALL.len()]);
                s.line = true;
                let mut pts: Vec<&&BenchRow> = mine.iter().filter(|r| r.label == *label).collect();
                pts.sort_by_key(|r| r.context_tokens);
                for r in pts {
                    let y = get(r);
                    s.points.push(Point { x: r.context_tokens as f64, y, tip: format!("{label}: {} tokens, {}", r.context_tokens, fixed(y, 2)), label: None });
                }
                chart.series.push(s);
            }
            if i == 0 {
                if let Some(full) = labels.iter().find(|l| l.starts_with("full")) {
                    let mut s = Series::new(format!("{full} ceiling (estimate)"), "#9ca3af", Marker::Cross);
                    s.line = true;
                    s.dashed = true;
                    s.size = 0.0;
                    let mut pts: Vec<&&BenchRow> = mine.iter().filter(|r| r.label == *full).collect();
                    pts.sort_by_key(|r| r.context_tokens);
                    for r in pts {
                        s.points.push(Point {
                            x: r.context_tokens as f64,
                            y: r.decode_ceiling_tokens_per_s,
                            tip: format!("ceiling at {} tokens: {}", r.context_tokens, fixed(r.decode_ceiling_tokens_per_s, 1)),
                            label: None,
                        });
                    }
                    chart.series.push(s);
                }
            }
            o.push_str(&format!("<div class=\"card\">{}</div>", chart.render()));
        }
        o.push_str("</div>");
        o.push_str("<div class=\"tablewrap\"><table class=\"lb\"><thead><tr><th>method</th><th class=\"num\">context</th><th class=\"num\">prefill tok/s</th><th class=\"num\">% ceil</th><th class=\"num\">TTFT s</th><th class=\"num\">decode tok/s</th><th class=\"num\">% ceil</th><th class=\"num\">KV held MiB</th><th class=\"num\">KV attended MiB</th><th class=\"num\">peak RSS MiB</th></tr></thead><tbody>");
        for r in &mine {
            o.push_str(&format!(
                "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}%</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}%</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                html_escape(&r.label),
                r.context_tokens,
                fixed(r.prefill_tokens_per_s, 1),
                fixed(r.prefill_pct_of_ceiling, 0),
                fixed(r.ttft_seconds, 3),
                fixed(r.decode_tokens_per_s, 2),
                fixed(r.decode_pct_of_ceiling, 0),
                fixed(mib(r.kv_bytes_held), 1),
                fixed(mib(r.kv_bytes_attended), 1),
                fixed(mib(r.peak_rss_bytes), 0),
            ));
        }
        o.push_str("</tbody></table></div>");
    }
    o
}
