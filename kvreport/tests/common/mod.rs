//! The test fixture: a small run directory built in code, with scores chosen so every leaderboard
//! number can be computed by hand (see the tables in `cells()`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use kvreport::record::{CellInfo, RunInfo, SampleRecord};
use serde_json::json;

pub const EXPERIMENT: &str = "fixture-exp";

pub fn run_info(shard: &str) -> RunInfo {
    RunInfo {
        experiment: EXPERIMENT.into(),
        config_hash: "c0ffee".repeat(10) + "abcd",
        kvbench_version: "0.1.0".into(),
        git_commit: "deadbeefcafe0123456789".into(),
        git_commits: Vec::new(),
        libtorch_version: "2.13.0".into(),
        device: "cpu (2 threads)".into(),
        cpus: Vec::new(),
        decode_matmul: Vec::new(),
        threads: 2,
        shard: shard.into(),
        model_hashes: BTreeMap::from([("tiny-llama".to_string(), "aa11".repeat(16)), ("model-b".to_string(), "bb22".repeat(16))]),
        data_hashes: BTreeMap::from([("paul-graham".to_string(), "cc33".repeat(16))]),
        plugins: Vec::new(),
    }
}

/// (method, label, ratio, compression ratio achieved, prefill tokens/s, decode tokens/s)
pub type Method = (&'static str, &'static str, Option<f64>, f64, f64, f64);

pub const METHODS: [Method; 4] = [
    ("full", "full", None, 1.0, 1000.0, 20.0),
    ("kivi", "kivi-2bit", None, 5.0, 800.0, 18.0),
    ("snapkv", "snapkv", Some(2.0), 2.0, 1000.0, 22.0),
    ("snapkv", "snapkv", Some(4.0), 4.0, 1000.0, 24.0),
];

pub const FULL_PASSKEY: &str = "The pass key is 1234567.";
pub const WRONG_PASSKEY: &str = "The pass key is 7654321.";
pub const SCRIPT_PREDICTION: &str = "<script>alert(1)</script> unanswerable";

/// Passkey scores per method, samples (512,0) (512,.5) (512,1) (1024,0) (1024,.5) (1024,1).
pub fn passkey_scores(label: &str, ratio: Option<f64>) -> [f64; 6] {
    match (label, ratio) {
        ("full", _) => [100.0; 6],
        ("kivi-2bit", _) => [100.0, 100.0, 100.0, 100.0, 0.0, 100.0],
        ("snapkv", Some(2.0)) => [100.0, 100.0, 100.0, 0.0, 100.0, 100.0],
        _ => [100.0, 0.0, 100.0, 0.0, 0.0, 100.0],
    }
}

pub fn qasper_scores(label: &str, ratio: Option<f64>) -> [f64; 3] {
    match (label, ratio) {
        ("full", _) => [40.0, 60.0, 80.0],
        ("kivi-2bit", _) => [40.0, 50.0, 80.0],
        ("snapkv", Some(2.0)) => [30.0, 60.0, 60.0],
        _ => [20.0, 40.0, 30.0],
    }
}

pub fn lcc_scores(label: &str, ratio: Option<f64>) -> [f64; 2] {
    match (label, ratio) {
        ("full", _) => [70.0, 50.0],
        ("kivi-2bit", _) => [70.0, 40.0],
        ("snapkv", Some(2.0)) => [60.0, 50.0],
        _ => [40.0, 20.0],
    }
}

/// Input tokens of the passkey, qasper and lcc samples (all methods see the same prompts).
pub const PASSKEY_INPUT: [usize; 6] = [666, 666, 666, 1331, 1331, 1331];
pub const QASPER_INPUT: [usize; 3] = [3000, 3500, 4000];
pub const QASPER_GENERATED: [usize; 3] = [10, 1, 12];
pub const LCC_INPUT: [usize; 2] = [1500, 2500];
pub const BASE_PEAK: u64 = 500 * 1024 * 1024;

fn cell_id(model: &str, label: &str, ratio: Option<f64>, task: &str) -> String {
    let r = ratio.map(|r| format!("r{r}")).unwrap_or_else(|| "r0".into());
    format!("{model}.{label}.{r}.{}", task.replace('/', "-"))
}

#[allow(clippy::too_many_arguments)]
fn record(
    cell: &str,
    index: usize,
    sample_id: String,
    prediction: &str,
    answers: &[&str],
    score: f64,
    input_tokens: usize,
    generated: usize,
    method: Method,
    metadata: BTreeMap<String, serde_json::Value>,
) -> SampleRecord {
    let (_, _, _, comp, prefill_tps, decode_tps) = method;
    let full = input_tokens as u64 * 1000;
    let held = (full as f64 / comp) as u64;
    SampleRecord {
        cell: cell.into(),
        sample_id,
        index,
        prediction: prediction.into(),
        answers: answers.iter().map(|s| s.to_string()).collect(),
        score,
        scores: BTreeMap::from([("main".to_string(), score)]),
        input_tokens,
        generated_tokens: generated,
        prefill_seconds: input_tokens as f64 / prefill_tps,
        // a one-token generation reports a meaningless speed: it must be left out of the mean
        decode_tokens_per_s: if generated > 1 { decode_tps } else { 999.0 },
        kv_bytes_held: held,
        kv_bytes_attended: held,
        kv_bytes_full: full,
        compression_ratio: full as f64 / held as f64,
        peak_memory_bytes: BASE_PEAK + held,
        metadata,
        original_input_tokens: None,
        prompt_compression_seconds: None,
        timing: None,
    }
}

