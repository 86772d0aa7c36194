//! `index.html`: the one-page, self-contained report a person reads first (inline CSS and SVG,
//! no scripts, no external resources): provenance, the leaderboard tables, quality vs.
//! compression, needle heatmaps, and speed/memory against context length, and the paired
//! differences from the full cache. The pages are
//! rendered from the minijinja templates in `kvreport/templates/` (embedded at compile time)
//! with HTML autoescaping: this module computes what they show, the templates hold the markup.
//! Only the SVG charts of `svg.rs` (which escape their own text) and the HTML handed in by the
//! callers of [`page`] and [`index_html_with`] go in as safe, already-escaped markup.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use minijinja::{context, AutoEscape, Environment, UndefinedBehavior, Value};
use serde::Serialize;

use crate::format::{budget_label, fixed, human_bytes, thousands};
use crate::leaderboard::{CategoryStat, Leaderboard, LeaderboardRow};
use crate::load::Cell;
use crate::paired::{DeltaStat, Paired};
use crate::record::RunInfo;
use crate::svg::{score_color, Marker};

mod charts;
use charts::{needle_groups, quality_charts, speed_charts};

/// Shared stylesheet of index.html and examples.html (inlined into each page's `<style>`).
pub const CSS: &str = include_str!("../templates/report.css");

/// The templates, by name; `include_str!` puts them into the binary, nothing is read at run time.
const TEMPLATES: [(&str, &str); 4] = [
    ("page.html.j2", include_str!("../templates/page.html.j2")),
    ("header.html.j2", include_str!("../templates/header.html.j2")),
    ("tables.html.j2", include_str!("../templates/tables.html.j2")),
    ("index.html.j2", include_str!("../templates/index.html.j2")),
];

/// The template environment: every template autoescapes HTML, and a name a template uses but
/// the context lacks is an error rather than empty text. The stylesheet is a safe global, so
/// that it is inserted as it is and never parsed as template source.
static ENV: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    env.set_auto_escape_callback(|_| AutoEscape::Html);
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(true);
    env.add_global("css", Value::from_safe_string(CSS.to_string()));
    for (name, source) in TEMPLATES {
        env.add_template(name, source).unwrap_or_else(|e| panic!("embedded template {name}: {e:#}"));
    }
    env
});

/// Renders an embedded template. They are fixed at compile time and the tests render each, so
/// a failure here is a bug in this crate, not a property of the input.
fn render<S: Serialize>(name: &str, ctx: S) -> String {
    ENV.get_template(name).and_then(|t| t.render(ctx)).unwrap_or_else(|e| panic!("rendering {name}: {e:#}"))
}

/// A whole HTML document with the shared stylesheet; `header` and `body` are HTML, inserted as
/// they are, the title is text.
pub fn page(title: &str, header: &str, body: &str) -> String {
    render(
        "page.html.j2",
        context! {
            title,
            header_html => Value::from_safe_string(header.to_string()),
            body_html => Value::from_safe_string(body.to_string()),
        },
    )
}

/// Colours and marker shapes per method family, the same in every chart and table.
#[derive(Clone, Debug)]
pub struct Palette {
    families: BTreeMap<String, String>,
    markers: BTreeMap<(String, String, Option<u64>), Marker>,
}

pub(crate) const COLORS: [&str; 10] = ["#3366cc", "#e8743b", "#19a979", "#d64550", "#945ecf", "#13a4b4", "#b6992d", "#bf399e", "#6c8893", "#ed4a7b"];
pub(crate) const FULL_COLOR: &str = "#1d2330";

impl Palette {
    pub fn new(rows: &[LeaderboardRow]) -> Palette {
        let mut names: Vec<&str> = rows.iter().filter(|r| !r.is_full()).map(|r| r.method.as_str()).collect();
        names.sort();
        names.dedup();
        let families = names.iter().enumerate().map(|(i, n)| (n.to_string(), COLORS[i % COLORS.len()].to_string())).collect();
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
        self.markers.get(&(row.method.clone(), row.method_label.clone(), row.ratio.map(f64::to_bits))).copied().unwrap_or(Marker::Circle)
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

/// The page header: kicker, experiment, provenance fields and the table of contents.
#[derive(Serialize)]
struct Header<'a> {
    kicker: &'a str,
    title: String,
    fields: Vec<ProvField>,
    nav: Vec<NavLink<'a>>,
}

/// One provenance entry; `tip` (the full value, on hover) is empty when there is none.
#[derive(Serialize)]
struct ProvField {
    name: &'static str,
    value: String,
    tip: String,
}

#[derive(Serialize)]
struct NavLink<'a> {
    href: &'a str,
    text: &'a str,
}

