//! Leaderboard numbers against hand-computed means, and the content of every written report.

mod common;

use std::fs;

use common::*;
use kvreport::{load_runs, write_reports, Leaderboard};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9 * (1.0 + b.abs())
}

fn fixture_leaderboard() -> (tempfile::TempDir, Leaderboard) {
    let dir = tempfile::tempdir().unwrap();
    write_fixture(dir.path());
    let loaded = load_runs(&[dir.path().to_path_buf()]).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(loaded.cells.len(), 14);
    (dir, Leaderboard::build(&loaded.cells))
}

#[test]
fn leaderboard_numbers_equal_hand_computed_means() {
    let (_d, lb) = fixture_leaderboard();
    // order: model-b first (by model), full first, then label, then ratio ascending
    let names: Vec<(String, String)> = lb.rows.iter().map(|r| (r.model.clone(), r.display_name())).collect();
    let expect = [
        ("model-b", "full"),
        ("model-b", "snapkv 4x"),
        ("tiny-llama", "full"),
        ("tiny-llama", "kivi-2bit"),
        ("tiny-llama", "snapkv 2x"),
        ("tiny-llama", "snapkv 4x"),
    ];
    assert_eq!(names, expect.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>());
    assert_eq!(lb.categories, vec!["single_doc_qa", "code", "needle"]);

    let row = |name: &str| lb.rows.iter().find(|r| r.model == "tiny-llama" && r.display_name() == name).unwrap();
    let cat = |name: &str, c: &str| row(name).categories[c].mean;

    // needle: mean of 6 samples
    assert!(close(cat("full", "needle"), 100.0));
    assert!(close(cat("kivi-2bit", "needle"), 500.0 / 6.0));
    assert!(close(cat("snapkv 2x", "needle"), 500.0 / 6.0));
    assert!(close(cat("snapkv 4x", "needle"), 50.0));
    // single-doc QA (qasper) and code (lcc)
    assert!(close(cat("full", "single_doc_qa"), 60.0));
    assert!(close(cat("kivi-2bit", "single_doc_qa"), 170.0 / 3.0));
    assert!(close(cat("snapkv 2x", "single_doc_qa"), 50.0));
    assert!(close(cat("snapkv 4x", "single_doc_qa"), 30.0));
    assert!(close(cat("full", "code"), 60.0));
    assert!(close(cat("kivi-2bit", "code"), 55.0));
    assert!(close(cat("snapkv 4x", "code"), 30.0));
    // average = mean of the three category columns
    assert!(close(row("full").average.unwrap(), (60.0 + 60.0 + 100.0) / 3.0));
    assert!(close(row("kivi-2bit").average.unwrap(), (170.0 / 3.0 + 55.0 + 500.0 / 6.0) / 3.0));
    assert!(close(row("snapkv 4x").average.unwrap(), (30.0 + 30.0 + 50.0) / 3.0));

    // CI: qasper full scores 40, 60, 80: sd 20, n 3
    let ci = row("full").categories["single_doc_qa"].ci95.unwrap();
    assert!(close(ci, 1.96 * 20.0 / 3f64.sqrt()));
    // needle full: all 100 → zero width
    assert!(close(row("full").categories["needle"].ci95.unwrap(), 0.0));

    // measured figures
    let inputs: Vec<usize> = PASSKEY_INPUT.iter().chain(QASPER_INPUT.iter()).chain(LCC_INPUT.iter()).copied().collect();
    let total_in: usize = inputs.iter().sum();
    assert_eq!(row("full").records, 11);
    assert!(close(row("full").compression_ratio.unwrap(), 1.0));
    assert!(close(row("snapkv 4x").compression_ratio.unwrap(), 4.0));
    assert!(close(row("kivi-2bit").compression_ratio.unwrap(), 5.0));
    assert!(close(row("full").kv_bytes_held.unwrap(), total_in as f64 * 1000.0 / 11.0));
    let held4: f64 = inputs.iter().map(|&n| ((n as u64 * 1000) as f64 / 4.0) as u64 as f64).sum::<f64>() / 11.0;
    assert!(close(row("snapkv 4x").kv_bytes_held.unwrap(), held4));
    assert_eq!(row("full").peak_memory_bytes.unwrap(), BASE_PEAK + 4000 * 1000);
    assert!(close(row("full").prefill_tokens_per_s.unwrap(), 1000.0));
    assert!(close(row("kivi-2bit").prefill_tokens_per_s.unwrap(), 800.0));
    // the one-token qasper sample (999 tok/s) is left out
    assert!(close(row("full").decode_tokens_per_s.unwrap(), 20.0));
    assert!(close(row("snapkv 4x").decode_tokens_per_s.unwrap(), 24.0));
    assert_eq!(row("snapkv 2x").ratio, Some(2.0));
    assert_eq!(row("kivi-2bit").quant_bits, Some(2));
    assert_eq!(row("full").incomplete_cells, 0);
}

