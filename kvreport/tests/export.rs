//! `export_kvpress`: kvbench runs rewritten in kvpress's evaluation layout (directory names,
//! predictions.csv, metrics.json, config.yaml), checked against expected text written out here.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use common::*;
use kvreport::export::{export_kvpress, export_kvpress_with, ExportError, ExportOptions};
use kvreport::record::{CellInfo, SampleRecord};
use kvreport::ReportError;
use serde_json::{json, Value};

/// The prediction a CSV writer must quote: a comma, a double quote and a newline.
const TRICKY: &str = "He said \"hi\", then\nleft";

fn dir_names(out: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

fn read(dir: &Path, name: &str, file: &str) -> String {
    fs::read_to_string(dir.join(name).join(file)).unwrap()
}

fn cell(id: &str, method: &str, label: &str, params: Value, ratio: Option<f64>, task: &str, samples: usize) -> CellInfo {
    CellInfo {
        id: id.into(),
        model: "tiny-llama".into(),
        method: method.into(),
        method_label: label.into(),
        method_params: params,
        ratio,
        task: task.into(),
        category: "ruler".into(),
        samples,
        seed: 42,
        template: "chat".into(),
        plugin_sha256: None,
    }
}

/// A record with `held`/`full` cache bytes and `metric` = `score`.
#[allow(clippy::too_many_arguments)]
fn rec(cell: &str, index: usize, id: &str, pred: &str, answers: &[&str], score: f64, metric: &str, held: u64, meta: Value) -> SampleRecord {
    let metadata: BTreeMap<String, Value> = meta.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    SampleRecord {
        cell: cell.into(),
        sample_id: id.into(),
        index,
        prediction: pred.into(),
        answers: answers.iter().map(|s| s.to_string()).collect(),
        score,
        scores: BTreeMap::from([(metric.to_string(), score)]),
        input_tokens: 4000,
        generated_tokens: 5,
        prefill_seconds: 1.0,
        decode_tokens_per_s: 20.0,
        kv_bytes_held: held,
        kv_bytes_attended: held,
        kv_bytes_full: 1000,
        compression_ratio: 1000.0 / held as f64,
        peak_memory_bytes: 1 << 20,
        metadata,
        original_input_tokens: None,
        prompt_compression_seconds: None,
        timing: None,
    }
}

/// Two RULER tasks of snapkv 8x (one with a sample at a second length) and a full-cache cell.
fn ruler_cells() -> Vec<(CellInfo, Vec<SampleRecord>)> {
    let snap = || json!({"ratio": 8});
    let sm = "string_match_all";
    let l4 = json!({"max_seq_length": 4096});
    let niah = vec![
        rec("snap-niah", 0, "ruler-niah_single_1-4096-0", "The special magic number is 123.", &["123"], 100.0, sm, 125, l4.clone()),
        rec("snap-niah", 1, "ruler-niah_single_1-4096-1", TRICKY, &["456"], 0.0, sm, 125, l4.clone()),
    ];
    let vt = vec![
        rec("snap-vt", 0, "ruler-vt-4096-0", "X1 X2", &["X1", "X2"], 100.0, sm, 125, l4.clone()),
        rec("snap-vt", 1, "ruler-vt-4096-1", "X1", &["X1", "X2"], 50.0, sm, 125, l4.clone()),
        rec("snap-vt", 2, "ruler-vt-4096-2", "X2", &["X1", "X2"], 50.0, sm, 125, l4.clone()),
        rec("snap-vt", 3, "ruler-vt-8192-0", "X2", &["X1", "X2", "X3", "X4"], 25.0, sm, 125, json!({"max_seq_length": 8192})),
    ];
    let full = vec![rec("full-vt", 0, "ruler-vt-4096-0", "X1 X2", &["X1", "X2"], 100.0, sm, 1000, l4)];
    vec![
        (cell("snap-niah", "snapkv", "snapkv", snap(), Some(8.0), "ruler/niah_single_1", 2), niah),
        (cell("snap-vt", "snapkv", "snapkv", snap(), Some(8.0), "ruler/vt", 4), vt),
        (cell("full-vt", "full", "full", json!({}), None, "ruler/vt", 1), full),
    ]
}

#[test]
fn the_fixture_run_gets_one_kvpress_directory_per_cell() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    write_fixture(&run);
    let out = dir.path().join("kvpress");
    let summary = export_kvpress(&run, &out).unwrap();
    assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
    assert_eq!((summary.cells, summary.records, summary.dirs.len(), summary.files.len()), (14, 4 * (6 + 3 + 2) + 2 * 3, 14, 42));
    // full → no_press 0.00; snapkv 2x/4x → 1 - 1/N; kivi (no budget) → measured 1 - held/full = 1 - 1/5
    assert_eq!(
        dir_names(&out),
        [
            "longbench__lcc__tiny-llama__kivi-2bit__0.80",
            "longbench__lcc__tiny-llama__no_press__0.00",
            "longbench__lcc__tiny-llama__snapkv__0.50",
            "longbench__lcc__tiny-llama__snapkv__0.75",
            "longbench__qasper__model-b__no_press__0.00",
            "longbench__qasper__model-b__snapkv__0.75",
            "longbench__qasper__tiny-llama__kivi-2bit__0.80",
            "longbench__qasper__tiny-llama__no_press__0.00",
            "longbench__qasper__tiny-llama__snapkv__0.50",
            "longbench__qasper__tiny-llama__snapkv__0.75",
            "passkey__tiny-llama__kivi-2bit__0.80",
            "passkey__tiny-llama__no_press__0.00",
            "passkey__tiny-llama__snapkv__0.50",
            "passkey__tiny-llama__snapkv__0.75",
        ]
    );
    for d in dir_names(&out) {
        let mut files = dir_names(&out.join(&d));
        files.sort();
        assert_eq!(files, ["config.yaml", "metrics.json", "predictions.csv"], "{d}");
    }

    // LongBench: the bare mean, rounded to 2 decimals (kivi qasper: 40, 50, 80)
    assert_eq!(read(&out, "longbench__qasper__tiny-llama__kivi-2bit__0.80", "metrics.json"), "56.67");
    assert_eq!(read(&out, "longbench__qasper__tiny-llama__no_press__0.00", "metrics.json"), "60.0");
    assert_eq!(read(&out, "longbench__lcc__tiny-llama__snapkv__0.75", "metrics.json"), "30.0");
    // kvbench-only dataset: {task: {metric: mean}}
    assert_eq!(read(&out, "passkey__tiny-llama__kivi-2bit__0.80", "metrics.json"), "{\n    \"passkey\": {\n        \"main\": 83.33\n    }\n}");

    // LongBench columns; the fixture's records carry no length/language metadata
    let csv = read(&out, "longbench__qasper__tiny-llama__snapkv__0.75", "predictions.csv");
    assert_eq!(
        csv,
        "question,answers,length,dataset,language,all_classes,_id,answer_prefix,task,max_new_tokens,predicted_answer,compression_ratio,\
         kvbench_sample_id,kvbench_score,kvbench_scores,kvbench_input_tokens,kvbench_generated_tokens,kvbench_kv_compression\n\
         ,\"[\"\"answer\"\",\"\"the answer\"\"]\",,qasper,,,qasper-0,,qasper,,<script>alert(1)</script> unanswerable,0.75,\
         qasper-0,20.0,\"{\"\"main\"\":20.0}\",3000,10,4.0\n\
         ,\"[\"\"answer\"\",\"\"the answer\"\"]\",,qasper,,,qasper-1,,qasper,,answer number 1 from snapkv,0.75,\
         qasper-1,40.0,\"{\"\"main\"\":40.0}\",3500,1,4.0\n\
         ,\"[\"\"answer\"\",\"\"the answer\"\"]\",,qasper,,,qasper-2,,qasper,,answer number 2 from snapkv,0.75,\
         qasper-2,30.0,\"{\"\"main\"\":30.0}\",4000,12,4.0\n"
    );

    let yaml = read(&out, "passkey__tiny-llama__kivi-2bit__0.80", "config.yaml");
    let expected = format!(
        "dataset: \"passkey\"\n\
         data_dir: null\n\
         model: \"tiny-llama\"\n\
         device: \"cpu\"\n\
         press_name: \"kivi-2bit\"\n\
         compression_ratio: 0.8\n\
         key_channel_compression_ratio: null\n\
         fraction: 1.0\n\
         max_new_tokens: null\n\
         max_context_length: null\n\
         query_aware: null\n\
         needle_depth: null\n\
         compression_interval: null\n\
         target_size: null\n\
         hidden_states_buffer_size: null\n\
         output_dir: \"{}\"\n\
         log_level: \"INFO\"\n\
         model_kwargs: {{}}\n\
         press_init_command: \"kivi(bits=2, group_size=32, residual_length=128)\"\n\
         seed: 0\n\
         fp8: false\n\
         kvbench_experiment: \"fixture-exp\"\n\
         kvbench_config_hash: \"c0ffeec0ffeec0ffeec0ffeec0ffeec0ffeec0ffeec0ffeec0ffeec0ffeeabcd\"\n\
         kvbench_version: \"0.1.0\"\n\
         kvbench_git_commit: \"deadbeefcafe0123456789\"\n\
         kvbench_device: \"cpu (2 threads)\"\n\
         kvbench_model: \"tiny-llama\"\n\
         kvbench_model_sha256: \"aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11\"\n\
         kvbench_method: \"kivi\"\n\
         kvbench_method_label: \"kivi-2bit\"\n\
         kvbench_method_params: \"{{\\\"bits\\\":2,\\\"group_size\\\":32,\\\"residual_length\\\":128}}\"\n\
         kvbench_ratio: null\n\
         kvbench_compression_ratio_source: \"measured\"\n\
         kvbench_template: \"chat\"\n\
         kvbench_plugin_sha256: null\n\
         kvbench_tasks:\n\
         - \"passkey\"\n\
         kvbench_cells:\n\
         - \"tiny-llama.kivi-2bit.r0.passkey\"\n\
         kvbench_samples: 6\n\
         kvbench_complete: true\n",
        out.display()
    );
    assert_eq!(yaml, expected);

    // the full cache and a budgeted method
    let yaml = read(&out, "passkey__tiny-llama__no_press__0.00", "config.yaml");
    assert!(yaml.contains("\npress_name: \"no_press\"\ncompression_ratio: 0.0\n"), "{yaml}");
    assert!(yaml.contains("\npress_init_command: \"None\"\n"), "{yaml}");
    assert!(yaml.contains("\nkvbench_compression_ratio_source: \"full\"\n"), "{yaml}");
    let yaml = read(&out, "passkey__tiny-llama__snapkv__0.75", "config.yaml");
    assert!(yaml.contains("\ncompression_ratio: 0.75\n"), "{yaml}");
    assert!(yaml.contains("\npress_init_command: \"snapkv(ratio=4.0)\"\n"), "{yaml}");
    assert!(yaml.contains("\nkvbench_ratio: 4.0\nkvbench_compression_ratio_source: \"budget\"\n"), "{yaml}");

    // exporting again rewrites the same bytes
    let before: Vec<(String, Vec<u8>)> = summary.files.iter().map(|p| (p.display().to_string(), fs::read(p).unwrap())).collect();
    let again = export_kvpress(&run, &out).unwrap();
    let after: Vec<(String, Vec<u8>)> = again.files.iter().map(|p| (p.display().to_string(), fs::read(p).unwrap())).collect();
    assert_eq!(before, after);
}

