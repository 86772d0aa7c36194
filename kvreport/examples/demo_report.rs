//! Writes the reports of the test fixture, or with `--rich` of a denser synthetic run (two
//! models, four method families at several budgets, a passkey grid), into a directory so the
//! pages can be looked at (scripts/screenshot_report.sh). Synthetic numbers, not measurements.
//!
//! cargo run -p kvreport --example demo_report -- OUT_DIR [--rich]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use kvreport::record::{CellInfo, SampleRecord};
use serde_json::json;

/// A small deterministic generator (SplitMix64), so the demo is the same on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn rich_cells() -> Vec<(CellInfo, Vec<SampleRecord>)> {
    let mut rng = Rng(7);
    let models = [("smollm2-135m", 135e6, 1.0), ("qwen2.5-0.5b", 494e6, 0.6)];
    // (method, label, ratio, params, quality loss per unit of log2 ratio, achieved ratio factor)
    type Method = (&'static str, String, Option<f64>, serde_json::Value, f64, f64);
    let mut methods: Vec<Method> = vec![
        ("full", "full".into(), None, json!({}), 0.0, 1.0),
        ("kivi", "kivi-2bit".into(), None, json!({"bits": 2}), 0.06, 4.6),
        ("kivi", "kivi-4bit".into(), None, json!({"bits": 4}), 0.01, 2.9),
    ];
    for (m, loss) in [("snapkv", 0.12), ("h2o", 0.16), ("streamingllm", 0.3)] {
        for r in [2.0, 4.0, 8.0] {
            methods.push((m, m.to_string(), Some(r), json!({"ratio": r}), loss, r * 0.96));
        }
    }
    let mut out = Vec::new();
    for (model, params, speed) in models {
        for (method, label, ratio, mparams, loss, achieved) in &methods {
            let lr = ratio.map(|r: f64| r.log2()).unwrap_or(if *method == "kivi" { 1.0 } else { 0.0 });
            let tasks: [(&str, &str, usize); 4] =
                [("passkey", "needle", 25), ("longbench/qasper", "single_doc_qa", 12), ("longbench/lcc", "code", 12), ("ruler/niah_single_1", "ruler", 12)];
            for (task, category, n) in tasks {
                let id = format!("{model}.{label}.{}.{}", ratio.map(|r| r.to_string()).unwrap_or("-".into()), task.replace('/', "-"));
                let mut recs = Vec::new();
                for i in 0..n {
                    let (input, meta, answers, sid) = if task == "passkey" {
                        let len = [512, 1024, 2048, 3072, 4096][i / 5];
                        let depth = [0.0, 0.25, 0.5, 0.75, 1.0][i % 5];
                        let meta = BTreeMap::from([("background_len_words".to_string(), json!(len)), ("depth".to_string(), json!(depth))]);
                        ((len as f64 * 1.32) as usize, meta, vec!["4817263".to_string()], format!("len{len}-depth{depth}"))
                    } else {
                        let input = 800 + (rng.next() * 3200.0) as usize;
                        (input, BTreeMap::new(), vec!["the committee approved the budget".to_string()], format!("{}-{i}", task.rsplit('/').next().unwrap()))
                    };
                    let base = if params > 2e8 { 0.85 } else { 0.7 };
                    let depth_pen = meta.get("depth").and_then(|d| d.as_f64()).map(|d| (0.5 - d).abs() * 0.2).unwrap_or(0.0);
                    let p = (base - loss * lr - depth_pen * lr * 0.5 + (input as f64 / 4000.0) * -0.05).clamp(0.02, 0.99);
                    let score = if task == "passkey" || task.starts_with("ruler") {
                        if rng.next() < p {
                            100.0
                        } else {
                            0.0
                        }
                    } else {
                        ((p * 100.0 + (rng.next() - 0.5) * 30.0).clamp(0.0, 100.0) * 100.0).round() / 100.0
                    };
                    let prediction = if task == "passkey" {
                        if score == 100.0 {
                            "The pass key is 4817263. Remember it.".to_string()
                        } else {
                            "The pass key is 4811111. Remember it.".to_string()
                        }
                    } else if score > 60.0 || *method == "full" {
                        "The committee approved the budget after a long debate about the new library.".to_string()
                    } else {
                        "The committee approved a <b>plan</b> to rebuild the old station & the bridge.".to_string()
                    };
                    let full = input as u64 * 30 * 2 * 64 * 3 * 2 * 2;
                    let held = (full as f64 / achieved) as u64;
                    let generated = if task == "passkey" { 24 } else { 32 };
                    recs.push(SampleRecord {
                        cell: id.clone(),
                        sample_id: sid,
                        index: i,
                        prediction,
                        answers,
                        score,
                        scores: BTreeMap::from([("main".to_string(), score)]),
                        input_tokens: input,
                        generated_tokens: generated,
                        prefill_seconds: input as f64 / (600.0 * speed * (1.0 - 0.04 * lr)),
                        decode_tokens_per_s: 18.0 * speed * (1.0 - input as f64 / 20000.0) * (1.0 + 0.03 * lr) + rng.next(),
                        kv_bytes_held: held,
                        kv_bytes_attended: held,
                        kv_bytes_full: full,
                        compression_ratio: full as f64 / held as f64,
                        peak_memory_bytes: (params * 4.0) as u64 + 300 * 1024 * 1024 + held + input as u64 * 40_000,
                        metadata: meta,
                        original_input_tokens: None,
                        prompt_compression_seconds: None,
                        timing: None,
                    });
                }
                out.push((
                    CellInfo {
                        id: id.clone(),
                        model: model.into(),
                        method: method.to_string(),
                        method_label: label.clone(),
                        method_params: mparams.clone(),
                        ratio: *ratio,
                        task: task.into(),
                        category: category.into(),
                        samples: n,
                        seed: 0,
                        template: "chat".into(),
                        plugin_sha256: None,
                    },
                    recs,
                ));
            }
        }
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(out) = args.first() else {
        eprintln!("usage: demo_report OUT_DIR [--rich]");
        std::process::exit(2);
    };
    let out = PathBuf::from(out);
    let run = out.join("run");
    if run.exists() {
        std::fs::remove_dir_all(&run).expect("remove old demo run");
    }
    if args.iter().any(|a| a == "--rich") {
        let mut info = common::run_info("0/1");
        info.experiment = "demo-rich".into();
        common::write_run(&run, &info, &rich_cells());
    } else {
        common::write_fixture(&run);
    }
    let summary = kvreport::write_reports(&[run], &out.join("report"), true).expect("reports");
    for w in &summary.warnings {
        eprintln!("warning: {w}");
    }
    println!("{}", summary.leaderboard_markdown);
    for f in &summary.files {
        println!("wrote {}", f.display());
    }
}