#[test]
fn per_task_averages_and_half_widths_equal_hand_computed_ones() {
    let (_d, lb) = fixture_leaderboard();
    // Tasks in category order (single_doc_qa, code, needle), each with its category.
    let tasks: Vec<(&str, &str)> = lb.tasks.iter().map(|(c, t)| (c.as_str(), t.as_str())).collect();
    assert_eq!(tasks, [("single_doc_qa", "longbench/qasper"), ("code", "longbench/lcc"), ("needle", "passkey")]);
    let b_tasks = lb.tasks_of("model-b");
    assert!(!b_tasks.is_empty() && b_tasks.len() < 3 && !b_tasks.iter().any(|(_, t)| t == "passkey"), "model-b has no passkey cells: {b_tasks:?}");

    let text = lb.to_tasks_csv().unwrap();
    let mut r = csv::Reader::from_reader(text.as_bytes());
    assert_eq!(r.headers().unwrap().iter().collect::<Vec<_>>(), ["model", "method", "method_label", "ratio", "category", "task", "mean", "ci95", "samples"]);
    let rows: Vec<csv::StringRecord> = r.records().map(|r| r.unwrap()).collect();
    let n_expected: usize = lb.rows.iter().map(|r| r.tasks.len()).sum();
    assert_eq!(rows.len(), n_expected);
    let find = |label: &str, ratio: &str, task: &str| {
        rows.iter()
            .find(|x| &x[0] == "tiny-llama" && &x[2] == label && &x[3] == ratio && x[5].rsplit('/').next() == Some(task))
            .unwrap_or_else(|| panic!("{label} {ratio} {task}"))
    };
    // qasper full scores 40, 60, 80: mean 60, sd 20, n 3.
    let q = find("full", "", "qasper");
    assert_eq!((&q[4], &q[6], &q[8]), ("single_doc_qa", "60.0000", "3"));
    assert!((q[7].parse::<f64>().unwrap() - 1.96 * 20.0 / 3f64.sqrt()).abs() < 1e-4, "{q:?}");
    // passkey under snapkv 4x: the fixture's six scores, mean and half-width computed here.
    let scores = common::passkey_scores("snapkv", Some(4.0));
    let m = scores.iter().sum::<f64>() / 6.0;
    let sd = (scores.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / 5.0).sqrt();
    let p = find("snapkv", "4", "passkey");
    assert!((p[6].parse::<f64>().unwrap() - m).abs() < 1e-4 && (p[7].parse::<f64>().unwrap() - 1.96 * sd / 6f64.sqrt()).abs() < 1e-4, "{p:?}");

    // The widest half-width is the largest ci95 in the file.
    let widest = rows.iter().filter_map(|x| x[7].parse::<f64>().ok()).fold(0.0, f64::max);
    let (ci, _, _) = lb.widest_task_ci().unwrap();
    assert!((ci - widest).abs() < 1e-4);
    let md = lb.to_tasks_markdown("fixture");
    assert!(md.contains("## tiny-llama") && md.contains("longbench/qasper") && md.contains("60.0 ± 22.6"), "{md}");
    assert!(md.contains(&format!("Widest 95% half-width of any task average: ±{:.2}", widest)), "{md}");
}

