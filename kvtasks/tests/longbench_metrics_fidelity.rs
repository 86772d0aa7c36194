//! Fidelity of kvbench's LongBench metrics to the official ones: the reference script computes
//! LongBench's metric functions with the official Python packages (rouge 1.0.1, fuzzywuzzy on
//! difflib, jieba) on >= 300 generated pairs per metric and on synthetic prediction files for all
//! 21 subsets; every pair must agree to 1e-9, and every rounded dataset score, LongBench-E bucket,
//! category average and the 15-task average must agree exactly.

use std::path::{Path, PathBuf};
use std::process::Command;

use kvtasks::longbench::metrics::jieba_cut;
use kvtasks::longbench::score::{bucket_score, dataset_score, numpy_round2, score_predictions_file, Buckets};
use kvtasks::longbench::Metric;
use serde_json::Value;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Run the reference script (python from KVBENCH_PYTHON, default <root>/.venv/bin/python).
fn reference_cases(out: &Path) -> Value {
    let root = workspace_root();
    let python = std::env::var_os("KVBENCH_PYTHON").map(PathBuf::from).unwrap_or_else(|| root.join(".venv/bin/python"));
    let script = root.join("scripts/reference/longbench_metrics_reference.py");
    let result = Command::new(&python).arg(&script).arg("cases").arg(out).output();
    let output = match result {
        Ok(o) => o,
        Err(e) => panic!(
            "cannot run the reference python {} ({e}); set KVBENCH_PYTHON to a python with rouge==1.0.1, \
             fuzzywuzzy, jieba and numpy installed",
            python.display()
        ),
    };
    assert!(output.status.success(), "reference script {} failed ({}):\n{}", script.display(), output.status, String::from_utf8_lossy(&output.stderr));
    let text = std::fs::read_to_string(out).expect("reference output written");
    serde_json::from_str(&text).expect("reference output is JSON")
}

fn strings(v: &Value) -> Option<Vec<String>> {
    v.as_array().map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
}

fn check_metrics(reference: &Value) {
    let metrics = reference["metrics"].as_object().expect("metrics object");
    assert_eq!(metrics.len(), 9, "all nine metric functions are covered");
    let mut mismatches = Vec::new();
    for (name, rows) in metrics {
        let metric = Metric::from_function_name(name).unwrap_or_else(|| panic!("unknown metric {name}"));
        let rows = rows.as_array().expect("rows");
        assert!(rows.len() >= 300, "{name}: only {} pairs", rows.len());
        let mut max_diff = 0.0f64;
        for (i, row) in rows.iter().enumerate() {
            let pred = row["pred"].as_str().expect("pred");
            let gt = row["gt"].as_str().expect("gt");
            let classes = strings(&row["all_classes"]);
            let got = metric.score(pred, gt, classes.as_deref());
            // the repr string, not the JSON number: serde_json's default float parsing may be off by an ulp
            let want = row["score_repr"].as_str().map(|r| r.parse::<f64>().expect("repr parses"));
            match (want, got) {
                (Some(want), Ok(have)) => {
                    let d = (want - have).abs();
                    max_diff = max_diff.max(d);
                    if d > 1e-9 {
                        mismatches.push(format!("{name}[{i}]: python {want} rust {have}\n  pred={pred:?}\n  gt={gt:?}"));
                    }
                }
                (None, Err(_)) => {} // the official code raises here too (e.g. IndexError)
                (want, have) => mismatches.push(format!("{name}[{i}]: python {want:?} (error {}) rust {have:?}\n  pred={pred:?}\n  gt={gt:?}", row["error"])),
            }
        }
        eprintln!("{name}: {} pairs, max |rust - python| = {max_diff:e}", rows.len());
    }
    assert!(mismatches.is_empty(), "{} metric mismatches:\n{}", mismatches.len(), mismatches.iter().take(25).cloned().collect::<Vec<_>>().join("\n"));
}

fn bucket_json(b: &Buckets) -> Value {
    serde_json::json!({"0-4k": b.short, "4-8k": b.medium, "8k+": b.long})
}