fn info(id: &str, model: &str, m: Method, task: &str, category: &str, samples: usize) -> CellInfo {
    let (method, label, ratio, ..) = m;
    let params = match (method, ratio) {
        ("kivi", _) => json!({"bits": 2, "group_size": 32, "residual_length": 128}),
        (_, Some(r)) => json!({"ratio": r}),
        _ => json!({}),
    };
    CellInfo {
        id: id.into(),
        model: model.into(),
        method: method.into(),
        method_label: label.into(),
        method_params: params,
        ratio,
        task: task.into(),
        category: category.into(),
        samples,
        seed: 0,
        template: "chat".into(),
        plugin_sha256: None,
    }
}

/// Every cell of the fixture with its records.
pub fn cells() -> Vec<(CellInfo, Vec<SampleRecord>)> {
    let mut out = Vec::new();
    for m in METHODS {
        let (_, label, ratio, ..) = m;
        // passkey: needle task with length/depth metadata
        let id = cell_id("tiny-llama", label, ratio, "passkey");
        let scores = passkey_scores(label, ratio);
        let mut recs = Vec::new();
        for (i, (len, depth)) in [(512, 0.0), (512, 0.5), (512, 1.0), (1024, 0.0), (1024, 0.5), (1024, 1.0)].iter().enumerate() {
            let pred = if scores[i] == 100.0 { FULL_PASSKEY } else { WRONG_PASSKEY };
            let meta = BTreeMap::from([("length".to_string(), json!(len)), ("depth".to_string(), json!(depth))]);
            recs.push(record(&id, i, format!("L{len}-D{depth}"), pred, &["1234567"], scores[i], PASSKEY_INPUT[i], 8, m, meta));
        }
        out.push((info(&id, "tiny-llama", m, "passkey", "needle", 6), recs));

        // qasper: single-doc QA
        let id = cell_id("tiny-llama", label, ratio, "longbench/qasper");
        let scores = qasper_scores(label, ratio);
        let mut recs = Vec::new();
        for i in 0..3 {
            let pred =
                if label == "snapkv" && ratio == Some(4.0) && i == 0 { SCRIPT_PREDICTION.to_string() } else { format!("answer number {i} from {label}") };
            let pred = if label == "full" { format!("answer number {i} from the model") } else { pred };
            recs.push(record(
                &id,
                i,
                format!("qasper-{i}"),
                &pred,
                &["answer", "the answer"],
                scores[i],
                QASPER_INPUT[i],
                QASPER_GENERATED[i],
                m,
                BTreeMap::new(),
            ));
        }
        out.push((info(&id, "tiny-llama", m, "longbench/qasper", "single_doc_qa", 3), recs));

        // lcc: code
        let id = cell_id("tiny-llama", label, ratio, "longbench/lcc");
        let scores = lcc_scores(label, ratio);
        let mut recs = Vec::new();
        for i in 0..2 {
            recs.push(record(&id, i, format!("lcc-{i}"), "return x + 1", &["return x + 1"], scores[i], LCC_INPUT[i], 16, m, BTreeMap::new()));
        }
        out.push((info(&id, "tiny-llama", m, "longbench/lcc", "code", 2), recs));
    }
    // a second model with two rows on one task
    for (m, scores) in [(METHODS[0], [10.0, 20.0, 30.0]), (METHODS[3], [0.0, 20.0, 10.0])] {
        let (_, label, ratio, ..) = m;
        let id = cell_id("model-b", label, ratio, "longbench/qasper");
        let recs = (0..3).map(|i| record(&id, i, format!("qasper-{i}"), "an answer", &["answer"], scores[i], QASPER_INPUT[i], 8, m, BTreeMap::new())).collect();
        out.push((info(&id, "model-b", m, "longbench/qasper", "single_doc_qa", 3), recs));
    }
    out
}

/// Writes a run directory with the given cells (as the runner would: pretty cell.json, one
/// record per line, an empty done marker).
pub fn write_run(dir: &Path, run: &RunInfo, cells: &[(CellInfo, Vec<SampleRecord>)]) {
    fs::create_dir_all(dir.join("cells")).unwrap();
    fs::write(dir.join("run.json"), serde_json::to_string_pretty(run).unwrap() + "\n").unwrap();
    for (info, recs) in cells {
        let d = dir.join("cells").join(&info.id);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("cell.json"), serde_json::to_string_pretty(info).unwrap() + "\n").unwrap();
        let mut text = String::new();
        for r in recs {
            text.push_str(&serde_json::to_string(r).unwrap());
            text.push('\n');
        }
        fs::write(d.join("records.jsonl"), text).unwrap();
        fs::write(d.join("done"), "").unwrap();
    }
}

/// The whole fixture as one unsharded run.
pub fn write_fixture(dir: &Path) {
    write_run(dir, &run_info("0/1"), &cells());
}