#[test]
fn ruler_tasks_share_a_directory_per_context_length() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    write_run(&run, &run_info("0/1"), &ruler_cells());
    let out = dir.path().join("kvpress");
    let summary = export_kvpress(&run, &out).unwrap();
    assert_eq!(dir_names(&out), ["ruler__4096__tiny-llama__no_press__0.00", "ruler__4096__tiny-llama__snapkv__0.88", "ruler__8192__tiny-llama__snapkv__0.88"]);
    let cells: Vec<(Vec<String>, usize)> = summary.dirs.iter().map(|d| (d.cells.clone(), d.records)).collect();
    assert_eq!(cells, [(vec!["full-vt".to_string()], 1), (vec!["snap-niah".to_string(), "snap-vt".to_string()], 5), (vec!["snap-vt".to_string()], 1)]);
    assert_eq!(summary.cells, 3);

    let name = "ruler__4096__tiny-llama__snapkv__0.88";
    assert_eq!(
        read(&out, name, "metrics.json"),
        "{\n    \"niah_single_1\": {\n        \"string_match\": 50.0\n    },\n    \"vt\": {\n        \"string_match\": 66.67\n    }\n}"
    );
    assert_eq!(read(&out, "ruler__8192__tiny-llama__snapkv__0.88", "metrics.json"), "{\n    \"vt\": {\n        \"string_match\": 25.0\n    }\n}");

    let text = read(&out, name, "predictions.csv");
    assert_eq!(
        text,
        "question,answer_prefix,answer,task,max_new_tokens,predicted_answer,compression_ratio,\
         kvbench_sample_id,kvbench_score,kvbench_scores,kvbench_input_tokens,kvbench_generated_tokens,kvbench_kv_compression\n\
         ,,\"[\"\"123\"\"]\",niah_single_1,,The special magic number is 123.,0.875,\
         ruler-niah_single_1-4096-0,100.0,\"{\"\"string_match_all\"\":100.0}\",4000,5,8.0\n\
         ,,\"[\"\"456\"\"]\",niah_single_1,,\"He said \"\"hi\"\", then\nleft\",0.875,\
         ruler-niah_single_1-4096-1,0.0,\"{\"\"string_match_all\"\":0.0}\",4000,5,8.0\n\
         ,,\"[\"\"X1\"\",\"\"X2\"\"]\",vt,,X1 X2,0.875,ruler-vt-4096-0,100.0,\"{\"\"string_match_all\"\":100.0}\",4000,5,8.0\n\
         ,,\"[\"\"X1\"\",\"\"X2\"\"]\",vt,,X1,0.875,ruler-vt-4096-1,50.0,\"{\"\"string_match_all\"\":50.0}\",4000,5,8.0\n\
         ,,\"[\"\"X1\"\",\"\"X2\"\"]\",vt,,X2,0.875,ruler-vt-4096-2,50.0,\"{\"\"string_match_all\"\":50.0}\",4000,5,8.0\n"
    );
    // and a CSV reader gets the prediction back whole
    let mut r = csv::Reader::from_reader(text.as_bytes());
    let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    let col = header.iter().position(|h| h == "predicted_answer").unwrap();
    let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
    assert_eq!(rows.len(), 5);
    assert_eq!(&rows[1][col], TRICKY);

    let yaml = read(&out, name, "config.yaml");
    for line in [
        "dataset: \"ruler\"",
        "data_dir: \"4096\"",
        "press_name: \"snapkv\"",
        "compression_ratio: 0.875",
        "press_init_command: \"snapkv(ratio=8)\"",
        "seed: 42",
        "kvbench_ratio: 8.0",
        "kvbench_tasks:\n- \"ruler/niah_single_1\"\n- \"ruler/vt\"",
        "kvbench_cells:\n- \"snap-niah\"\n- \"snap-vt\"",
        "kvbench_samples: 5",
        "kvbench_complete: true",
    ] {
        assert!(yaml.contains(&format!("\n{line}\n")) || yaml.starts_with(&format!("{line}\n")), "{line:?} not in\n{yaml}");
    }
}

