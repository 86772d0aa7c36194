//! `index.html`: the one-page, self-contained report a person reads first (inline CSS and SVG,
//! no scripts, no external resources): provenance, the leaderboard tables, quality vs.
//! compression, needle heatmaps, and speed/memory against context length. All inserted text is
//! escaped.

use std::collections::BTreeMap;

use crate::format::{budget_label, fixed, html_escape, human_bytes, thousands};
use crate::leaderboard::{CategoryStat, Leaderboard, LeaderboardRow};
use crate::load::Cell;
use crate::record::{RunInfo, SampleRecord};
use crate::svg::{score_color, Axis, Heatmap, Marker, Point, RefLine, Series, TickFormat, XyChart};

/// Shared stylesheet of index.html and examples.html.
pub const CSS: &str = r#"
:root { --fg:#1d2330; --muted:#5b6475; --line:#e3e6ec; --bg:#f6f7f9; --card:#fff; --accent:#3358c4; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1360px; margin: 0 auto; padding: 0 24px 48px; }
header.top { background: #1d2330; color: #fff; padding: 28px 0 22px; margin-bottom: 8px; }
header.top .inner { max-width: 1360px; margin: 0 auto; padding: 0 24px; }
header.top h1 { margin: 0 0 4px; font-size: 28px; letter-spacing: -0.01em; }
header.top .kicker { color: #9fb0d8; font-size: 13px; text-transform: uppercase; letter-spacing: .08em; }
dl.prov { display: grid; grid-template-columns: repeat(auto-fill, minmax(230px, 1fr)); gap: 6px 28px; margin: 16px 0 0; }
dl.prov div { min-width: 0; }
dl.prov dt { color: #9fb0d8; font-size: 12px; text-transform: uppercase; letter-spacing: .06em; }
dl.prov dd { margin: 0; font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px;
  overflow-wrap: anywhere; }
nav.toc { display: flex; flex-wrap: wrap; gap: 6px 18px; margin: 16px 0 0; font-size: 14px; }
nav.toc a { color: #cdd8f6; text-decoration: none; border-bottom: 1px solid #4b5a80; }
nav.toc a:hover { color: #fff; }
h2 { font-size: 21px; margin: 34px 0 6px; padding-bottom: 6px; border-bottom: 2px solid var(--line); }
h3 { font-size: 16px; margin: 22px 0 8px; }
p.lead, p.note { color: var(--muted); margin: 4px 0 12px; max-width: 980px; }
p.note { font-size: 13px; }
.stats { display: flex; flex-wrap: wrap; gap: 12px; margin: 18px 0 4px; }
.stat { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 10px 16px; min-width: 120px; }
.stat b { display: block; font-size: 22px; }
.stat span { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .05em; }
.warn { background: #fff6e0; border: 1px solid #f0d48a; border-radius: 8px; padding: 8px 14px; margin: 12px 0; font-size: 14px; }
.tablewrap { overflow-x: auto; background: var(--card); border: 1px solid var(--line); border-radius: 8px; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--line); white-space: nowrap; }
thead th { background: #eef1f6; font-weight: 600; text-align: left; font-size: 13px; }
thead tr.group th { background: #e3e8f1; text-align: center; font-size: 12px; text-transform: uppercase;
  letter-spacing: .05em; color: var(--muted); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td .ci { color: var(--muted); font-size: 12px; margin-left: 3px; }
td.avg { font-weight: 600; }
tr.full td { background: #f4f6fb; font-weight: 600; }
tr.full td .ci { font-weight: 400; }
tbody tr:last-child td { border-bottom: none; }
td.sep, th.sep { border-left: 2px solid var(--line); }
.dot { display: inline-block; width: 10px; height: 10px; border-radius: 50%; margin-right: 7px; vertical-align: 0; }
.grid2 { display: grid; grid-template-columns: repeat(auto-fill, minmax(600px, 1fr)); gap: 16px; }
.grid3 { display: grid; grid-template-columns: repeat(auto-fill, minmax(400px, 1fr)); gap: 16px; }
.heats { display: flex; flex-wrap: wrap; gap: 14px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 6px; overflow-x: auto; }
svg.chart { display: block; width: 100%; height: auto; font-family: inherit; }
svg.chart.heat { width: auto; max-width: 100%; }
svg .c-title { font-size: 15px; font-weight: 650; fill: var(--fg); }
svg .c-sub { font-size: 12px; fill: var(--muted); }
svg .c-tick { font-size: 11px; fill: #4a5162; }
svg .c-label { font-size: 12.5px; fill: #2d3446; }
svg .c-legend { font-size: 12px; fill: #2d3446; }
svg .c-plabel { font-size: 10.5px; fill: #4a5162; }
svg .c-cell { font-size: 10.5px; fill: #1d2330; }
svg .c-grid { stroke: #eceef2; stroke-width: 1; }
svg .c-axis { stroke: #8a91a0; stroke-width: 1; fill: none; }
details { margin: 10px 0; }
summary { cursor: pointer; color: var(--accent); }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px; }
footer { color: var(--muted); font-size: 13px; margin-top: 40px; border-top: 1px solid var(--line); padding-top: 12px; }
a { color: var(--accent); }
.sample { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px; margin: 12px 0; }
.sample h4 { margin: 0 0 6px; font-size: 15px; }
.sample h4 .note { font-weight: 400; margin-left: 6px; }
.answers { margin: 0 0 10px; }
.chip { display: inline-block; background: #e8f3ea; border: 1px solid #bfdcc5; border-radius: 12px; padding: 1px 10px;
  margin: 2px 4px 2px 0; font-size: 13px; white-space: pre-wrap; }
td.pred { white-space: pre-wrap; overflow-wrap: anywhere; width: 100%; min-width: 320px; }
tr.full td.pred { font-weight: 400; }
td.pred .after { color: #7a8192; }
mark { background: #ffd86b; padding: 0 2px; border-radius: 3px; }
.badge { display: inline-block; font-size: 12px; border-radius: 10px; padding: 0 8px; white-space: nowrap; }
.badge.same { background: #e8f3ea; color: #22633a; }
.badge.diff { background: #fdeaea; color: #9b2c2c; }
.predbox { max-height: 260px; overflow-y: auto; display: block; }
"#;

/// A whole HTML document with the shared stylesheet.
pub fn page(title: &str, header: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{}</style>\n</head>\n<body>\n{}\n<main>\n{}\n</main>\n</body>\n</html>\n",
        html_escape(title),
        CSS,
        header,
        body
    )
}

/// Colours and marker shapes per method family, the same in every chart and table.
#[derive(Clone, Debug)]
pub struct Palette {
    families: BTreeMap<String, String>,
    markers: BTreeMap<(String, String, Option<u64>), Marker>,
}

const COLORS: [&str; 10] =
    ["#3366cc", "#e8743b", "#19a979", "#d64550", "#945ecf", "#13a4b4", "#b6992d", "#bf399e", "#6c8893", "#ed4a7b"];
const FULL_COLOR: &str = "#1d2330";

impl Palette {
    pub fn new(rows: &[LeaderboardRow]) -> Palette {
        let mut names: Vec<&str> = rows.iter().filter(|r| !r.is_full()).map(|r| r.method.as_str()).collect();
        names.sort();
        names.dedup();
        let families =
            names.iter().enumerate().map(|(i, n)| (n.to_string(), COLORS[i % COLORS.len()].to_string())).collect();
        let mut variants: BTreeMap<&str, Vec<&LeaderboardRow>> = BTreeMap::new();
        for r in rows {
            let v = variants.entry(r.method.as_str()).or_default();
            if !v.iter().any(|x| x.method_label == r.method_label && x.ratio == r.ratio) {
                v.push(r);
            }
        }
        let mut markers = BTreeMap::new();
        for v in variants.values_mut() {
            v.sort_by(|a, b| crate::leaderboard::row_order(a, b).then_with(|| a.model.cmp(&b.model)));
            let mut i = 0;
            for r in v.iter() {
                let key = (r.method.clone(), r.method_label.clone(), r.ratio.map(f64::to_bits));
                markers.entry(key).or_insert_with(|| {
                    let m = Marker::ALL[i % Marker::ALL.len()];
                    i += 1;
                    m
                });
            }
        }
        Palette { families, markers }
    }

    pub fn color(&self, row: &LeaderboardRow) -> String {
        if row.is_full() {
            return FULL_COLOR.into();
        }
        self.families.get(&row.method).cloned().unwrap_or_else(|| "#888888".into())
    }

    pub fn marker(&self, row: &LeaderboardRow) -> Marker {
        self.markers
            .get(&(row.method.clone(), row.method_label.clone(), row.ratio.map(f64::to_bits)))
            .copied()
            .unwrap_or(Marker::Circle)
    }
}

/// Distinct values of a provenance field over the runs, in first-seen order, joined.
fn distinct(runs: &[RunInfo], get: impl Fn(&RunInfo) -> String) -> String {
    let mut vals: Vec<String> = Vec::new();
    for r in runs {
        for v in get(r).split(" + ") {
            if !vals.iter().any(|x| x == v) {
                vals.push(v.to_string());
            }
        }
    }
    vals.sort();
    if vals.is_empty() {
        "–".into()
    } else {
        vals.join(" + ")
    }
}

fn short_hash(h: &str) -> String {
    h.chars().take(12).collect()
}

fn header_html(runs: &[RunInfo], title: &str, kicker: &str, nav: &[(&str, &str)]) -> String {
    let experiment = distinct(runs, |r| r.experiment.clone());
    let mut models: BTreeMap<String, String> = BTreeMap::new();
    let mut data: BTreeMap<String, String> = BTreeMap::new();
    for r in runs {
        models.extend(r.model_hashes.iter().map(|(k, v)| (k.clone(), v.clone())));
        data.extend(r.data_hashes.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    let fields: Vec<(&str, String, String)> = vec![
        ("commit", distinct(runs, |r| r.git_commit.clone()), String::new()),
        ("device", distinct(runs, |r| r.device.clone()), String::new()),
        ("threads", distinct(runs, |r| r.threads.to_string()), String::new()),
        ("libtorch", distinct(runs, |r| r.libtorch_version.clone()), String::new()),
        ("kvbench", distinct(runs, |r| r.kvbench_version.clone()), String::new()),
        ("config sha256", distinct(runs, |r| short_hash(&r.config_hash)), distinct(runs, |r| r.config_hash.clone())),
        (
            "models",
            if models.is_empty() {
                "–".into()
            } else {
                models.iter().map(|(k, v)| format!("{k} ({})", short_hash(v))).collect::<Vec<_>>().join(", ")
            },
            models.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join("\n"),
        ),
        (
            "data",
            if data.is_empty() {
                "–".into()
            } else {
                data.iter().map(|(k, v)| format!("{k} ({})", short_hash(v))).collect::<Vec<_>>().join(", ")
            },
            data.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join("\n"),
        ),
    ];
    let mut o = String::new();
    o.push_str("<header class=\"top\"><div class=\"inner\">");
    o.push_str(&format!("<div class=\"kicker\">{}</div>", html_escape(kicker)));
    o.push_str(&format!("<h1>{}</h1>", html_escape(if title.is_empty() { &experiment } else { title })));
    o.push_str("<dl class=\"prov\">");
    for (k, v, tip) in fields {
        if tip.is_empty() {
            o.push_str(&format!("<div><dt>{}</dt><dd>{}</dd></div>", html_escape(k), html_escape(&v)));
        } else {
            o.push_str(&format!(
                "<div><dt>{}</dt><dd title=\"{}\">{}</dd></div>",
                html_escape(k),
                html_escape(&tip),
                html_escape(&v)
            ));
        }
    }
    o.push_str("</dl>");
    if !nav.is_empty() {
        o.push_str("<nav class=\"toc\">");
        for (href, text) in nav {
            o.push_str(&format!("<a href=\"{}\">{}</a>", html_escape(href), html_escape(text)));
        }
        o.push_str("</nav>");
    }
    o.push_str("</div></header>");
    o
}

/// The report's page header (experiment and provenance), shared with examples.html.
pub fn report_header(runs: &[RunInfo], kicker: &str, nav: &[(&str, &str)]) -> String {
    header_html(runs, "", kicker, nav)
}

fn tint(delta: f64) -> String {
    if delta.abs() < 0.05 {
        return String::new();
    }
    let a = (delta.abs() / 20.0).min(1.0) * 0.32 + 0.04;
    let rgb = if delta < 0.0 { "215,48,39" } else { "26,152,80" };
    format!(" style=\"background:rgba({rgb},{})\"", fixed(a, 3))
}

fn leaderboard_tables(lb: &Leaderboard, palette: &Palette) -> String {
    let mut o = String::new();
    for model in lb.models() {
        let cats = lb.categories_of(&model);
        let rows: Vec<&LeaderboardRow> = lb.rows.iter().filter(|r| r.model == model).collect();
        let full = rows.iter().find(|r| r.is_full()).copied();
        let attended_differs = rows.iter().any(|r| r.kv_bytes_attended != r.kv_bytes_held);
        let cost_cols: &[&str] = if attended_differs {
            &["ratio", "KV held", "KV attended", "peak memory", "prefill tok/s", "decode tok/s"]
        } else {
            &["ratio", "KV held", "peak memory", "prefill tok/s", "decode tok/s"]
        };
        o.push_str(&format!("<h3>{}</h3>", html_escape(&model)));
        o.push_str("<div class=\"tablewrap\"><table class=\"lb\"><thead>");
        o.push_str(&format!(
            "<tr class=\"group\"><th colspan=\"2\"></th><th colspan=\"{}\" class=\"sep\">score (0–100), mean ± 95% CI</th>\
             <th colspan=\"{}\" class=\"sep\">measured cost</th></tr>",
            cats.len() + 1,
            cost_cols.len()
        ));
        o.push_str("<tr><th>method</th><th class=\"num\">budget</th>");
        for (i, c) in cats.iter().enumerate() {
            o.push_str(&format!("<th class=\"num{}\">{}</th>", if i == 0 { " sep" } else { "" }, html_escape(c)));
        }
        o.push_str(&format!("<th class=\"num{}\">average</th>", if cats.is_empty() { " sep" } else { "" }));
        for (i, h) in cost_cols.iter().enumerate() {
            o.push_str(&format!("<th class=\"num{}\">{}</th>", if i == 0 { " sep" } else { "" }, h));
        }
        o.push_str("</tr></thead><tbody>");
        for r in &rows {
            o.push_str(&format!("<tr{}>", if r.is_full() { " class=\"full\"" } else { "" }));
            let incomplete = if r.incomplete_cells > 0 {
                format!(" <span title=\"{} incomplete cell(s)\">†</span>", r.incomplete_cells)
            } else {
                String::new()
            };
            o.push_str(&format!(
                "<td><span class=\"dot\" style=\"background:{}\"></span>{}{}</td><td class=\"num\">{}</td>",
                palette.color(r),
                html_escape(&r.method_label),
                incomplete,
                html_escape(&budget_label(r.ratio))
            ));
            for (i, c) in cats.iter().enumerate() {
                let sep = if i == 0 { " sep" } else { "" };
                match r.categories.get(c) {
                    Some(s) => {
                        let style = match full.and_then(|f| f.categories.get(c)) {
                            Some(fs) if !r.is_full() => tint(s.mean - fs.mean),
                            _ => String::new(),
                        };
                        o.push_str(&format!(
                            "<td class=\"num{sep}\"{style} title=\"{} records in {} cell(s)\">{}</td>",
                            s.records,
                            s.cells,
                            score_html(s)
                        ));
                    }
                    None => o.push_str(&format!("<td class=\"num{sep}\">–</td>")),
                }
            }
            let avg_style = match (r.average, full.and_then(|f| f.average)) {
                (Some(a), Some(fa)) if !r.is_full() => tint(a - fa),
                _ => String::new(),
            };
            o.push_str(&format!(
                "<td class=\"num avg{}\"{}>{}</td>",
                if cats.is_empty() { " sep" } else { "" },
                avg_style,
                r.average.map(|v| fixed(v, 1)).unwrap_or_else(|| "–".into())
            ));
            let attended = if attended_differs {
                format!(
                    "<td class=\"num\" title=\"{}\">{}</td>",
                    r.kv_bytes_attended.map(|v| format!("{} bytes read by the last decoding step", fixed(v, 0))).unwrap_or_default(),
                    r.kv_bytes_attended.map(human_bytes).unwrap_or_else(|| "–".into())
                )
            } else {
                String::new()
            };
            o.push_str(&format!(
                "<td class=\"num sep\">{}</td><td class=\"num\" title=\"{}\">{}</td>{}<td class=\"num\" title=\"{}\">{}</td>\
                 <td class=\"num\">{}</td><td class=\"num\">{}</td>",
                r.compression_ratio.map(|v| format!("{}×", fixed(v, 2))).unwrap_or_else(|| "–".into()),
                r.kv_bytes_held.map(|v| format!("{} bytes", fixed(v, 0))).unwrap_or_default(),
                r.kv_bytes_held.map(human_bytes).unwrap_or_else(|| "–".into()),
                attended,
                r.peak_memory_bytes.map(|v| format!("{v} bytes")).unwrap_or_default(),
                r.peak_memory_bytes.map(|v| human_bytes(v as f64)).unwrap_or_else(|| "–".into()),
                r.prefill_tokens_per_s.map(|v| fixed(v, 1)).unwrap_or_else(|| "–".into()),
                r.decode_tokens_per_s.map(|v| fixed(v, 1)).unwrap_or_else(|| "–".into()),
            ));
            o.push_str("</tr>");
        }
        o.push_str("</tbody></table></div>");
    }
    o
}

fn quality_charts(lb: &Leaderboard, palette: &Palette) -> Vec<String> {
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
            let mut s =
                Series::new(name, palette.color(first), if first.is_full() { Marker::Diamond } else { Marker::Circle });
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
                s.points.push(Point {
                    x,
                    y,
                    tip: format!("{}: average {}, measured ratio {}×", r.display_name(), fixed(y, 1), fixed(x, 2)),
                    label,
                });
            }
            if first.is_full() {
                if let Some(avg) = first.average {
                    chart.reference.push(RefLine {
                        y: avg,
                        label: format!("full cache ({})", fixed(avg, 1)),
                        color: "#8a91a0".into(),
                    });
                }
            }
            chart.series.push(s);
        }
        out.push(chart.render());
    }
    out
}

const LENGTH_KEYS: [&str; 8] = [
    "length",
    "context_length",
    "words",
    "background_len_words",
    "context_length_tokens",
    "context_length_words",
    "length_words",
    "length_tokens",
];
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

fn needle_section(cells: &[Cell], lb: &Leaderboard) -> String {
    // (model, task) -> row key -> cells
    type ByRow<'a> = BTreeMap<RowKey, Vec<&'a Cell>>;
    let mut groups: BTreeMap<(String, String), ByRow> = BTreeMap::new();
    for c in cells.iter().filter(|c| c.info.is_needle()) {
        groups.entry((c.info.model.clone(), c.info.task.clone())).or_default().entry(row_key(c)).or_default().push(c);
    }
    if groups.is_empty() {
        return "<p class=\"note\">No needle-in-a-haystack cells in this run.</p>".into();
    }
    let mut o = String::new();
    for ((model, task), by_row) in &groups {
        let all: Vec<&SampleRecord> = by_row.values().flatten().flat_map(|c| c.records.iter()).collect();
        let lkey = LENGTH_KEYS.iter().find(|k| all.iter().any(|r| r.meta_f64(k).is_some()));
        let dkey = DEPTH_KEYS.iter().find(|k| all.iter().any(|r| r.meta_f64(k).is_some()));
        o.push_str(&format!("<h3>{} · {}</h3>", html_escape(task), html_escape(model)));
        let (Some(lkey), Some(dkey)) = (lkey, dkey) else {
            o.push_str("<p class=\"note\">These records carry no length/depth metadata to place them on a grid.</p>");
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
        o.push_str(&format!(
            "<p class=\"note\">Mean score per cell of context length (<code>{}</code>) × needle depth (<code>{}</code>, 0% = start of the context); hover a cell for its sample count.</p>",
            html_escape(lkey),
            html_escape(dkey)
        ));
        o.push_str("<div class=\"heats\">");
        // rows in leaderboard order
        let mut keys: Vec<&RowKey> = by_row.keys().collect();
        let pos = |k: &RowKey| {
            lb.rows
                .iter()
                .position(|r| r.model == k.0 && r.method_label == k.1 && r.ratio.map(f64::to_bits) == k.2)
                .unwrap_or(usize::MAX)
        };
        keys.sort_by_key(|k| pos(k));
        for k in keys {
            let recs: Vec<&SampleRecord> = by_row[k].iter().flat_map(|c| c.records.iter()).collect();
            let mut values = Vec::new();
            let mut tips = Vec::new();
            for &d in &depths {
                let mut vrow = Vec::new();
                let mut trow = Vec::new();
                for &l in &lengths {
                    let s: Vec<f64> = recs
                        .iter()
                        .filter(|r| r.meta_f64(lkey) == Some(l) && r.meta_f64(dkey) == Some(d))
                        .map(|r| r.score)
                        .collect();
                    let m = (!s.is_empty()).then(|| s.iter().sum::<f64>() / s.len() as f64);
                    trow.push(match m {
                        Some(m) => format!(
                            "{}{}, depth {}: mean {} over {} sample(s)",
                            len_text(l),
                            unit,
                            depth_text(d),
                            fixed(m, 1),
                            s.len()
                        ),
                        None => format!("{}{}, depth {}: no samples", len_text(l), unit, depth_text(d)),
                    });
                    vrow.push(m);
                }
                values.push(vrow);
                tips.push(trow);
            }
            let overall =
                if recs.is_empty() { 0.0 } else { recs.iter().map(|r| r.score).sum::<f64>() / recs.len() as f64 };
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
            o.push_str(&format!("<div class=\"card\">{}</div>", hm.render()));
        }
        o.push_str("</div>");
    }
    o
}

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

fn speed_charts(cells: &[Cell], lb: &Leaderboard, palette: &Palette) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for model in lb.models() {
        let rows: Vec<&LeaderboardRow> = lb.rows.iter().filter(|r| r.model == model).collect();
        let records_of = |r: &LeaderboardRow| -> Vec<&SampleRecord> {
            let mut cs: Vec<&Cell> = cells
                .iter()
                .filter(|c| c.info.model == r.model && c.info.method_label == r.method_label && c.info.ratio == r.ratio)
                .collect();
            cs.sort_by(|a, b| a.info.id.cmp(&b.info.id));
            cs.into_iter().flat_map(|c| c.records.iter()).collect()
        };
        let max_peak = rows.iter().filter_map(|r| r.peak_memory_bytes).max().unwrap_or(0) as f64;
        let max_kv = cells
            .iter()
            .filter(|c| c.info.model == model)
            .flat_map(|c| c.records.iter().map(|r| r.kv_bytes_held))
            .max()
            .unwrap_or(0) as f64;
        let unit = |max: f64| if max >= 1024f64.powi(3) { ("GiB", 1024f64.powi(3)) } else { ("MiB", 1024f64.powi(2)) };
        let (peak_unit, peak_div) = unit(max_peak);
        let (kv_unit, kv_div) = unit(max_kv);
        type Get = fn(&SampleRecord) -> Option<f64>;
        let specs: [(String, String, Get, f64); 3] = [
            (
                format!("Decode speed vs. context — {model}"),
                "decode tokens/s".to_string(),
                (|r: &SampleRecord| (r.generated_tokens > 1).then_some(r.decode_tokens_per_s)) as Get,
                1.0,
            ),
            (
                format!("Peak memory vs. context — {model}"),
                format!("peak memory ({peak_unit})"),
                (|r: &SampleRecord| Some(r.peak_memory_bytes as f64)) as Get,
                peak_div,
            ),
            (
                format!("KV cache held vs. context — {model}"),
                format!("KV cache held ({kv_unit})"),
                (|r: &SampleRecord| Some(r.kv_bytes_held as f64)) as Get,
                kv_div,
            ),
        ];
        let mut charts = Vec::new();
        for (title, ylabel, get, div) in specs {
            let mut chart = XyChart::new(
                title,
                Axis::linear("input tokens (prompt length)"),
                Axis { zero: true, ..Axis::linear(ylabel) },
            );
            chart.subtitle = Some("one marker per sample (averaged in bins when dense)".into());
            chart.width = 440.0;
            chart.height = 340.0;
            chart.legend_below = true;
            for r in &rows {
                let pts: Vec<(f64, f64)> = records_of(r)
                    .iter()
                    .filter_map(|rec| get(rec).map(|y| (rec.input_tokens as f64, y / div)))
                    .collect();
                let mut s = Series::new(r.display_name(), palette.color(r), palette.marker(r));
                s.opacity = 0.8;
                s.size = 4.0;
                for (x, y, n) in thin(pts, 400) {
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
            charts.push(chart.render());
        }
        out.push((model, charts));
    }
    out
}

/// A score cell's content: the mean, then its 95% half-width in a `ci` span when there is one.
fn score_html(s: &CategoryStat) -> String {
    let ci = s.ci95.map(|v| format!("<span class=\"ci\">± {}</span>", fixed(v, 1))).unwrap_or_default();
    format!("{}{ci}", fixed(s.mean, 1))
}

/// Per model, each task's average ± its 95% half-width per method and budget (n on hover).
fn per_task_tables(lb: &Leaderboard) -> String {
    let mut o = String::new();
    for model in lb.models() {
        let tasks = lb.tasks_of(&model);
        o.push_str(&format!("<h3>{}</h3><div class=\"tablewrap\"><table class=\"lb\"><thead><tr><th>method</th><th class=\"num\">budget</th>", html_escape(&model)));
        for (cat, t) in &tasks {
            o.push_str(&format!("<th class=\"num\" title=\"{}\">{}</th>", html_escape(cat), html_escape(t)));
        }
        o.push_str("</tr></thead><tbody>");
        for r in lb.rows.iter().filter(|r| r.model == model) {
            o.push_str(&format!(
                "<tr{}><td>{}</td><td class=\"num\">{}</td>",
                if r.is_full() { " class=\"full\"" } else { "" },
                html_escape(&r.method_label),
                html_escape(&budget_label(r.ratio))
            ));
            for (_, t) in &tasks {
                o.push_str(&match r.tasks.get(t) {
                    Some(s) => format!("<td class=\"num\" title=\"n = {}\">{}</td>", s.records, score_html(s)),
                    None => "<td class=\"num\">–</td>".to_string(),
                });
            }
            o.push_str("</tr>");
        }
        o.push_str("</tbody></table></div>");
    }
    if let Some((ci, r, t)) = lb.widest_task_ci() {
        o.push_str(&format!(
            "<p class=\"note\">Widest 95% half-width of any task average: ±{} ({} / {} / {}).</p>",
            fixed(ci, 2),
            html_escape(&r.model),
            html_escape(&r.display_name()),
            html_escape(t)
        ));
    }
    o
}

fn tasks_table(cells: &[Cell]) -> String {
    // (category rank, task) -> (cells, records, samples per cell)
    type TaskKey = ((usize, String), String);
    let mut tasks: BTreeMap<TaskKey, (usize, usize, usize)> = BTreeMap::new();
    for c in cells {
        let e = tasks.entry((crate::leaderboard::category_rank(&c.info.category), c.info.task.clone())).or_default();
        e.0 += 1;
        e.1 += c.records.len();
        e.2 = e.2.max(c.info.samples);
    }
    let mut o = String::from(
        "<div class=\"tablewrap\"><table><thead><tr><th>category</th><th>task</th><th class=\"num\">cells</th>\
         <th class=\"num\">samples per cell</th><th class=\"num\">records</th></tr></thead><tbody>",
    );
    for (((_, cat), task), (n, recs, samples)) in tasks {
        o.push_str(&format!(
            "<tr><td>{}</td><td><code>{}</code></td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            html_escape(&cat),
            html_escape(&task),
            n,
            samples,
            recs
        ));
    }
    o.push_str("</tbody></table></div>");
    o
}

/// The whole index.html.
pub fn index_html(runs: &[RunInfo], cells: &[Cell], lb: &Leaderboard) -> String {
    index_html_with(runs, cells, lb, "")
}

/// [`index_html`] with an extra section (HTML) after the speed charts, e.g. `kvbench bench` results.
pub fn index_html_with(runs: &[RunInfo], cells: &[Cell], lb: &Leaderboard, extra: &str) -> String {
    let palette = Palette::new(&lb.rows);
    let experiment = distinct(runs, |r| r.experiment.clone());
    let nav = [
        ("#leaderboard", "Leaderboard"),
        ("#per-task", "Per task"),
        ("#quality", "Quality vs. compression"),
        ("#needle", "Needle heatmaps"),
        ("#speed", "Speed & memory"),
        ("#tasks", "Tasks"),
        ("examples.html", "Example predictions"),
        ("leaderboard.csv", "CSV"),
    ];
    let header = report_header(runs, "kvbench report", &nav);
    let mut b = String::new();
    let records: usize = cells.iter().map(|c| c.records.len()).sum();
    let incomplete = cells.iter().filter(|c| !c.is_complete()).count();
    let mut tasks: Vec<&str> = cells.iter().map(|c| c.info.task.as_str()).collect();
    tasks.sort();
    tasks.dedup();
    b.push_str("<div class=\"stats\">");
    for (n, label) in [
        (lb.models().len(), "models"),
        (lb.rows.len(), "method × budget rows"),
        (tasks.len(), "tasks"),
        (cells.len(), "cells"),
        (records, "samples scored"),
    ] {
        b.push_str(&format!("<div class=\"stat\"><b>{}</b><span>{}</span></div>", thousands(n as u64), label));
    }
    b.push_str("</div>");
    if incomplete > 0 {
        b.push_str(&format!(
            "<div class=\"warn\">{incomplete} of {} cells are incomplete (samples missing or no done marker); their rows are marked †.</div>",
            cells.len()
        ));
    }

    b.push_str("<h2 id=\"leaderboard\">Leaderboard</h2>");
    b.push_str(
        "<p class=\"lead\">One row per method and budget. A category score is the mean of its cells' mean scores \
         (± the 95% confidence half-width over its samples); <b>average</b> is the mean of the row's categories. \
         Cells are tinted green or red by their difference from the full cache. Measured cost is over all the row's \
         samples: ratio = full-cache bytes / held bytes (mean), KV held (mean), peak memory (max), prefill = Σ input \
         tokens / Σ prefill seconds, decode = mean tokens/s of samples generating more than one token. KV attended \
         (where a method reads less than it holds, as retrieval methods do) is what the last decoding step read (mean).</p>",
    );
    if lb.rows.is_empty() {
        b.push_str("<p class=\"note\">No results yet.</p>");
    }
    b.push_str(&leaderboard_tables(lb, &palette));

    if !lb.rows.is_empty() {
        b.push_str("<h2 id=\"per-task\">Per task</h2>");
        b.push_str(
            "<p class=\"lead\">Each task's average over the row's samples of it, ± the 95% confidence half-width \
             (1.96·sd/√n; hover a score for n). Also in <a href=\"tasks.csv\">tasks.csv</a> and <a href=\"tasks.md\">tasks.md</a>.</p>",
        );
        b.push_str(&per_task_tables(lb));
    }

    b.push_str("<h2 id=\"quality\">Quality vs. compression</h2>");
    b.push_str(
        "<p class=\"lead\">Average score against the compression each method actually achieved (measured bytes, \
         not the nominal budget). Up and to the right is better; the dashed line is the full cache.</p>",
    );
    b.push_str("<div class=\"grid2\">");
    for svg in quality_charts(lb, &palette) {
        b.push_str(&format!("<div class=\"card\">{svg}</div>"));
    }
    b.push_str("</div>");

    b.push_str("<h2 id=\"needle\">Needle in a haystack</h2>");
    b.push_str(&needle_section(cells, lb));

    b.push_str("<h2 id=\"speed\">Speed and memory vs. context length</h2>");
    b.push_str(
        "<p class=\"lead\">Decode speed, process peak memory and the bytes the KV cache holds, against the prompt \
         length of each sample. Peak memory includes the model weights; KV held is the cache alone.</p>",
    );
    for (model, charts) in speed_charts(cells, lb, &palette) {
        b.push_str(&format!("<h3>{}</h3><div class=\"grid3\">", html_escape(&model)));
        for svg in charts {
            b.push_str(&format!("<div class=\"card\">{svg}</div>"));
        }
        b.push_str("</div>");
    }

    b.push_str(extra);
    b.push_str("<h2 id=\"tasks\">Tasks</h2>");
    b.push_str(&tasks_table(cells));
    b.push_str(&format!(
        "<footer>Generated by kvreport {} from the run's records. Experiment <b>{}</b>. \
         Files: <a href=\"leaderboard.csv\">leaderboard.csv</a> · <a href=\"leaderboard.md\">leaderboard.md</a> · \
         <a href=\"examples.html\">examples.html</a>.</footer>",
        env!("CARGO_PKG_VERSION"),
        html_escape(&experiment)
    ));
    page(&format!("{experiment} — kvbench report"), &header, &b)
}

/// Inline style of a 0–100 score badge: its colour, with white text on dark fills.
pub fn score_badge_style(score: f64) -> String {
    let fill = score_color(score);
    if crate::svg::is_dark(&fill) {
        format!("background:{fill};color:#fff")
    } else {
        format!("background:{fill}")
    }
}
