//! The SVG charts of index.html (quality vs. compression, needle heatmaps, speed and memory
//! against context length), drawn with `svg.rs` from the leaderboard and the records, and
//! handed to the templates as safe values.

use std::collections::BTreeMap;

use minijinja::Value;
use serde::Serialize;

use super::Palette;
use crate::format::{budget_label, fixed, thousands};
use crate::leaderboard::{Leaderboard, LeaderboardRow};
use crate::load::Cell;
use crate::record::SampleRecord;
use crate::svg::{Axis, Heatmap, Marker, Point, RefLine, Series, TickFormat, XyChart};

/// One (model, task) of needle cells: its heatmaps, or none without length/depth metadata.
#[derive(Serialize)]
pub(super) struct NeedleGroup {
    task: String,
    model: String,
    grid: Option<NeedleGrid>,
}

#[derive(Serialize)]
pub(super) struct NeedleGrid {
    /// The metadata keys the grid is drawn from.
    length_key: &'static str,
    depth_key: &'static str,
    /// SVG, one per leaderboard row.
    heatmaps: Vec<Value>,
}

/// A model's speed and memory charts (SVG).
#[derive(Serialize)]
pub(super) struct SpeedCharts {
    model: String,
    charts: Vec<Value>,
}

/// Per model, the average score against the measured compression ratio (an SVG each).
pub(super) fn quality_charts(lb: &Leaderboard, palette: &Palette) -> Vec<Value> {
    let mut out = Vec::new();
    for model in lb.models() {
        let rows: Vec<&LeaderboardRow> = lb.rows.iter().filter(|r| r.model == model).collect();
        let mut chart = XyChart::new(
            format!("Quality vs. compression — {model}"),
            Axis {
                label: "measured compression ratio (full-cache bytes / held bytes), log scale".into(),
                log: true,
                zero: false,
                format: TickFormat::Ratio,
                limit: None,
            },
            Axis { limit: Some((0.0, 100.0)), ..Axis::linear("average score (0–100)") },
        );
        chart.subtitle = Some("one line per method family; labels give the budget or variant".into());
        let mut families: Vec<String> = Vec::new();
        for r in &rows {
            if !families.contains(&r.method) {
                families.push(r.method.clone());
            }
        }
        for fam in &families {
            let members: Vec<&&LeaderboardRow> = rows.iter().filter(|r| &r.method == fam).collect();
            let first = members[0];
            let name = if first.is_full() { "full cache".to_string() } else { fam.clone() };
            let mut s = Series::new(name, palette.color(first), if first.is_full() { Marker::Diamond } else { Marker::Circle });
            s.line = true;
            s.size = 5.0;
            for r in &members {
                let (Some(x), Some(y)) = (r.compression_ratio, r.average) else { continue };
                if x <= 0.0 {
                    continue;
                }
                let label = if r.is_full() {
                    None
                } else if r.ratio.is_some() {
                    Some(budget_label(r.ratio))
                } else if r.method_label != r.method {
                    Some(r.method_label.clone())
                } else {
                    None
                };
                s.points.push(Point { x, y, tip: format!("{}: average {}, measured ratio {}×", r.display_name(), fixed(y, 1), fixed(x, 2)), label });
            }
            if first.is_full() {
                if let Some(avg) = first.average {
                    chart.reference.push(RefLine { y: avg, label: format!("full cache ({})", fixed(avg, 1)), color: "#8a91a0".into() });
                }
            }
            chart.series.push(s);
        }
        out.push(Value::from_safe_string(chart.render()));
    }
    out
}

const LENGTH_KEYS: [&str; 8] =
    ["length", "context_length", "words", "background_len_words", "context_length_tokens", "context_length_words", "length_words", "length_tokens"];
const DEPTH_KEYS: [&str; 4] = ["depth", "depth_percent", "depth_fraction", "needle_depth"];

fn length_unit(key: &str, task: &str) -> &'static str {
    if key.contains("word") {
        " (words)"
    } else if key.contains("token") {
        " (tokens)"
    } else if task.starts_with("passkey") && key == "length" {
        " (words)"
    } else {
        ""
    }
}

/// (model, method label, ratio bits): one leaderboard row.
type RowKey = (String, String, Option<u64>);

fn row_key(c: &Cell) -> RowKey {
    (c.info.model.clone(), c.info.method_label.clone(), c.info.ratio.map(f64::to_bits))
}