#[test]
fn longbench_e_buckets_by_length_and_options_name_the_model_and_query_awareness() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let id = "kivi-qasper-e";
    let m = |len: u64, classes: Option<Value>| {
        let mut v = json!({"subset": "qasper", "language": "en", "length": len, "longbench_e": true});
        if let Some(c) = classes {
            v["all_classes"] = c;
        }
        v
    };
    let recs = vec![
        rec(id, 0, "e0", "yes", &["yes"], 10.0, "qa_f1", 200, m(3000, None)),
        rec(id, 1, "e1", "no, \"maybe\"", &["no"], 20.0, "qa_f1", 200, m(5000, Some(json!(["yes", "no"])))),
        rec(id, 2, "e2", "unanswerable", &["unanswerable"], 30.0, "qa_f1", 200, m(9000, None)),
    ];
    let info = CellInfo { category: "single_doc_qa".into(), ..cell(id, "kivi", "kivi-2bit", json!({"bits": 2}), None, "longbench_e/qasper", 2) };
    write_run(&run, &run_info("0/1"), &[(info, recs)]);
    let out = dir.path().join("kvpress");
    let opts = ExportOptions { model_ids: BTreeMap::from([("tiny-llama".to_string(), "org/Tiny-Llama".to_string())]), query_aware: Some(true) };
    let summary = export_kvpress_with(&run, &out, &opts).unwrap();
    // 3 records of a cell of 2 samples is complete; nothing to warn about
    assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
    let name = "longbench-e__qasper_e__org--Tiny-Llama__kivi-2bit__0.80__query_aware";
    assert_eq!(dir_names(&out), [name]);
    assert_eq!(read(&out, name, "metrics.json"), "{\n    \"0-4k\": 10.0,\n    \"4-8k\": 20.0,\n    \"8k+\": 30.0\n}");
    assert_eq!(
        read(&out, name, "predictions.csv"),
        "question,answers,length,dataset,language,all_classes,_id,answer_prefix,task,max_new_tokens,predicted_answer,compression_ratio,\
         kvbench_sample_id,kvbench_score,kvbench_scores,kvbench_input_tokens,kvbench_generated_tokens,kvbench_kv_compression\n\
         ,\"[\"\"yes\"\"]\",3000,qasper_e,en,,e0,,qasper,,yes,0.8,e0,10.0,\"{\"\"qa_f1\"\":10.0}\",4000,5,5.0\n\
         ,\"[\"\"no\"\"]\",5000,qasper_e,en,\"[\"\"yes\"\",\"\"no\"\"]\",e1,,qasper,,\"no, \"\"maybe\"\"\",0.8,e1,20.0,\"{\"\"qa_f1\"\":20.0}\",4000,5,5.0\n\
         ,\"[\"\"unanswerable\"\"]\",9000,qasper_e,en,,e2,,qasper,,unanswerable,0.8,e2,30.0,\"{\"\"qa_f1\"\":30.0}\",4000,5,5.0\n"
    );
    let yaml = read(&out, name, "config.yaml");
    for line in ["dataset: \"longbench-e\"", "data_dir: \"qasper_e\"", "model: \"org/Tiny-Llama\"", "query_aware: true", "kvbench_model: \"tiny-llama\""] {
        assert!(yaml.contains(&format!("{line}\n")), "{line:?} not in\n{yaml}");
    }
    // an empty bucket is null
    let recs = vec![rec(id, 0, "e0", "yes", &["yes"], 10.0, "qa_f1", 200, m(3000, None))];
    let info = CellInfo { samples: 1, ..cell(id, "kivi", "kivi-2bit", json!({"bits": 2}), None, "longbench_e/qasper", 1) };
    let run2 = dir.path().join("run2");
    write_run(&run2, &run_info("0/1"), &[(info, recs)]);
    let out2 = dir.path().join("kvpress2");
    export_kvpress(&run2, &out2).unwrap();
    assert_eq!(
        read(&out2, "longbench-e__qasper_e__tiny-llama__kivi-2bit__0.80", "metrics.json"),
        "{\n    \"0-4k\": 10.0,\n    \"4-8k\": null,\n    \"8k+\": null\n}"
    );
}

