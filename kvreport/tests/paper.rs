//! compare_paper on a run directory shaped like the paper's Llama-3 results
//! (tests/fixtures/paper_shaped, see its README).

use std::path::PathBuf;

use kvreport::paper::{compare_paper, comparisons, paper_results};
use kvreport::{load_runs, write_reports, Leaderboard};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/paper_shaped")
}

fn cells(line: &str) -> Vec<String> {
    line.trim().trim_matches('|').split('|').map(|c| c.trim().to_string()).collect()
}

#[test]
fn compare_paper_prints_run_paper_and_difference_side_by_side() {
    let loaded = load_runs(&[fixture()]).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let lb = Leaderboard::build(&loaded.cells);
    let md = compare_paper(&lb.rows);
    assert!(md.starts_with("# Comparison with the paper\n"));
    assert!(md.contains("\n## llama3-8b-instruct (paper: llama3-8b-instruct)\n"));
    assert!(md.contains("9 numbers compared"), "{md}");

    let rows: Vec<Vec<String>> = md.lines().filter(|l| l.starts_with('|')).map(cells).collect();
    assert_eq!(rows[0], ["method", "budget", "paper method", "category", "kvbench", "paper", "Δ", "source"]);
    let body: Vec<Vec<String>> = rows[2..].iter().map(|r| r[..7].to_vec()).collect();
    let expect: Vec<Vec<&str>> = vec![
        vec!["full", "–", "Baseline", "Single-Doc QA", "36.83", "36.83", "+0.00"],
        vec!["full", "–", "Baseline", "Synthetic", "67.00", "67.00", "+0.00"],
        vec!["full", "–", "Baseline", "Code", "54.11", "54.11", "+0.00"],
        vec!["h2o", "4x", "H2O 4x", "Single-Doc QA", "34.97", "34.97", "+0.00"],
        vec!["h2o", "4x", "H2O 4x", "Synthetic", "66.00", "66.00", "+0.00"],
        vec!["h2o", "4x", "H2O 4x", "Code", "50.00", "53.01", "-3.01"],
        vec!["kivi-2bit", "–", "KIVI-2bit", "Single-Doc QA", "36.34", "36.34", "+0.00"],
        vec!["kivi-2bit", "–", "KIVI-2bit", "Synthetic", "67.50", "67.50", "+0.00"],
        vec!["kivi-2bit", "–", "KIVI-2bit", "Code", "48.75", "48.75", "+0.00"],
    ];
    assert_eq!(body, expect);
    // snapkv has no published counterpart
    assert!(!md.contains("| snapkv"));
    // every compared number cites its source section
    assert!(rows[2..].iter().all(|r| r[7].contains("§4.2")));
}

#[test]
fn comparisons_carry_numbers_and_sources() {
    let loaded = load_runs(&[fixture()]).unwrap();
    let lb = Leaderboard::build(&loaded.cells);
    let c = comparisons(&lb.rows, &paper_results().unwrap());
    assert_eq!(c.len(), 9);
    let h2o_code = c.iter().find(|c| c.paper_method == "H2O 4x" && c.category == "Code").unwrap();
    assert!((h2o_code.difference() + 3.01).abs() < 1e-9);
}

#[test]
fn write_reports_writes_the_comparison_when_asked() {
    let out = tempfile::tempdir().unwrap();
    let s = write_reports(&[fixture()], out.path(), true).unwrap();
    assert!(s.files.iter().any(|f| f.ends_with("paper_comparison.md")));
    let text = std::fs::read_to_string(out.path().join("paper_comparison.md")).unwrap();
    assert_eq!(text, compare_paper(&Leaderboard::build(&load_runs(&[fixture()]).unwrap().cells).rows));
    let out2 = tempfile::tempdir().unwrap();
    let s = write_reports(&[fixture()], out2.path(), false).unwrap();
    assert!(!s.files.iter().any(|f| f.ends_with("paper_comparison.md")));
    assert!(!out2.path().join("paper_comparison.md").exists());
}

#[test]
fn the_ambiguous_llama3_streamingllm_4x_cell_is_marked() {
    let loaded = load_runs(&[fixture()]).unwrap();
    let mut rows = Leaderboard::build(&loaded.cells).rows;
    // The fixture's H2O 4x row, relabelled as StreamingLLM at the same budget and at 2x.
    let h2o = rows.iter().find(|r| r.method == "h2o").unwrap().clone();
    let as_stream = |ratio: f64| {
        let mut r = h2o.clone();
        r.method = "streamingllm".into();
        r.method_label = "streamingllm".into();
        r.ratio = Some(ratio);
        r
    };
    let plain = compare_paper(&rows);
    assert!(!plain.contains('‡'), "nothing ambiguous is compared: {plain}");
    rows.push(as_stream(2.0));
    let two = compare_paper(&rows);
    assert!(!two.contains('‡'), "2x is not ambiguous: {two}");
    rows.push(as_stream(4.0));
    let md = compare_paper(&rows);
    let marked: Vec<Vec<String>> = md.lines().filter(|l| l.starts_with('|') && l.contains('‡')).map(cells).collect();
    assert!(!marked.is_empty());
    assert!(marked.iter().all(|r| r[2] == "StreamLLM 4x"), "{marked:?}");
    assert!(md.contains("\n‡ ambiguous: the paper's source has two Llama-3 StreamingLLM 4x sets"), "{md}");
    assert!(md.contains("35.50"), "the other set's average is given");
}