/// Per (model, task) of the needle cells, the heatmaps of its rows (in leaderboard order); none
/// where the records carry no length/depth metadata.
pub(super) fn needle_groups(cells: &[Cell], lb: &Leaderboard) -> Vec<NeedleGroup> {
    // (model, task) -> row key -> cells
    type ByRow<'a> = BTreeMap<RowKey, Vec<&'a Cell>>;
    let mut groups: BTreeMap<(String, String), ByRow> = BTreeMap::new();
    for c in cells.iter().filter(|c| c.info.is_needle()) {
        groups.entry((c.info.model.clone(), c.info.task.clone())).or_default().entry(row_key(c)).or_default().push(c);
    }
    let mut out = Vec::new();
    for ((model, task), by_row) in &groups {
        let all: Vec<&SampleRecord> = by_row.values().flatten().flat_map(|c| c.records.iter()).collect();
        let lkey = LENGTH_KEYS.iter().find(|k| all.iter().any(|r| r.meta_f64(k).is_some()));
        let dkey = DEPTH_KEYS.iter().find(|k| all.iter().any(|r| r.meta_f64(k).is_some()));
        let (Some(lkey), Some(dkey)) = (lkey, dkey) else {
            out.push(NeedleGroup { task: task.clone(), model: model.clone(), grid: None });
            continue;
        };
        let percent = dkey.contains("percent") || all.iter().any(|r| r.meta_f64(dkey).is_some_and(|d| d > 1.0));
        let mut lengths: Vec<f64> = all.iter().filter_map(|r| r.meta_f64(lkey)).collect();
        let mut depths: Vec<f64> = all.iter().filter_map(|r| r.meta_f64(dkey)).collect();
        lengths.sort_by(f64::total_cmp);
        lengths.dedup();
        depths.sort_by(f64::total_cmp);
        depths.dedup();
        let unit = length_unit(lkey, task);
        let len_text = |v: f64| if v.fract() == 0.0 && v >= 0.0 { thousands(v as u64) } else { fixed(v, 1) };
        let depth_text = |d: f64| {
            let p = if percent { d } else { d * 100.0 };
            format!("{}%", fixed(p, 0))
        };
        let mut heatmaps = Vec::new();
        // rows in leaderboard order
        let mut keys: Vec<&RowKey> = by_row.keys().collect();
        let pos = |k: &RowKey| lb.rows.iter().position(|r| r.model == k.0 && r.method_label == k.1 && r.ratio.map(f64::to_bits) == k.2).unwrap_or(usize::MAX);
        keys.sort_by_key(|k| pos(k));
        for k in keys {
            let recs: Vec<&SampleRecord> = by_row[k].iter().flat_map(|c| c.records.iter()).collect();
            let mut values = Vec::new();
            let mut tips = Vec::new();
            for &d in &depths {
                let mut vrow = Vec::new();
                let mut trow = Vec::new();
                for &l in &lengths {
                    let s: Vec<f64> = recs.iter().filter(|r| r.meta_f64(lkey) == Some(l) && r.meta_f64(dkey) == Some(d)).map(|r| r.score).collect();
                    let m = (!s.is_empty()).then(|| s.iter().sum::<f64>() / s.len() as f64);
                    trow.push(match m {
                        Some(m) => format!("{}{}, depth {}: mean {} over {} sample(s)", len_text(l), unit, depth_text(d), fixed(m, 1), s.len()),
                        None => format!("{}{}, depth {}: no samples", len_text(l), unit, depth_text(d)),
                    });
                    vrow.push(m);
                }
                values.push(vrow);
                tips.push(trow);
            }
            let overall = if recs.is_empty() { 0.0 } else { recs.iter().map(|r| r.score).sum::<f64>() / recs.len() as f64 };
            let name = match k.2 {
                Some(bits) => format!("{} {}", k.1, budget_label(Some(f64::from_bits(bits)))),
                None => k.1.clone(),
            };
            let hm = Heatmap {
                title: name,
                subtitle: Some(format!("mean {} over {} samples", fixed(overall, 1), recs.len())),
                x_label: format!("context length{unit}"),
                y_label: "needle depth".into(),
                x_ticks: lengths.iter().map(|&l| len_text(l)).collect(),
                y_ticks: depths.iter().map(|&d| depth_text(d)).collect(),
                values,
                tips,
            };
            heatmaps.push(Value::from_safe_string(hm.render()));
        }
        let grid = NeedleGrid { length_key: lkey, depth_key: dkey, heatmaps };
        out.push(NeedleGroup { task: task.clone(), model: model.clone(), grid: Some(grid) });
    }
    out
}

/// Markers per series of the speed and memory charts before they are binned (a grid of
/// hundreds of cells would otherwise put tens of thousands of markers in `index.html`).
const MAX_POINTS_PER_SERIES: usize = 96;

/// At most `max` points per series: beyond that, the points are averaged in equal-width x bins.
fn thin(points: Vec<(f64, f64)>, max: usize) -> Vec<(f64, f64, usize)> {
    if points.len() <= max {
        return points.into_iter().map(|(x, y)| (x, y, 1)).collect();
    }
    let lo = points.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let hi = points.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let bins = max / 4;
    let mut acc = vec![(0.0, 0.0, 0usize); bins.max(1)];
    for (x, y) in points {
        let i = if hi > lo { (((x - lo) / (hi - lo)) * bins as f64) as usize } else { 0 };
        let a = &mut acc[i.min(bins.max(1) - 1)];
        a.0 += x;
        a.1 += y;
        a.2 += 1;
    }
    acc.into_iter().filter(|a| a.2 > 0).map(|(x, y, n)| (x / n as f64, y / n as f64, n)).collect()
}