#[test]
fn strings_in_config_yaml_are_quoted_safely() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let id = "odd";
    let info = CellInfo { model: "model: {x}\n- y".into(), ..cell(id, "snapkv", "snap\"kv #1", json!({"window": "a\"b"}), Some(2.0), "passkey", 1) };
    let recs = vec![rec(id, 0, "s0", "ok", &["ok"], 100.0, "main", 500, json!({}))];
    write_run(&run, &run_info("0/1"), &[(info, recs)]);
    let out = dir.path().join("kvpress");
    export_kvpress(&run, &out).unwrap();
    let name = "passkey__model: {x}_- y__snap\"kv #1__0.50";
    assert_eq!(dir_names(&out), [name]);
    let yaml = read(&out, name, "config.yaml");
    assert!(yaml.contains("\nmodel: \"model: {x}\\n- y\"\n"), "{yaml}");
    assert!(yaml.contains("\npress_name: \"snap\\\"kv #1\"\n"), "{yaml}");
    assert!(yaml.contains("\npress_init_command: \"snapkv(window=\\\"a\\\\\\\"b\\\")\"\n"), "{yaml}");
    // every line is `key: value` or a list item: nothing broke out of its quotes
    for line in yaml.lines() {
        assert!(line.starts_with("- \"") || line.split_once(": ").is_some() || line.ends_with(':'), "{line:?}");
    }
}