fn check_aggregates(reference: &Value, dir: &Path) {
    let datasets = reference["datasets"].as_object().expect("datasets object");
    assert_eq!(datasets.len(), 21);
    let path = dir.join("predictions.jsonl");
    let mut lines = String::new();
    for (name, d) in datasets {
        for s in d["samples"].as_array().expect("samples") {
            let mut line = s.clone();
            line["dataset"] = Value::String(name.clone());
            lines.push_str(&line.to_string());
            lines.push('\n');
        }
    }
    std::fs::write(&path, lines).expect("write predictions");

    let report = score_predictions_file(&path, false).expect("score");
    let report_e = score_predictions_file(&path, true).expect("score -e");
    let mut errors = Vec::new();
    for (name, d) in datasets {
        let have = report.datasets.iter().find(|x| &x.dataset == name).and_then(|x| x.score);
        if have != d["score"].as_f64() {
            errors.push(format!("{name}: python {} rust {have:?}", d["score"]));
        }
        let have_e = report_e.datasets.iter().find(|x| &x.dataset == name).and_then(|x| x.buckets.as_ref()).map(bucket_json);
        if have_e.as_ref() != Some(&d["score_e"]) {
            errors.push(format!("{name} -e: python {} rust {have_e:?}", d["score_e"]));
        }
    }
    let summary = &reference["summary"];
    for c in &report.categories {
        let want = summary["task_average_result"][c.category].as_f64();
        if c.score != want {
            errors.push(format!("category {}: python {want:?} rust {:?}", c.category, c.score));
        }
    }
    if report.average_15 != summary["LB_average_result"].as_f64() {
        errors.push(format!("average: python {} rust {:?}", summary["LB_average_result"], report.average_15));
    }
    eprintln!("{}", report.to_text());
    assert!(errors.is_empty(), "aggregate mismatches:\n{}", errors.join("\n"));
}

/// `round(100*sum/N, 2)` (Python), `round(100*np.mean, 2)` (numpy, pairwise sum) and
/// `np.round(sum/len, 2)` on score lists chosen to land near rounding ties.
fn check_rounding(reference: &Value) {
    let parse = |v: &Value| -> f64 { v.as_str().and_then(|s| s.parse().ok()).expect("repr float") };
    let cases = reference["rounding"].as_array().expect("rounding cases");
    let mut errors = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let xs: Vec<f64> = c["scores"].as_array().expect("scores").iter().map(parse).collect();
        let (scorer, scorer_e, summary) = (parse(&c["scorer"]), parse(&c["scorer_e"]), parse(&c["summary"]));
        if dataset_score(&xs) != Some(scorer) {
            errors.push(format!("[{i}] scorer: python {scorer} rust {:?}", dataset_score(&xs)));
        }
        if bucket_score(&xs) != Some(scorer_e) {
            errors.push(format!("[{i}] scorer_e: python {scorer_e} rust {:?}", bucket_score(&xs)));
        }
        let mut total = 0.0;
        for x in &xs {
            total += x;
        }
        if numpy_round2(total / xs.len() as f64) != summary {
            errors.push(format!("[{i}] summary: python {summary} rust {}", numpy_round2(total / xs.len() as f64)));
        }
    }
    assert!(cases.len() >= 1000);
    assert!(errors.is_empty(), "{} rounding mismatches:\n{}", errors.len(), errors.iter().take(20).cloned().collect::<Vec<_>>().join("\n"));
}

/// jieba-rs must segment exactly like Python's `jieba.cut(text, cut_all=False)`.
fn check_jieba(reference: &Value) {
    let cases = reference["jieba"].as_array().expect("jieba cases");
    assert!(cases.len() >= 300);
    let mut errors = Vec::new();
    for c in cases {
        let text = c["text"].as_str().expect("text");
        let want = strings(&c["tokens"]).expect("tokens");
        let have = jieba_cut(text);
        if have != want {
            errors.push(format!("{text:?}\n  python {want:?}\n  rust   {have:?}"));
        }
    }
    assert!(errors.is_empty(), "{} segmentation mismatches:\n{}", errors.len(), errors.iter().take(10).cloned().collect::<Vec<_>>().join("\n"));
}

#[test]
fn metrics_and_aggregates_match_official_python() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reference = reference_cases(&dir.path().join("reference.json"));
    check_metrics(&reference);
    check_aggregates(&reference, dir.path());
    check_rounding(&reference);
    check_jieba(&reference);
}

/// `src/longbench/pyunicode.rs` is generated: regenerating it with the reference Python (the
/// tables follow that Python's Unicode version) gives the committed file byte for byte.
#[test]
fn the_generated_unicode_tables_match_their_generator() {
    let root = workspace_root();
    let python = std::env::var_os("KVBENCH_PYTHON").map(PathBuf::from).unwrap_or_else(|| root.join(".venv/bin/python"));
    let tmp = tempfile::tempdir().expect("temp dir");
    let out = tmp.path().join("pyunicode.rs");
    let o = Command::new(&python)
        .arg(root.join("scripts/reference/longbench_metrics_reference.py"))
        .arg("unicode-tables")
        .arg(&out)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the reference python {} ({e})", python.display()));
    assert!(o.status.success(), "unicode-tables failed:\n{}", String::from_utf8_lossy(&o.stderr));
    let committed = std::fs::read_to_string(root.join("kvtasks/src/longbench/pyunicode.rs")).expect("committed tables");
    let fresh = std::fs::read_to_string(&out).expect("regenerated tables");
    assert!(committed == fresh, "kvtasks/src/longbench/pyunicode.rs differs from what its generator writes now: regenerate it with `scripts/reference/longbench_metrics_reference.py unicode-tables kvtasks/src/longbench/pyunicode.rs` (and check the Unicode version in its header)");
}