#[test]
fn csv_parses_back() {
    let (_d, lb) = fixture_leaderboard();
    let text = lb.to_csv().unwrap();
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(
        header,
        [
            "model",
            "method",
            "method_label",
            "ratio",
            "single_doc_qa",
            "single_doc_qa_ci95",
            "code",
            "code_ci95",
            "needle",
            "needle_ci95",
            "average",
            "compression_ratio",
            "kv_bytes_held",
            "peak_memory_bytes",
            "prefill_tokens_per_s",
            "decode_tokens_per_s",
            "records",
            "cells",
            "incomplete_cells",
            "kv_bytes_attended"
        ]
    );
    let rows: Vec<csv::StringRecord> = r.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), lb.rows.len());
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    for (rec, row) in rows.iter().zip(&lb.rows) {
        assert_eq!(&rec[col("model")], row.model);
        assert_eq!(&rec[col("method_label")], row.method_label);
        assert_eq!(rec[col("ratio")].parse::<f64>().ok(), row.ratio);
        let avg: f64 = rec[col("average")].parse().unwrap();
        assert!((avg - row.average.unwrap()).abs() < 1e-4);
        assert!(rec[col("peak_memory_bytes")].parse::<u64>().is_ok());
    }
    // model-b has no needle column values: empty fields
    assert_eq!(&rows[0][col("needle")], "");
    let snap4 = &rows[5];
    assert_eq!(&snap4[col("ratio")], "4");
    assert_eq!(&snap4[col("needle")], "50.0000");
    assert_eq!(&snap4[col("compression_ratio")], "4.0000");
}

#[test]
fn markdown_has_the_papers_layout() {
    let (_d, lb) = fixture_leaderboard();
    let md = lb.to_markdown(EXPERIMENT);
    assert!(md.starts_with("# Leaderboard: fixture-exp\n"));
    assert!(md.contains("\n## tiny-llama\n") && md.contains("\n## model-b\n"));
    let cells = |line: &str| line.trim().trim_matches('|').split('|').map(|c| c.trim().to_string()).collect::<Vec<_>>();
    let headers: Vec<Vec<String>> = md.lines().filter(|l| l.starts_with("| method")).map(cells).collect();
    assert_eq!(headers.len(), 2);
    assert_eq!(
        headers[1],
        ["method", "budget", "single_doc_qa", "code", "needle", "average", "ratio", "KV held", "peak memory", "prefill tok/s", "decode tok/s"]
    );
    let full = md.lines().filter(|l| l.starts_with("| full")).map(cells).nth(1).unwrap();
    assert_eq!(full[1], "–");
    assert_eq!(full[2], format!("60.0 ± {:.1}", 1.96 * 20.0 / 3f64.sqrt()));
    assert_eq!(full[4], "100.0 ± 0.0");
    assert_eq!(full[5], "73.3");
    assert_eq!(full[6], "1.00x");
    assert!(full[7].ends_with("MiB"), "{}", full[7]);
    assert_eq!(full[9], "1000.0");
    assert_eq!(full[10], "20.0");
    let snap4 = md.lines().filter(|l| l.starts_with("| snapkv")).map(cells).next_back().unwrap();
    assert_eq!(snap4[1], "4x");
}