/// `name (short hash), ...` and its tip, `name: hash` per line, of a name -> hash map.
fn hashes_field(name: &'static str, hashes: &BTreeMap<String, String>) -> ProvField {
    let value = if hashes.is_empty() { "–".into() } else { hashes.iter().map(|(k, v)| format!("{k} ({})", short_hash(v))).collect::<Vec<_>>().join(", ") };
    let tip = hashes.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join("\n");
    ProvField { name, value, tip }
}

fn header<'a>(runs: &[RunInfo], kicker: &'a str, nav: &[(&'a str, &'a str)]) -> Header<'a> {
    let mut models: BTreeMap<String, String> = BTreeMap::new();
    let mut data: BTreeMap<String, String> = BTreeMap::new();
    for r in runs {
        models.extend(r.model_hashes.iter().map(|(k, v)| (k.clone(), v.clone())));
        data.extend(r.data_hashes.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    let plain = |name, value| ProvField { name, value, tip: String::new() };
    let mut fields = vec![
        plain("commit", distinct(runs, |r| r.commits().join(" + "))),
        plain("device", distinct(runs, |r| r.device.clone())),
        plain("threads", distinct(runs, |r| r.threads.to_string())),
        plain("libtorch", distinct(runs, |r| r.libtorch_version.clone())),
        plain("kvbench", distinct(runs, |r| r.kvbench_version.clone())),
        ProvField { name: "config sha256", value: distinct(runs, |r| short_hash(&r.config_hash)), tip: distinct(runs, |r| r.config_hash.clone()) },
        hashes_field("models", &models),
        hashes_field("data", &data),
    ];
    // The CPUs that wrote the records, when run.json recorded them (runs before that show none).
    if runs.iter().any(|r| !r.cpus.is_empty()) {
        fields.insert(2, plain("cpu", distinct(runs, |r| r.cpus.join(" + "))));
    }
    // How decode steps' products ran (kvbench's kernel or libtorch), when recorded.
    if runs.iter().any(|r| !r.decode_matmul.is_empty()) {
        let at = fields.iter().position(|f| f.name == "threads").map_or(fields.len(), |i| i + 1);
        fields.insert(at, plain("decode", distinct(runs, |r| r.decode_matmul.join(" + "))));
    }
    Header { kicker, title: distinct(runs, |r| r.experiment.clone()), fields, nav: nav.iter().map(|&(href, text)| NavLink { href, text }).collect() }
}

/// The report's page header (experiment and provenance), shared with examples.html.
pub fn report_header(runs: &[RunInfo], kicker: &str, nav: &[(&str, &str)]) -> String {
    let html = render("header.html.j2", context! { top => header(runs, kicker, nav) });
    // The template ends in a newline; the page puts its own after the header.
    html.trim_end_matches('\n').to_string()
}

/// The background of a score cell `delta` points from the full cache's; none near zero.
fn tint(delta: f64) -> Option<String> {
    if delta.abs() < 0.05 {
        return None;
    }
    let a = (delta.abs() / 20.0).min(1.0) * 0.32 + 0.04;
    let rgb = if delta < 0.0 { "215,48,39" } else { "26,152,80" };
    Some(format!("rgba({rgb},{})", fixed(a, 3)))
}

/// A score: the mean and its 95% half-width, one decimal each (the `score` macro of tables.html.j2).
#[derive(Serialize)]
struct Score {
    mean: String,
    ci: Option<String>,
}

impl Score {
    fn of(s: &CategoryStat) -> Score {
        Score { mean: fixed(s.mean, 1), ci: s.ci95.map(|v| fixed(v, 1)) }
    }
}

/// One model's leaderboard table.
#[derive(Serialize)]
struct LeaderboardTable {
    model: String,
    categories: Vec<String>,
    /// Some row attends to fewer bytes than it holds: the table gets a `KV attended` column.
    attended: bool,
    rows: Vec<LeaderboardLine>,
}

/// One leaderboard row, formatted; `–` for what is missing, empty tips where there is nothing to tell.
#[derive(Serialize)]
struct LeaderboardLine {
    full: bool,
    color: String,
    label: String,
    incomplete: usize,
    budget: String,
    /// Per category of the table, none where the row has no cell of it.
    categories: Vec<Option<CategoryCell>>,
    average: String,
    average_tint: Option<String>,
    ratio: String,
    held: String,
    held_tip: String,
    attended: String,
    attended_tip: String,
    peak: String,
    peak_tip: String,
    prefill: String,
    decode: String,
}

#[derive(Serialize)]
struct CategoryCell {
    score: Score,
    tint: Option<String>,
    records: usize,
    cells: usize,
}

fn dash(v: Option<String>) -> String {
    v.unwrap_or_else(|| "–".into())
}

fn leaderboard_tables(lb: &Leaderboard, palette: &Palette) -> Vec<LeaderboardTable> {
    let mut out = Vec::new();
    for model in lb.models() {
        let categories = lb.categories_of(&model);
        let rows: Vec<&LeaderboardRow> = lb.rows.iter().filter(|r| r.model == model).collect();
        let full = rows.iter().find(|r| r.is_full()).copied();
        let lines = rows
            .iter()
            .map(|r| {
                let tint_against = |v: f64, f: Option<f64>| f.filter(|_| !r.is_full()).and_then(|f| tint(v - f));
                LeaderboardLine {
                    full: r.is_full(),
                    color: palette.color(r),
                    label: r.method_label.clone(),
                    incomplete: r.incomplete_cells,
                    budget: budget_label(r.ratio),
                    categories: categories
                        .iter()
                        .map(|c| {
                            r.categories.get(c).map(|s| CategoryCell {
                                score: Score::of(s),
                                tint: tint_against(s.mean, full.and_then(|f| f.categories.get(c)).map(|f| f.mean)),
                                records: s.records,
                                cells: s.cells,
                            })
                        })
                        .collect(),
                    average: dash(r.average.map(|v| fixed(v, 1))),
                    average_tint: r.average.and_then(|a| tint_against(a, full.and_then(|f| f.average))),
                    ratio: dash(r.compression_ratio.map(|v| format!("{}×", fixed(v, 2)))),
                    held: dash(r.kv_bytes_held.map(human_bytes)),
                    held_tip: r.kv_bytes_held.map(|v| format!("{} bytes", fixed(v, 0))).unwrap_or_default(),
                    attended: dash(r.kv_bytes_attended.map(human_bytes)),
                    attended_tip: r.kv_bytes_attended.map(|v| format!("{} bytes read by the last decoding step", fixed(v, 0))).unwrap_or_default(),
                    peak: dash(r.peak_memory_bytes.map(|v| human_bytes(v as f64))),
                    peak_tip: r.peak_memory_bytes.map(|v| format!("{v} bytes")).unwrap_or_default(),
                    prefill: dash(r.prefill_tokens_per_s.map(|v| fixed(v, 1))),
                    decode: dash(r.decode_tokens_per_s.map(|v| fixed(v, 1))),
                }
            })
            .collect();
        out.push(LeaderboardTable { attended: rows.iter().any(|r| r.kv_bytes_attended != r.kv_bytes_held), model, categories, rows: lines });
    }
    out
}

/// One model's per-task table: its tasks (columns) and a line per leaderboard row.
#[derive(Serialize)]
struct PerTaskTable {
    model: String,
    tasks: Vec<TaskColumn>,
    rows: Vec<PerTaskLine>,
}

#[derive(Serialize)]
struct TaskColumn {
    category: String,
    name: String,
}

#[derive(Serialize)]
struct PerTaskLine {
    full: bool,
    label: String,
    budget: String,
    /// Per task column, none where the row has no records of it.
    tasks: Vec<Option<TaskCell>>,
}

#[derive(Serialize)]
struct TaskCell {
    score: Score,
    records: usize,
}

/// The widest 95% half-width of any task average, and where it is.
#[derive(Serialize)]
struct WidestCi {
    ci: String,
    model: String,
    row: String,
    task: String,
}

/// Per model, each task's average ± its 95% half-width per method and budget (n on hover).
fn per_task_tables(lb: &Leaderboard) -> Vec<PerTaskTable> {
    lb.models()
        .into_iter()
        .map(|model| {
            let tasks = lb.tasks_of(&model);
            let rows = lb
                .rows
                .iter()
                .filter(|r| r.model == model)
                .map(|r| PerTaskLine {
                    full: r.is_full(),
                    label: r.method_label.clone(),
                    budget: budget_label(r.ratio),
                    tasks: tasks.iter().map(|(_, t)| r.tasks.get(t).map(|s| TaskCell { score: Score::of(s), records: s.records })).collect(),
                })
                .collect();
            let tasks = tasks.into_iter().map(|(category, name)| TaskColumn { category, name }).collect();
            PerTaskTable { model, tasks, rows }
        })
        .collect()
}

/// One model's paired-difference table: its categories and a line per non-full row.
#[derive(Serialize)]
struct PairedTable {
    model: String,
    categories: Vec<String>,
    /// The model has no full-cache row: every line is empty.
    no_full: bool,
    rows: Vec<PairedLine>,
}

#[derive(Serialize)]
struct PairedLine {
    label: String,
    budget: String,
    /// Per category of the table, then the average; none where there are no pairs.
    cells: Vec<Option<DeltaCell>>,
    agreement: String,
    pairs: usize,
    clusters: usize,
}

/// A Δ, formatted: signed with one decimal, its 95% half-width, the Holm mark and the counts.
#[derive(Serialize)]
struct DeltaCell {
    delta: String,
    ci: Option<String>,
    significant: bool,
    tip: String,
}

impl DeltaCell {
    fn of(s: &DeltaStat) -> DeltaCell {
        let d = fixed(s.delta, 1);
        let p = s.p_value.map(|p| format!(", p = {p:.2e}")).unwrap_or_default();
        DeltaCell {
            delta: if d.starts_with('-') { d } else { format!("+{d}") },
            ci: s.ci95().map(|v| if s.within_one_context { format!("{}†", fixed(v, 1)) } else { fixed(v, 1) }),
            significant: s.holm_significant,
            tip: format!("{} pairs in {} clusters{p}{}", s.pairs, s.clusters, if s.within_one_context { "; † SE within one shared context" } else { "" }),
        }
    }
}

fn paired_tables(lb: &Leaderboard, paired: &Paired) -> Vec<PairedTable> {
    paired
        .models()
        .into_iter()
        .map(|model| {
            let categories = lb.categories_of(&model);
            let rows: Vec<_> = paired.rows.iter().filter(|r| r.model == model).collect();
            let lines = rows
                .iter()
                .map(|r| PairedLine {
                    label: r.method_label.clone(),
                    budget: budget_label(r.ratio),
                    cells: categories.iter().map(|c| r.categories.get(c)).chain([r.average.as_ref()]).map(|s| s.map(DeltaCell::of)).collect(),
                    agreement: dash(r.average.as_ref().and_then(DeltaStat::agreement).map(|a| format!("{}%", fixed(100.0 * a, 1)))),
                    pairs: r.pairs(),
                    clusters: r.average.as_ref().map_or(0, |a| a.clusters),
                })
                .collect();
            PairedTable { no_full: rows.iter().all(|r| r.full.is_none()), model, categories, rows: lines }
        })
        .collect()
}

/// One line of the task list.
#[derive(Serialize)]
struct TaskLine {
    category: String,
    task: String,
    cells: usize,
    samples: usize,
    records: usize,
}

fn task_lines(cells: &[Cell]) -> Vec<TaskLine> {
    // (category rank, task) -> (cells, records, samples per cell)
    type TaskKey = ((usize, String), String);
    let mut tasks: BTreeMap<TaskKey, (usize, usize, usize)> = BTreeMap::new();
    for c in cells {
        let e = tasks.entry((crate::leaderboard::category_rank(&c.info.category), c.info.task.clone())).or_default();
        e.0 += 1;
        e.1 += c.records.len();
        e.2 = e.2.max(c.info.samples);
    }
    tasks.into_iter().map(|(((_, category), task), (cells, records, samples))| TaskLine { category, task, cells, samples, records }).collect()
}

/// The counts at the top of the page, with thousands separators.
#[derive(Serialize)]
struct Stats {
    models: String,
    rows: String,
    tasks: String,
    cells: String,
    records: String,
}

/// The whole index.html.
pub fn index_html(runs: &[RunInfo], cells: &[Cell], lb: &Leaderboard) -> String {
    index_html_with(runs, cells, lb, "")
}

/// [`index_html`] with an extra section (HTML) after the speed charts, e.g. `kvbench bench` results.
pub fn index_html_with(runs: &[RunInfo], cells: &[Cell], lb: &Leaderboard, extra: &str) -> String {
    index_html_paired(runs, cells, lb, &Paired::build(cells, lb), extra)
}

/// [`index_html_with`] with the paired differences already built (from the same cells).
pub fn index_html_paired(runs: &[RunInfo], cells: &[Cell], lb: &Leaderboard, paired: &Paired, extra: &str) -> String {
    let palette = Palette::new(&lb.rows);
    let experiment = distinct(runs, |r| r.experiment.clone());
    let nav = [
        ("#leaderboard", "Leaderboard"),
        ("#per-task", "Per task"),
        ("#paired", "Paired Δ"),
        ("#quality", "Quality vs. compression"),
        ("#needle", "Needle heatmaps"),
        ("#speed", "Speed & memory"),
        ("#tasks", "Tasks"),
        ("examples.html", "Example predictions"),
        ("leaderboard.csv", "CSV"),
    ];
    let mut tasks: Vec<&str> = cells.iter().map(|c| c.info.task.as_str()).collect();
    tasks.sort();
    tasks.dedup();
    let count = |n: usize| thousands(n as u64);
    let stats = Stats {
        models: count(lb.models().len()),
        rows: count(lb.rows.len()),
        tasks: count(tasks.len()),
        cells: count(cells.len()),
        records: count(cells.iter().map(|c| c.records.len()).sum()),
    };
    let widest = lb.widest_task_ci().map(|(ci, r, t)| WidestCi { ci: fixed(ci, 2), model: r.model.clone(), row: r.display_name(), task: t.to_string() });
    render(
        "index.html.j2",
        context! {
            title => format!("{experiment} — kvbench report"),
            top => header(runs, "kvbench report", &nav),
            stats,
            incomplete_cells => cells.iter().filter(|c| !c.is_complete()).count(),
            total_cells => cells.len(),
            leaderboard => leaderboard_tables(lb, &palette),
            per_task => per_task_tables(lb),
            paired => paired_tables(lb, paired),
            paired_tests => paired.tests,
            paired_key => crate::paired::CLUSTER_KEY,
            widest,
            quality_charts => quality_charts(lb, &palette),
            needle => needle_groups(cells, lb),
            speed => speed_charts(cells, lb, &palette),
            extra_html => Value::from_safe_string(extra.to_string()),
            tasks => task_lines(cells),
            version => env!("CARGO_PKG_VERSION"),
            experiment,
        },
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn hostile_run() -> RunInfo {
        let evil = "<script>alert(1)</script>&\"'";
        RunInfo {
            experiment: format!("exp {evil}"),
            config_hash: format!("hash{evil}"),
            kvbench_version: "0.1.0".into(),
            git_commit: evil.into(),
            git_commits: Vec::new(),
            libtorch_version: "2.13.0".into(),
            device: evil.into(),
            cpus: vec![evil.into()],
            decode_matmul: vec![evil.into()],
            threads: 2,
            shard: "0/1".into(),
            model_hashes: BTreeMap::from([(evil.to_string(), evil.to_string())]),
            data_hashes: BTreeMap::new(),
            plugins: Vec::new(),
        }
    }

    #[test]
    fn page_escapes_the_title_and_keeps_the_given_html() {
        let html = page("a <b> & \"c\"", "<header>h</header>", "<p>body</p>");
        assert!(html.starts_with("<!DOCTYPE html>\n") && html.ends_with("</html>\n"), "{html}");
        assert!(html.contains("<title>a &lt;b&gt; &amp; &quot;c&quot;</title>"), "{html}");
        assert!(html.contains("<body>\n<header>h</header>\n<main>\n<p>body</p>\n</main>"), "{html}");
        assert!(html.contains(CSS), "the stylesheet is inlined as it is");
    }

    #[test]
    fn header_and_index_escape_every_inserted_text() {
        let runs = [hostile_run()];
        let header = report_header(&runs, "kicker <i>", &[("a.html?x=1&y=2", "<b>link</b>")]);
        assert!(!header.contains("<script") && !header.contains("<i>") && !header.contains("<b>"), "{header}");
        assert!(header.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;&amp;&quot;&#x27;"), "{header}");
        assert!(header.contains("<a href=\"a.html?x=1&amp;y=2\">&lt;b&gt;link&lt;&#x2f;b&gt;</a>"), "{header}");
        assert!(header.starts_with("<header class=\"top\">") && header.ends_with("</div></header>"), "{header}");
        // The CPU is shown when recorded (escaped like every other field), and not for older runs.
        assert!(header.contains("<dt>cpu</dt><dd>&lt;script&gt;alert(1)"), "{header}");
        assert!(header.contains("<dt>decode</dt><dd>&lt;script&gt;alert(1)"), "{header}");
        let older = RunInfo { cpus: Vec::new(), decode_matmul: Vec::new(), ..hostile_run() };
        let older_header = report_header(&[older], "k", &[]);
        assert!(!older_header.contains("<dt>cpu</dt>") && !older_header.contains("<dt>decode</dt>"));

        // No cells: every section still renders, with its empty-state note.
        let html = index_html_with(&runs, &[], &Leaderboard::build(&[]), "<section id=\"extra\"></section>");
        assert!(!html.contains("<script"), "{html}");
        assert!(html.contains("<p class=\"note\">No results yet.</p>") && !html.contains("id=\"per-task\""), "{html}");
        assert!(html.contains("No needle-in-a-haystack cells in this run."), "{html}");
        assert!(html.contains("<section id=\"extra\"></section>"), "the extra section is HTML");
        assert!(html.contains("Experiment <b>exp &lt;script&gt;"), "{html}");
    }
}
