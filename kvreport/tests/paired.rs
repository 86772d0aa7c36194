//! The paired differences from the full cache (`kvreport::paired`) on a small run built here,
//! whose every number is computed by hand below (in the comments) rather than by the code
//! under test.
//!
//! Model `tiny`, tasks `qa/a` and `qa/b` (category `qa`) and `hay` (category `needle`, whose
//! records share two contexts: `context_id` "ctx-1" for h0 h1, "ctx-2" for h2 h3). Scores:
//!
//! ```text
//!            qa/a a0 a1 a2 a3 (a4)   qa/b b0 b1 b2 b3     hay h0  h1 h2 h3
//! full            50 60 40 70         30 80 50 100         100 100 60 40
//! snapkv 2x       40 40 40 60 (90)    30 80 50 100          80  60 60 60
//! kivi-2bit       40 50 30 60         20 70 40  90         100 100 60 40
//! snapkv 8x       20 (a0 only)
//! ```
//!
//! a4 exists only under snapkv 2x (unpaired). Model `other` has a snapkv 2x row and no full cache.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use common::{run_info, write_run};
use kvreport::load::load_runs;
use kvreport::paired::{DeltaStat, Paired, PairedRow};
use kvreport::record::{CellInfo, SampleRecord};
use kvreport::{write_reports, Leaderboard};
use serde_json::json;