#[test]
fn reports_are_written_and_html_is_safe() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    write_fixture(&run);
    let out = dir.path().join("report");
    let summary = write_reports(&[run], &out, true).unwrap();
    let names: Vec<String> = summary.files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(
        names,
        ["leaderboard.csv", "leaderboard.md", "paired.csv", "tasks.csv", "tasks.md", "index.html", "examples.md", "examples.html", "paper_comparison.md"]
    );
    assert_eq!(summary.cells, 14);
    assert_eq!(fs::read_to_string(out.join("leaderboard.md")).unwrap(), summary.leaderboard_markdown);
    // no temp files left behind
    assert_eq!(fs::read_dir(&out).unwrap().count(), 9);

    let html = fs::read_to_string(out.join("index.html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    // self-contained: no scripts, no external resources
    assert!(!html.contains("<script"), "a prediction or page script leaked into index.html");
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http") && !html.contains("@import"));
    // header provenance
    assert!(html.contains("fixture-exp") && html.contains("deadbeefcafe0123456789") && html.contains("2.13.0"));
    // the three kinds of chart
    assert!(html.matches("<svg").count() >= 2 + 4 + 6, "{} svgs", html.matches("<svg").count());
    assert!(html.contains("Quality vs. compression — tiny-llama"));
    assert!(html.contains("Decode speed vs. context — tiny-llama"));
    assert!(html.contains("Peak memory vs. context — tiny-llama"));
    assert!(html.contains("class=\"chart heat\""));
    assert!(html.contains("needle depth") && html.contains("context length"));
    assert!(html.contains(">50%<") && html.contains(">1,024<"));
    for family in ["full cache", "kivi", "snapkv"] {
        assert!(html.contains(&format!(">{family}</text>")), "legend entry {family}");
    }

    let ex_html = fs::read_to_string(out.join("examples.html")).unwrap();
    assert!(!ex_html.contains("<script"));
    assert!(ex_html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(ex_html.contains("<mark>7654321.</mark>"));
    assert!(ex_html.contains("diverges at word 5"));

    let ex_md = fs::read_to_string(out.join("examples.md")).unwrap();
    assert!(ex_md.contains("The pass key is **7654321.**"));
    assert!(ex_md.contains("diverges at word 5"));
    assert!(ex_md.contains("\\<script\\>"));
    // first three samples of the full cell, for each model and task
    assert!(ex_md.contains("### Sample L512-D0\n") && ex_md.contains("### Sample L512-D1\n"));
    assert!(!ex_md.contains("### Sample L1024-D0\n"));

    let paper = fs::read_to_string(out.join("paper_comparison.md")).unwrap();
    assert!(paper.contains("No (model, method, budget, category) of this run has a published counterpart"));
}

#[test]
fn reports_do_not_depend_on_input_order_or_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    write_fixture(&a);
    write_fixture(&b);
    let one = dir.path().join("one");
    let two = dir.path().join("two");
    write_reports(std::slice::from_ref(&a), &one, false).unwrap();
    write_reports(&[b, a], &two, false).unwrap();
    for f in ["leaderboard.csv", "leaderboard.md", "paired.csv", "index.html", "examples.md", "examples.html"] {
        assert!(fs::read(one.join(f)).unwrap() == fs::read(two.join(f)).unwrap(), "{f} differs");
    }
}

#[test]
fn attended_bytes_get_their_own_column_where_they_differ_from_held() {
    let dir = tempfile::tempdir().unwrap();
    write_fixture(dir.path());
    let mut loaded = load_runs(&[dir.path().to_path_buf()]).unwrap();
    // A retrieval-like method on tiny-llama: it attends to a quarter of what it holds.
    let mut expected = Vec::new();
    for c in loaded.cells.iter_mut().filter(|c| c.info.model == "tiny-llama" && c.info.method_label == "snapkv" && c.info.ratio == Some(4.0)) {
        for r in &mut c.records {
            r.kv_bytes_attended = r.kv_bytes_held / 4;
            expected.push(r.kv_bytes_attended as f64);
        }
    }
    assert!(!expected.is_empty());
    let mean = expected.iter().sum::<f64>() / expected.len() as f64;
    let lb = Leaderboard::build(&loaded.cells);
    let row = lb.rows.iter().find(|r| r.model == "tiny-llama" && r.display_name() == "snapkv 4x").unwrap();
    assert!(close(row.kv_bytes_attended.unwrap(), mean));
    assert!(row.kv_bytes_attended < row.kv_bytes_held);
    let md = lb.to_markdown(EXPERIMENT);
    let headers: Vec<&str> = md.lines().filter(|l| l.starts_with("| method")).collect();
    // model-b's table (first) has no such column; tiny-llama's has it, after KV held.
    assert!(!headers[0].contains("KV attended"), "{}", headers[0]);
    assert!(
        headers[1].contains("| KV held | KV attended | peak memory |") || headers[1].contains("KV held") && headers[1].contains("KV attended"),
        "{}",
        headers[1]
    );
    let csv = lb.to_csv().unwrap();
    let mut rdr = csv::Reader::from_reader(csv.as_bytes());
    let h = rdr.headers().unwrap().clone();
    let col = h.iter().position(|x| x == "kv_bytes_attended").expect("kv_bytes_attended column");
    let held_col = h.iter().position(|x| x == "kv_bytes_held").unwrap();
    for rec in rdr.records() {
        let rec = rec.unwrap();
        let (a, b): (f64, f64) = (rec[col].parse().unwrap(), rec[held_col].parse().unwrap());
        if &rec[0] == "tiny-llama" && &rec[2] == "snapkv" && &rec[3] == "4" {
            assert!((a - mean).abs() < 0.1);
        } else {
            assert_eq!(a, b, "{rec:?}");
        }
    }
}

#[test]
fn bench_files_add_a_speed_section_to_the_page() {
    let dir = tempfile::tempdir().unwrap();
    write_fixture(dir.path());
    let bench_dir = dir.path().join("bench");
    fs::create_dir_all(&bench_dir).unwrap();
    let row = |label: &str, ctx: usize, decode: f64| {
        serde_json::json!({"model": "tiny-llama", "method": label, "label": label, "context_tokens": ctx, "new_tokens": 8, "repeats": 3,
            "prefill_tokens_per_s": 500.0, "ttft_seconds": ctx as f64 / 500.0, "decode_tokens_per_s": decode, "kv_bytes_held": 1u64 << 20,
            "kv_bytes_attended": 1u64 << 20, "kv_bytes_full": 1u64 << 20, "peak_rss_bytes": 1u64 << 30, "prefill_ceiling_tokens_per_s": 900.0,
            "decode_ceiling_tokens_per_s": 40.0, "prefill_pct_of_ceiling": 55.0, "decode_pct_of_ceiling": decode / 40.0 * 100.0,
            "threads": 2, "device": "cpu (2 threads)", "dtype": "f32"})
    };
    let file = serde_json::json!({"calibration": {}, "rows": [row("full", 1024, 24.0), row("full", 4096, 19.0), row("snapkv(ratio=8)", 1024, 21.0)]});
    fs::write(bench_dir.join("bench.json"), file.to_string()).unwrap();
    let out = dir.path().join("report");
    kvreport::write_reports_with_bench(&[dir.path().to_path_buf()], &out, false, std::slice::from_ref(&bench_dir)).unwrap();
    let html = fs::read_to_string(out.join("index.html")).unwrap();
    assert!(html.contains("id=\"bench\""), "no bench section");
    assert!(html.contains("Decode speed — tiny-llama") && html.contains("full ceiling (estimate)"));
    assert!(html.contains("snapkv(ratio=8)") && html.contains(">24.00<"), "bench table missing");
    // Without bench files there is no such section; a file that is not a bench file is an error naming it.
    write_reports(&[dir.path().to_path_buf()], &out, false).unwrap();
    assert!(!fs::read_to_string(out.join("index.html")).unwrap().contains("id=\"bench\""));
    fs::write(bench_dir.join("bench.json"), "{\"rows\": 3}").unwrap();
    let err = kvreport::write_reports_with_bench(&[dir.path().to_path_buf()], &out, false, std::slice::from_ref(&bench_dir)).unwrap_err().to_string();
    assert!(err.contains("bench.json") && err.contains("not a kvbench bench file"), "{err}");
}

#[test]
fn rows_timed_in_a_shared_run_are_marked_and_explained() {
    let dir = tempfile::tempdir().unwrap();
    let mut cells = cells();
    // One snapkv cell's records measured in a shared run.
    let (_, recs) = cells.iter_mut().find(|(i, _)| i.method == "snapkv").expect("the fixture has snapkv cells");
    for r in recs.iter_mut() {
        r.timing = Some(kvreport::record::TIMING_SHARED.to_string());
    }
    write_run(dir.path(), &run_info("0/1"), &cells);
    let loaded = load_runs(&[dir.path().to_path_buf()]).unwrap();
    let md = Leaderboard::build(&loaded.cells).to_markdown(EXPERIMENT);
    let marked: Vec<&str> = md.lines().filter(|l| l.starts_with('|') && l.contains('‡')).collect();
    assert_eq!(marked.len(), 1, "exactly the shared row is marked:\n{md}");
    assert!(marked[0].starts_with("| snapkv ‡"), "{}", marked[0]);
    assert!(md.contains("\n‡ the row's time and memory figures") && md.contains("--isolated"), "{md}");
    // Without shared records: no mark, no note.
    let (_d, lb) = fixture_leaderboard();
    assert!(!lb.to_markdown(EXPERIMENT).contains('‡'));
}

#[test]
fn speed_and_memory_charts_plot_the_isolated_measurements_not_the_shared_timings() {
    let dir = tempfile::tempdir().unwrap();
    let mut cells = cells();
    for (_, recs) in cells.iter_mut() {
        for r in recs.iter_mut() {
            r.timing = Some(kvreport::record::TIMING_SHARED.to_string());
            r.decode_tokens_per_s = 111.0;
        }
    }
    write_run(dir.path(), &run_info("0/1"), &cells);
    // Every cell measured alone: one sample at 777 input tokens decoding at 4321 tok/s.
    for (info, recs) in &cells {
        let mut m = recs[0].clone();
        m.timing = None;
        m.input_tokens = 777;
        m.generated_tokens = 5;
        m.decode_tokens_per_s = 4321.0;
        let line = serde_json::to_string(&m).unwrap() + "\n";
        fs::write(dir.path().join("cells").join(&info.id).join(kvreport::record::MEASURE_FILE), line).unwrap();
    }
    let out = dir.path().join("report");
    write_reports(&[dir.path().to_path_buf()], &out, false).unwrap();
    let html = fs::read_to_string(out.join("index.html")).unwrap();
    let speed = &html[html.find("id=\"speed\"").unwrap()..];
    assert!(speed.contains("one marker per sample run alone (kvbench run --measure)"), "the timed charts say where their points come from");
    assert!(speed.contains("777 input tokens, 4321.00"), "the measured sample is plotted");
    assert!(!speed.contains(", 111.00"), "no shared-run decode speed reaches the charts");
}

#[test]
fn a_memory_budget_bench_adds_the_serving_section() {
    let dir = tempfile::tempdir().unwrap();
    write_fixture(dir.path());
    let bench_dir = dir.path().join("bench");
    fs::create_dir_all(&bench_dir).unwrap();
    let row = serde_json::json!({"model": "tiny-llama", "method": "full", "label": "full", "context_tokens": 4096, "new_tokens": 8, "repeats": 1,
        "prefill_tokens_per_s": 500.0, "ttft_seconds": 8.0, "decode_tokens_per_s": 19.0, "kv_bytes_held": 1u64 << 20,
        "kv_bytes_attended": 1u64 << 20, "kv_bytes_full": 1u64 << 20, "peak_rss_bytes": 1u64 << 30, "prefill_ceiling_tokens_per_s": 900.0,
        "decode_ceiling_tokens_per_s": 40.0, "prefill_pct_of_ceiling": 55.0, "decode_pct_of_ceiling": 47.5,
        "threads": 2, "device": "cpu (2 threads)", "dtype": "f32"});
    let gib = 1u64 << 30;
    let batched = |label: &str, b: u64, tps: f64| serde_json::json!({"model": "tiny-llama", "label": label, "context_tokens": 4096, "batch": b, "decode_tokens_per_s_summed": tps, "kv_bytes_held": b << 28});
    let serving = |label: &str, kv: u64, b: u64, tps: f64, over: &str| {
        serde_json::json!({"model": "tiny-llama", "label": label, "context_tokens": 4096, "budget_bytes": 8 * gib, "weight_bytes": gib / 2,
            "kv_bytes_per_sequence": kv, "batch": b, "bytes_at_batch": gib / 2 + b * kv, "decode_tokens_per_s_summed": tps, "over_budget": over})
    };
    let file = serde_json::json!({"calibration": {}, "rows": [row],
        "batched": [batched("full", 1, 19.0), batched("full", 16, 57.5), batched("kivi(bits=2)", 1, 9.0), batched("kivi(bits=2)", 64, 77.25)],
        "serving": [serving("full", gib / 4, 16, 57.5, "64"), serving("kivi(bits=2)", gib / 32, 64, 77.25, "")]});
    fs::write(bench_dir.join("bench.json"), file.to_string()).unwrap();
    let out = dir.path().join("report");
    kvreport::write_reports_with_bench(&[dir.path().to_path_buf()], &out, false, std::slice::from_ref(&bench_dir)).unwrap();
    let html = fs::read_to_string(out.join("index.html")).unwrap();
    assert!(html.contains("id=\"serving\"") && html.contains("tiny-llama at 4096 tokens, 8.0 GiB budget"), "no serving section");
    assert!(
        html.contains(">Decode throughput by batch<") && html.contains(">tiny-llama, 4096 tokens<") && html.contains("budget 8.0 GiB"),
        "charts and budget line"
    );
    // The full cache's 64 is over the budget: 0.5 + 64 x 0.25 = 16.5 GiB, drawn but not run.
    assert!(html.contains("full: batch 64, 16.50 GiB (over budget, not run)"), "{html}");
    assert!(html.contains("kivi(bits=2): batch 64, 2.50 GiB (fits)"));
    assert!(
        html.contains("<td>full</td><td class=\"num\">256.0</td><td class=\"num\">16</td><td class=\"num\">4.50</td><td class=\"num\">57.5</td><td>64</td>"),
        "serving table"
    );
    // A bench file without serving rows adds no serving section.
    let plain = serde_json::json!({"calibration": {}, "rows": [file["rows"][0].clone()], "batched": file["batched"].clone()});
    fs::write(bench_dir.join("bench.json"), plain.to_string()).unwrap();
    kvreport::write_reports_with_bench(&[dir.path().to_path_buf()], &out, false, std::slice::from_ref(&bench_dir)).unwrap();
    assert!(!fs::read_to_string(out.join("index.html")).unwrap().contains("id=\"serving\""));
}