#[test]
fn a_run_without_cells_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    write_run(&run, &run_info("0/1"), &[]);
    let out = dir.path().join("kvpress");
    let err = export_kvpress(&run, &out).unwrap_err();
    assert!(matches!(err, ReportError::Export(ExportError::NoCells(_))), "{err:?}");
    assert_eq!(err.to_string(), format!("{}: no cells to export (cells/ is missing or holds no cell with records)", run.display()));
    assert!(!out.exists());

    // cells without records are skipped with a warning; none left is the same error
    let info = cell("empty", "full", "full", json!({}), None, "passkey", 3);
    write_run(&run, &run_info("0/1"), &[(info, Vec::new())]);
    let err = export_kvpress(&run, &out).unwrap_err();
    assert!(matches!(err, ReportError::Export(ExportError::NoCells(_))), "{err:?}");

    // not a run directory at all
    let err = export_kvpress(&dir.path().join("nowhere"), &out).unwrap_err();
    assert!(err.to_string().contains("not a run directory (no run.json)"), "{err}");
}

#[test]
fn an_unreadable_records_file_is_an_error_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    write_fixture(&run);
    let records = run.join("cells").join("tiny-llama.full.r0.passkey").join("records.jsonl");
    let text = fs::read_to_string(&records).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[2] = "{\"cell\": oops}";
    fs::write(&records, lines.join("\n") + "\n").unwrap();
    let out = dir.path().join("kvpress");
    let err = export_kvpress(&run, &out).unwrap_err();
    assert!(err.to_string().starts_with(&format!("{}:3: invalid record", records.display())), "{err}");
    assert!(!out.exists());
}

#[test]
fn two_presets_that_would_share_a_directory_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let a = cell("a", "snapkv", "snapkv", json!({"ratio": 2, "window": 32}), Some(2.0), "passkey", 1);
    let b = cell("b", "snapkv", "snapkv", json!({"ratio": 2, "window": 64}), Some(2.0), "passkey", 1);
    let ra = vec![rec("a", 0, "s0", "ok", &["ok"], 100.0, "main", 500, json!({}))];
    let rb = vec![rec("b", 0, "s0", "ok", &["ok"], 100.0, "main", 500, json!({}))];
    write_run(&run, &run_info("0/1"), &[(a, ra), (b, rb)]);
    let out = dir.path().join("kvpress");
    let err = export_kvpress(&run, &out).unwrap_err();
    assert!(matches!(err, ReportError::Export(ExportError::Collision { .. })), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("\"passkey__tiny-llama__snapkv__0.50\""), "{msg}");
    assert!(msg.contains(&run.join("cells").join("a").display().to_string()) && msg.contains(&run.join("cells").join("b").display().to_string()), "{msg}");
}