type Row = (&'static str, &'static str, &'static str, Option<f64>);
const FULL: Row = ("tiny", "full", "full", None);
const SNAP2: Row = ("tiny", "snapkv", "snapkv", Some(2.0));
const KIVI: Row = ("tiny", "kivi", "kivi-2bit", None);
const SNAP8: Row = ("tiny", "snapkv", "snapkv", Some(8.0));
const OTHER: Row = ("other", "snapkv", "snapkv", Some(2.0));

/// (sample id, score, prediction, context id)
type Sample = (&'static str, f64, &'static str, Option<&'static str>);

fn record(cell: &str, index: usize, (id, score, prediction, ctx): Sample) -> SampleRecord {
    let mut metadata = BTreeMap::from([("length".to_string(), json!(1000))]);
    if let Some(c) = ctx {
        metadata.insert("context_id".to_string(), json!(c));
    }
    SampleRecord {
        cell: cell.into(),
        sample_id: id.into(),
        index,
        prediction: prediction.into(),
        answers: vec!["x".into()],
        score,
        scores: BTreeMap::from([("main".to_string(), score)]),
        input_tokens: 1000,
        generated_tokens: 4,
        prefill_seconds: 1.0,
        decode_tokens_per_s: 10.0,
        kv_bytes_held: 1000,
        kv_bytes_attended: 1000,
        kv_bytes_full: 1000,
        compression_ratio: 1.0,
        peak_memory_bytes: 1 << 20,
        metadata,
        original_input_tokens: None,
        prompt_compression_seconds: None,
        timing: None,
    }
}

fn cell((model, method, label, ratio): Row, task: &str, category: &str, samples: &[Sample]) -> (CellInfo, Vec<SampleRecord>) {
    let id = format!("{model}.{label}.{}.{}", ratio.unwrap_or(0.0), task.replace('/', "-"));
    let info = CellInfo {
        id: id.clone(),
        model: model.into(),
        method: method.into(),
        method_label: label.into(),
        method_params: ratio.map(|r| json!({"ratio": r})).unwrap_or_else(|| json!({})),
        ratio,
        task: task.into(),
        category: category.into(),
        samples: samples.len(),
        seed: 42,
        template: "chat".into(),
        plugin_sha256: None,
    };
    let recs = samples.iter().enumerate().map(|(i, s)| record(&id, i, *s)).collect();
    (info, recs)
}

const C1: Option<&str> = Some("ctx-1");
const C2: Option<&str> = Some("ctx-2");

fn cells() -> Vec<(CellInfo, Vec<SampleRecord>)> {
    vec![
        cell(FULL, "qa/a", "qa", &[("a0", 50.0, "fa0", None), ("a1", 60.0, "fa1", None), ("a2", 40.0, "fa2", None), ("a3", 70.0, "fa3", None)]),
        cell(FULL, "qa/b", "qa", &[("b0", 30.0, "fb0", None), ("b1", 80.0, "fb1", None), ("b2", 50.0, "fb2", None), ("b3", 100.0, "fb3", None)]),
        cell(FULL, "hay", "needle", &[("h0", 100.0, "fh0", C1), ("h1", 100.0, "fh1", C1), ("h2", 60.0, "fh2", C2), ("h3", 40.0, "fh3", C2)]),
        // snapkv 2x: agrees with the full cache on a2; b0, b1 (white space aside), b2; h2.
        cell(
            SNAP2,
            "qa/a",
            "qa",
            &[("a0", 40.0, "s0", None), ("a1", 40.0, "s1", None), ("a2", 40.0, "fa2", None), ("a3", 60.0, "s3", None), ("a4", 90.0, "s4", None)],
        ),
        cell(SNAP2, "qa/b", "qa", &[("b0", 30.0, "fb0", None), ("b1", 80.0, "  fb1\n", None), ("b2", 50.0, "fb2", None), ("b3", 100.0, "other", None)]),
        cell(SNAP2, "hay", "needle", &[("h0", 80.0, "s", C1), ("h1", 60.0, "s", C1), ("h2", 60.0, "fh2", C2), ("h3", 60.0, "s", C2)]),
        // kivi-2bit: 10 points below on every qa sample, the full cache's answers on hay.
        cell(KIVI, "qa/a", "qa", &[("a0", 40.0, "k", None), ("a1", 50.0, "k", None), ("a2", 30.0, "k", None), ("a3", 60.0, "k", None)]),
        cell(KIVI, "qa/b", "qa", &[("b0", 20.0, "k", None), ("b1", 70.0, "k", None), ("b2", 40.0, "k", None), ("b3", 90.0, "k", None)]),
        cell(KIVI, "hay", "needle", &[("h0", 100.0, "fh0", C1), ("h1", 100.0, "fh1", C1), ("h2", 60.0, "fh2", C2), ("h3", 40.0, "fh3", C2)]),
        cell(SNAP8, "qa/a", "qa", &[("a0", 20.0, "x", None)]),
        cell(OTHER, "qa/a", "qa", &[("a0", 50.0, "fa0", None)]),
    ]
}

fn build(dir: &Path, cells: &[(CellInfo, Vec<SampleRecord>)]) -> (Leaderboard, Paired) {
    write_run(dir, &run_info("0/1"), cells);
    let loaded = load_runs(&[dir.to_path_buf()]).unwrap();
    let lb = Leaderboard::build(&loaded.cells);
    let paired = Paired::build(&loaded.cells, &lb);
    (lb, paired)
}

fn row(p: &Paired, (model, _, label, ratio): Row) -> &PairedRow {
    p.rows.iter().find(|r| r.model == model && r.method_label == label && r.ratio == ratio).unwrap_or_else(|| panic!("{model} {label} {ratio:?}"))
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[track_caller]
fn check(s: &DeltaStat, delta: f64, se: Option<f64>, pairs: usize, clusters: usize, agreeing: usize) {
    assert!(close(s.delta, delta, 1e-9), "Δ {} vs {delta}", s.delta);
    match (s.se, se) {
        (Some(a), Some(b)) => assert!(close(a, b, 1e-4), "SE {a} vs {b}"),
        (a, b) => assert_eq!(a, b, "SE"),
    }
    assert_eq!((s.pairs, s.clusters, s.agreeing), (pairs, clusters, agreeing));
}

#[test]
fn deltas_standard_errors_and_agreement_equal_hand_computed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (_lb, p) = build(dir.path(), &cells());
    // The full row is not compared with itself; rows in leaderboard order.
    let names: Vec<(String, String)> = p.rows.iter().map(|r| (r.model.clone(), r.display_name())).collect();
    let expect = [("other", "snapkv 2x"), ("tiny", "kivi-2bit"), ("tiny", "snapkv 2x"), ("tiny", "snapkv 8x")];
    assert_eq!(names, expect.map(|(a, b)| (a.to_string(), b.to_string())));

    let s = row(&p, SNAP2);
    assert_eq!((s.records, s.pairs()), (13, 12), "a4 has no full-cache counterpart");
    // qa/a: d = 40−50, 40−60, 40−40, 60−70 = −10, −20, 0, −10 (a4 unpaired); Δ = −40/4 = −10.
    // Residuals 0, −10, 10, 0: Σe² = 200, s² = 200/3, SE² = s²/4 = 50/3 = 16.6667, SE = 4.08248,
    // CI half-width 1.96 · 4.08248 = 8.00167. Agreement: a2 only, 1 of 4.
    let qa_a = &s.tasks["qa/a"];
    check(qa_a, -10.0, Some(4.08248), 4, 4, 1);
    assert!(close(qa_a.ci95().unwrap(), 8.00167, 1e-4));
    // qa/b: d = 0, 0, 0, 0: Δ = 0, SE = 0. Agreement b0, b1 ("  fb1\n" trimmed), b2: 3 of 4.
    check(&s.tasks["qa/b"], 0.0, Some(0.0), 4, 4, 3);
    // qa = mean of its tasks: Δ = (−10 + 0)/2 = −5, SE² = (50/3 + 0)/2² = 25/6 = 4.16667,
    // SE = 2.04124, CI 4.00083; z = 5/2.04124 = 2.44949 (√6), p = 2·(1 − Φ(2.44949)) = 0.014306.
    let qa = &s.categories["qa"];
    check(qa, -5.0, Some(2.04124), 8, 8, 4);
    assert!(close(qa.ci95().unwrap(), 4.00083, 1e-4));
    assert!(close(qa.p_value.unwrap(), 0.014306, 1e-5), "{:?}", qa.p_value);
    // hay, two clusters: d = 80−100, 60−100, 60−60, 60−40 = −20, −40, 0, 20; Δ = −40/4 = −10.
    // Residuals −10, −30, 10, 30; per cluster ctx-1: −10 − 30 = −40, ctx-2: 10 + 30 = 40.
    // Miller: SE² = C/(C−1) · Σ_c S_c² / n² = 2/1 · (1600 + 1600)/16 = 400, SE = 20, CI 39.2.
    // (Unclustered it would be Σe²/(n(n−1)) = 2000/12 = 166.67, SE 12.91: the shared contexts widen it.)
    // z = 10/20 = 0.5, p = 2·(1 − Φ(0.5)) = 2·(1 − 0.691462) = 0.617075. Agreement h2: 1 of 4.
    let hay = &s.tasks["hay"];
    check(hay, -10.0, Some(20.0), 4, 2, 1);
    assert!(close(hay.ci95().unwrap(), 39.2, 1e-9));
    assert_eq!(s.categories["needle"], *hay, "one task: the category is the task");
    assert!(close(hay.p_value.unwrap(), 0.617075, 1e-5));
    // average = mean of the categories: Δ = (−5 − 10)/2 = −7.5, SE² = (25/6 + 400)/2² = 101.0417,
    // SE = 10.05195, CI 19.7018; z = 7.5/10.05195 = 0.746124, p = 2·(1 − Φ(0.746124)) = 0.455593.
    // Agreement pooled: (1 + 3 + 1)/12 = 0.41667; clusters 4 + 4 + 2 = 10.
    let avg = s.average.as_ref().unwrap();
    check(avg, -7.5, Some(10.05195), 12, 10, 5);
    assert!(close(avg.ci95().unwrap(), 19.7018, 1e-3));
    assert!(close(avg.p_value.unwrap(), 0.455593, 1e-5));
    assert!(close(avg.agreement().unwrap(), 5.0 / 12.0, 1e-12));

    // kivi-2bit: d = −10 on all eight qa samples (SE 0, Δ ≠ 0: p = 0), 0 on hay (SE 0, Δ = 0: p = 1).
    let k = row(&p, KIVI);
    check(&k.categories["qa"], -10.0, Some(0.0), 8, 8, 0);
    check(&k.categories["needle"], 0.0, Some(0.0), 4, 2, 4);
    check(k.average.as_ref().unwrap(), -5.0, Some(0.0), 12, 10, 4);
    assert_eq!((k.categories["qa"].p_value, k.categories["needle"].p_value, k.average.as_ref().unwrap().p_value), (Some(0.0), Some(1.0), Some(0.0)));

    // snapkv 8x: one pair, d = 20 − 50 = −30: no SE, no p-value, not tested.
    let s8 = row(&p, SNAP8);
    check(&s8.categories["qa"], -30.0, None, 1, 1, 0);
    assert_eq!(s8.average.as_ref().unwrap().p_value, None);
    assert!(!s8.categories.contains_key("needle"));
    // other has no full cache: nothing pairs.
    let o = row(&p, OTHER);
    assert_eq!((o.full.as_deref(), o.pairs(), o.average.is_none(), o.categories.is_empty()), (None, 0, true, true));
}

#[test]
fn delta_of_a_fully_paired_row_is_the_difference_of_its_leaderboard_scores() {
    let dir = tempfile::tempdir().unwrap();
    let (lb, p) = build(dir.path(), &cells());
    let lrow = |label: &str| lb.rows.iter().find(|r| r.model == "tiny" && r.method_label == label).unwrap();
    let (full, kivi) = (lrow("full"), lrow("kivi-2bit"));
    // full: qa = (55 + 65)/2 = 60, needle 75, average 67.5; kivi-2bit: qa = (45 + 55)/2 = 50, needle 75, average 62.5.
    assert!(close(full.average.unwrap(), 67.5, 1e-9) && close(kivi.average.unwrap(), 62.5, 1e-9));
    let k = row(&p, KIVI);
    assert!(close(k.average.as_ref().unwrap().delta, kivi.average.unwrap() - full.average.unwrap(), 1e-9));
    for c in ["qa", "needle"] {
        assert!(close(k.categories[c].delta, kivi.categories[c].mean - full.categories[c].mean, 1e-9), "{c}");
    }
}

#[test]
fn holm_correction_removes_an_uncorrected_significance() {
    let dir = tempfile::tempdir().unwrap();
    let (_lb, p) = build(dir.path(), &cells());
    // The family: every category and average cell with an SE: kivi-2bit qa (p 0), needle (p 1),
    // average (p 0); snapkv 2x qa (0.014306), needle (0.617075), average (0.455593). snapkv 8x
    // (no SE) and other (no pairs) are not tested. m = 6.
    assert_eq!(p.tests, 6);
    // Sorted: 0, 0, 0.014306, 0.455593, 0.617075, 1. Holm thresholds α/(m − k + 1):
    // k=1: 0 ≤ 0.05/6 = 0.00833 ✓; k=2: 0 ≤ 0.05/5 = 0.01 ✓; k=3: 0.014306 > 0.05/4 = 0.0125 ✗, stop.
    // So snapkv 2x qa, significant uncorrected (0.014306 < 0.05), is not after the correction.
    let k = row(&p, KIVI);
    assert!(k.categories["qa"].holm_significant && k.average.as_ref().unwrap().holm_significant);
    assert!(!k.categories["needle"].holm_significant);
    let s = row(&p, SNAP2);
    assert!(s.categories["qa"].p_value.unwrap() < 0.05);
    assert!(!s.categories["qa"].holm_significant, "0.014306 > 0.05/4 at rank 3");
    assert!(!s.categories["needle"].holm_significant && !s.average.as_ref().unwrap().holm_significant);
    assert!(p.rows.iter().flat_map(|r| r.tasks.values()).all(|t| !t.holm_significant), "tasks are not in the family");

    // Without kivi-2bit the family is snapkv 2x's three cells (m = 3): 0.014306 ≤ 0.05/3 = 0.016667
    // ✓, then 0.455593 > 0.05/2 ✗: now qa is significant.
    let dir = tempfile::tempdir().unwrap();
    let without: Vec<_> = cells().into_iter().filter(|(i, _)| i.method_label != "kivi-2bit").collect();
    let (_lb, p) = build(dir.path(), &without);
    assert_eq!(p.tests, 3);
    let s = row(&p, SNAP2);
    assert!(s.categories["qa"].holm_significant && !s.categories["needle"].holm_significant && !s.average.as_ref().unwrap().holm_significant);
}

#[test]
fn samples_pair_only_under_the_same_seed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cells = cells();
    for (info, _) in cells.iter_mut().filter(|(i, _)| i.method_label == "kivi-2bit" && i.task == "hay") {
        info.seed = 7;
    }
    let (_lb, p) = build(dir.path(), &cells);
    let k = row(&p, KIVI);
    assert!(!k.categories.contains_key("needle") && !k.tasks.contains_key("hay"), "other seed, other samples");
    assert_eq!(k.pairs(), 8);
}

fn md_cells(line: &str) -> Vec<String> {
    line.trim().trim_matches('|').split('|').map(|c| c.trim().to_string()).collect()
}

#[test]
fn reports_carry_the_paired_section_csv_and_html_table() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    write_run(&run, &run_info("0/1"), &cells());
    let out = dir.path().join("report");
    let summary = write_reports(&[run], &out, false).unwrap();
    assert!(summary.files.iter().any(|f| f.ends_with("paired.csv")));

    let md = fs::read_to_string(out.join("leaderboard.md")).unwrap();
    let at = md.find("\n## Difference from the full cache (paired)\n").expect("the section");
    let lb_part = &md[..at];
    assert!(lb_part.contains("\n## tiny\n") && !lb_part.contains("Δ"), "the section follows the leaderboard");
    let section = &md[at..];
    for words in ["C/(C−1)", "arXiv:2411.00640", "`context_id`", "Holm–Bonferroni", "over all 6 category and average cells", "*agreement*", "*clusters*"] {
        assert!(section.contains(words), "{words}:\n{section}");
    }
    let tiny = &section[section.find("\n### tiny\n").unwrap()..];
    let rows: Vec<Vec<String>> = tiny.lines().filter(|l| l.starts_with('|')).map(md_cells).collect();
    assert_eq!(rows[0], ["method", "budget", "needle", "qa", "average", "agreement", "pairs", "clusters"]);
    assert_eq!(rows[2], ["kivi-2bit", "–", "+0.0 ± 0.0", "-10.0 ± 0.0 *", "-5.0 ± 0.0 *", "33.3%", "12", "10"]);
    assert_eq!(rows[3], ["snapkv", "2x", "-10.0 ± 39.2", "-5.0 ± 4.0", "-7.5 ± 19.7", "41.7%", "12", "10"]);
    assert_eq!(rows[4], ["snapkv", "8x", "—", "-30.0", "-30.0", "0.0%", "1", "1"]);
    assert!(tiny.contains("Samples without a full-cache counterpart, left out: snapkv 2x 1 of 13."), "{tiny}");
    let other = &section[section.find("\n### other\n").unwrap()..section.find("\n### tiny\n").unwrap()];
    assert!(other.contains("No full-cache row for this model"), "{other}");
    let o: Vec<Vec<String>> = other.lines().filter(|l| l.starts_with('|')).map(md_cells).collect();
    assert_eq!(o[0], ["method", "budget", "qa", "average", "agreement", "pairs", "clusters"]);
    assert_eq!(o[2], ["snapkv", "2x", "—", "—", "—", "0", "0"]);

    let csv_text = fs::read_to_string(out.join("paired.csv")).unwrap();
    let mut r = csv::Reader::from_reader(csv_text.as_bytes());
    let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(
        header,
        [
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
            "se_within_one_context"
        ]
    );
    let lines: Vec<Vec<String>> = r.records().map(|x| x.unwrap().iter().map(String::from).collect()).collect();
    // (other: qa, average) + 3 tiny rows × (needle, qa, average)
    assert_eq!(lines.len(), 2 + 9);
    let find = |label: &str, ratio: &str, cat: &str| {
        lines.iter().find(|l| l[0] == "tiny" && l[2] == label && l[3] == ratio && l[4] == cat).unwrap_or_else(|| panic!("{label} {ratio} {cat}"))
    };
    assert_eq!(find("snapkv", "2", "qa")[5..], ["8", "8", "-5.0000", "4.0008", "1.4306e-2", "false", "0.5000", "false"]);
    assert_eq!(find("snapkv", "2", "needle")[5..], ["4", "2", "-10.0000", "39.2000", "6.1708e-1", "false", "0.2500", "false"]);
    assert_eq!(find("snapkv", "2", "average")[5..], ["12", "10", "-7.5000", "19.7018", "4.5559e-1", "false", "0.4167", "false"]);
    assert_eq!(find("kivi-2bit", "", "qa")[5..], ["8", "8", "-10.0000", "0.0000", "0.0000e0", "true", "0.0000", "false"]);
    assert_eq!(find("snapkv", "8", "needle")[5..], ["0", "0", "", "", "", "false", "", "false"]);
    assert_eq!(find("snapkv", "8", "average")[5..], ["1", "1", "-30.0000", "", "", "false", "0.0000", "false"]);
    assert_eq!(lines[0][..5], ["other", "snapkv", "snapkv", "2", "qa"]);
    assert_eq!(lines[0][5..], ["0", "0", "", "", "", "false", "", "false"]);

    let html = fs::read_to_string(out.join("index.html")).unwrap();
    assert!(html.contains("<h2 id=\"paired\">Difference from the full cache (paired)</h2>") && html.contains("href=\"#paired\""));
    assert!(html.contains(">-10.0<span class=\"ci\">± 0.0</span> *</td>"), "the Holm mark in the HTML table");
    assert!(html.contains(">-5.0<span class=\"ci\">± 4.0</span></td>") && html.contains("No full-cache row for this model"));
    assert!(html.contains("title=\"8 pairs in 8 clusters, p = 1.43e-2\""), "hover tip");
}