/// Per model, decode speed, peak memory and KV held against the prompt length (an SVG each).
pub(super) fn speed_charts(cells: &[Cell], lb: &Leaderboard, palette: &Palette) -> Vec<SpeedCharts> {
    let mut out = Vec::new();
    for model in lb.models() {
        let rows: Vec<&LeaderboardRow> = lb.rows.iter().filter(|r| r.model == model).collect();
        let cells_of = |r: &LeaderboardRow| -> Vec<&Cell> {
            let mut cs: Vec<&Cell> =
                cells.iter().filter(|c| c.info.model == r.model && c.info.method_label == r.method_label && c.info.ratio == r.ratio).collect();
            cs.sort_by(|a, b| a.info.id.cmp(&b.info.id));
            cs
        };
        let records_of = |r: &LeaderboardRow| -> Vec<&SampleRecord> { cells_of(r).into_iter().flat_map(|c| c.records.iter()).collect() };
        // Time and memory, as in the leaderboard: from the samples run alone (`--measure`) when
        // every cell of the row has them, so a shared run's timings do not reach the charts.
        let timed_of = |r: &LeaderboardRow| -> Vec<&SampleRecord> {
            let cs = cells_of(r);
            if !cs.is_empty() && cs.iter().all(|c| !c.measurements.is_empty()) {
                cs.into_iter().flat_map(|c| c.measurements.iter()).collect()
            } else {
                cs.into_iter().flat_map(|c| c.records.iter()).collect()
            }
        };
        let measured = rows.iter().any(|r| {
            let cs = cells_of(r);
            !cs.is_empty() && cs.iter().all(|c| !c.measurements.is_empty())
        });
        let max_peak = rows.iter().filter_map(|r| r.peak_memory_bytes).max().unwrap_or(0) as f64;
        let max_kv = cells.iter().filter(|c| c.info.model == model).flat_map(|c| c.records.iter().map(|r| r.kv_bytes_held)).max().unwrap_or(0) as f64;
        let unit = |max: f64| if max >= 1024f64.powi(3) { ("GiB", 1024f64.powi(3)) } else { ("MiB", 1024f64.powi(2)) };
        let (peak_unit, peak_div) = unit(max_peak);
        let (kv_unit, kv_div) = unit(max_kv);
        type Get = fn(&SampleRecord) -> Option<f64>;
        // (title, y label, value, divisor, is a time or memory figure)
        let specs: [(String, String, Get, f64, bool); 3] = [
            (
                format!("Decode speed vs. context — {model}"),
                "decode tokens/s".to_string(),
                (|r: &SampleRecord| (r.generated_tokens > 1).then_some(r.decode_tokens_per_s)) as Get,
                1.0,
                true,
            ),
            (
                format!("Peak memory vs. context — {model}"),
                format!("peak memory ({peak_unit})"),
                (|r: &SampleRecord| Some(r.peak_memory_bytes as f64)) as Get,
                peak_div,
                true,
            ),
            (
                format!("KV cache held vs. context — {model}"),
                format!("KV cache held ({kv_unit})"),
                (|r: &SampleRecord| Some(r.kv_bytes_held as f64)) as Get,
                kv_div,
                false,
            ),
        ];
        let mut charts = Vec::new();
        for (title, ylabel, get, div, timed) in specs {
            let mut chart = XyChart::new(title, Axis::linear("input tokens (prompt length)"), Axis { zero: true, ..Axis::linear(ylabel) });
            chart.subtitle = Some(if timed && measured {
                "one marker per sample run alone (kvbench run --measure)".into()
            } else {
                format!("one marker per sample (averaged in {} bins when dense)", MAX_POINTS_PER_SERIES / 4)
            });
            chart.width = 440.0;
            chart.height = 340.0;
            chart.legend_below = true;
            for r in &rows {
                let source = if timed { timed_of(r) } else { records_of(r) };
                let pts: Vec<(f64, f64)> = source.iter().filter_map(|rec| get(rec).map(|y| (rec.input_tokens as f64, y / div))).collect();
                let mut s = Series::new(r.display_name(), palette.color(r), palette.marker(r));
                s.opacity = 0.8;
                s.size = 4.0;
                for (x, y, n) in thin(pts, MAX_POINTS_PER_SERIES) {
                    s.points.push(Point {
                        x,
                        y,
                        tip: format!(
                            "{}: {} input tokens, {}{}",
                            r.display_name(),
                            fixed(x, 0),
                            fixed(y, 2),
                            if n > 1 { format!(" (mean of {n})") } else { String::new() }
                        ),
                        label: None,
                    });
                }
                chart.series.push(s);
            }
            charts.push(Value::from_safe_string(chart.render()));
        }
        out.push(SpeedCharts { model, charts });
    }
    out
}
