//! Speed and memory from `kvbench bench` files (`bench.json`) in the report: one chart per figure
//! (decode and prefill tokens/s, peak memory) against context length, a line per method, with
//! the decode ceiling of the full cache as a dashed line, and the table of every measurement.

use crate::format::{fixed, html_escape};
use crate::svg::{Axis, Marker, Point, Series, XyChart};
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

#[derive(Deserialize)]
struct BenchFile {
    rows: Vec<BenchRow>,
}

/// Why a bench file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", .path.display())]
pub struct BenchError {
    pub path: PathBuf,
    pub problem: String,
}

/// Reads `path` (a `bench.json`, or a directory holding one).
pub fn load_bench(path: &Path) -> Result<Vec<BenchRow>, BenchError> {
    let file = if path.is_dir() { path.join("bench.json") } else { path.to_path_buf() };
    let text = std::fs::read_to_string(&file).map_err(|e| BenchError { path: file.clone(), problem: e.to_string() })?;
    let parsed: BenchFile = serde_json::from_str(&text).map_err(|e| BenchError { path: file.clone(), problem: format!("not a kvbench bench file ({e})") })?;
    Ok(parsed.rows)
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
