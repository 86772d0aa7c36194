//! The `kvbench` binary end to end: bad input gets one clear message and a non-zero exit, and the
//! documented commands and JSON keys work (on a tiny random model made by `kvbench model init`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn kvbench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvbench")).args(args).output().expect("run kvbench")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn fails_with(args: &[&str], needles: &[&str]) {
    let o = kvbench(args);
    let err = stderr(&o);
    assert!(!o.status.success(), "{args:?} should fail; stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: stderr lacks {n:?}:\n{err}");
    }
}

fn tiny_model(dir: &Path, arch: &str) -> PathBuf {
    let out = dir.join(arch);
    let o = kvbench(&["model", "init", "--arch", arch, "--preset", "tiny", "--random", "--seed", "3", out.to_str().unwrap()]);
    assert!(o.status.success(), "model init failed: {}", stderr(&o));
    out
}

#[test]
fn missing_model_is_a_clear_error() {
    fails_with(&["generate", "--model", "/nonexistent/model.gguf", "--prompt", "hi", "--device", "cpu"], &["not found", "/nonexistent/model.gguf"]);
    fails_with(&["generate", "--model", "no-such-model", "--prompt", "hi", "--device", "cpu"], &["no-such-model", "smollm2-135m"]);
}

#[test]
fn corrupt_gguf_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("broken.gguf");
    // A valid magic and version, then a header that claims more metadata than the file holds.
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&1u64.to_le_bytes());
    bytes.extend_from_slice(&5u64.to_le_bytes());
    bytes.extend_from_slice(&[1, 2, 3]);
    std::fs::write(&p, &bytes).unwrap();
    fails_with(&["generate", "--model", p.to_str().unwrap(), "--prompt", "hi", "--device", "cpu"], &["broken.gguf"]);
    std::fs::write(&p, b"not a gguf file at all").unwrap();
    fails_with(&["generate", "--model", p.to_str().unwrap(), "--prompt", "hi", "--device", "cpu"], &["broken.gguf"]);
}

#[test]
fn unknown_architecture_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gpt");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"model_type": "gpt_bigcode", "hidden_size": 8}"#).unwrap();
    fails_with(
        &["generate", "--model", dir.to_str().unwrap(), "--prompt", "hi", "--device", "cpu"],
        &["unsupported architecture `gpt_bigcode`", "config.json"],
    );
}

#[test]
fn bad_flags_are_clear_errors() {
    fails_with(&["generate", "--prompt", "hi", "--device", "tpu"], &["device", "tpu", "cpu, cuda, cuda:N or auto"]);
    fails_with(&["generate", "--prompt", "hi", "--device", "cpu", "--dtype", "f8"], &["dtype", "f8"]);
    if !tch::Cuda::is_available() {
        fails_with(&["generate", "--prompt", "hi", "--device", "cuda:0"], &["cuda:0"]);
    }
}

#[test]
fn long_prompt_needs_truncate_and_json_has_the_documented_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), "llama");
    let prompt = "lorem ipsum dolor ".repeat(2000); // ~6000 tokens, the tiny preset holds 4096
    let pf = tmp.path().join("prompt.txt");
    std::fs::write(&pf, &prompt).unwrap();
    let m = model.to_str().unwrap();
    fails_with(&["generate", "--model", m, "--prompt-file", pf.to_str().unwrap(), "--device", "cpu"], &["--truncate", "4096"]);

    let o = kvbench(&[
        "generate",
        "--model",
        m,
        "--prompt-file",
        pf.to_str().unwrap(),
        "--device",
        "cpu",
        "--truncate",
        "--max-new-tokens",
        "4",
        "--min-new-tokens",
        "4",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    for key in [
        "text",
        "prompt_tokens",
        "generated_tokens",
        "prefill_seconds",
        "prefill_tokens_per_s",
        "decode_tokens_per_s",
        "kv_bytes_held",
        "kv_bytes_full",
        "peak_rss_bytes",
    ] {
        assert!(v.get(key).is_some(), "missing key {key} in {v}");
    }
    assert_eq!(v["prompt_tokens"], 4096 - 4);
    assert_eq!(v["generated_tokens"], 4);
    // Full cache: held bytes are exactly the full-cache bytes: 2 (K,V) x 2 layers x 2 heads x 16 dims x 4 B per token.
    let per_token = 2 * 2 * 2 * 16 * 4;
    assert_eq!(v["kv_bytes_full"].as_u64().unwrap(), per_token * (4096 - 4 + 3));
    assert_eq!(v["kv_bytes_held"], v["kv_bytes_full"]);
}

#[test]
fn each_architecture_runs_and_dumps_logits() {
    let tmp = tempfile::tempdir().unwrap();
    for arch in ["llama", "mistral", "qwen2"] {
        let model = tiny_model(tmp.path(), arch);
        let npy = tmp.path().join(format!("{arch}.npy"));
        let o = kvbench(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--chat",
            "--prompt",
            "Hello there",
            "--device",
            "cpu",
            "--max-new-tokens",
            "3",
            "--dump-logits",
            npy.to_str().unwrap(),
            "--all-positions",
            "--kv-dtype",
            "bf16",
        ]);
        assert!(o.status.success(), "{arch}: {}", stderr(&o));
        let t = tch::Tensor::read_npy(&npy).unwrap();
        assert_eq!(t.size().len(), 2, "{arch}: all positions are [tokens, vocab]");
        assert_eq!(t.size()[1], 49152);
    }
}

#[test]
fn score_prints_longbench_scores_as_text_and_json() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("preds.jsonl");
    let lines = [
        r#"{"dataset": "narrativeqa", "pred": "The old lighthouse keeper", "answers": ["the old lighthouse keeper"], "all_classes": null}"#,
        r#"{"dataset": "narrativeqa", "pred": "a dog", "answers": ["the cat"], "all_classes": null}"#,
        r#"{"dataset": "trec", "pred": "Location\nmore text", "answers": ["Location"], "all_classes": ["Location", "Person"]}"#,
    ];
    std::fs::write(&f, lines.join("\n")).unwrap();
    let o = kvbench(&["score", f.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ds = v["datasets"].as_array().unwrap();
    let get = |name: &str| ds.iter().find(|d| d["dataset"] == name).unwrap()["score"].as_f64().unwrap();
    assert_eq!(get("narrativeqa"), 50.0, "F1 1.0 and 0.0 average to 50.00");
    assert_eq!(get("trec"), 100.0, "trec keeps the first line, then classification");
    let o = kvbench(&["score", f.to_str().unwrap()]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("narrativeqa"));
    std::fs::write(&f, "{\"dataset\": \"narrativeqa\"}\n").unwrap();
    fails_with(&["score", f.to_str().unwrap()], &["preds.jsonl", "1"]);
}

#[test]
fn missing_task_data_names_the_fetch_command() {
    let home = tempfile::tempdir().unwrap();
    let model = kvcore::sources::cached_path(&kvcore::sources::kvbench_home(), kvcore::sources::known_model("smollm2-135m").unwrap());
    let o = Command::new(env!("CARGO_BIN_EXE_kvbench"))
        .env("KVBENCH_HOME", home.path())
        .args(["task", "dump", "passkey", "--model", model.to_str().unwrap(), "--device", "cpu"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("kvbench data fetch pg_essays"), "{}", stderr(&o));
}

#[test]
fn smollm2_answers_paris_and_stop_strings_cut_the_text() {
    let base = ["generate", "--model", "smollm2-135m", "--chat", "--prompt", "What is the capital of France?", "--device", "cpu", "--json"];
    let o = kvbench(&base);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["text"].as_str().unwrap().contains("Paris"), "{v}");
    assert_eq!(v["stop_reason"], "eos_token");

    let mut args = base.to_vec();
    args.extend(["--stop", "Paris"]);
    let o = kvbench(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["stop_reason"], "stop_string");
    assert_eq!(v["text"].as_str().unwrap().trim_end(), "The capital of France is");
}

/// `kvbench bench --json` on the tiny model; its parsed JSON.
fn bench_json(model: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "bench",
        "--model",
        model.to_str().unwrap(),
        "--device",
        "cpu",
        "--threads",
        "1",
        "--methods",
        "full,snapkv(ratio=4)",
        "--contexts",
        "256",
        "--new-tokens",
        "4",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--batch",
        "1,2,4",
        "--out",
        out.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    let o = kvbench(&args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("one JSON object")
}

#[test]
fn bench_memory_budget_reports_the_largest_batch_that_fits() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path(), "llama");
    // A budget everything fits: every batch size runs, the largest is 4 for both methods.
    let all = bench_json(&model, &tmp.path().join("all"), &["--memory-budget", "1TiB"]);
    let serving = all["serving"].as_array().expect("serving rows");
    assert_eq!(serving.len(), 2);
    let row = |v: &serde_json::Value, label: &str| v["serving"].as_array().unwrap().iter().find(|r| r["label"] == label).unwrap().clone();
    let full = row(&all, "full");
    let snap = row(&all, "snapkv(ratio=4)");
    for r in [&full, &snap] {
        assert_eq!(r["batch"], 4, "{r}");
        assert_eq!(r["over_budget"], "", "{r}");
        assert!(r["decode_tokens_per_s_summed"].as_f64().unwrap() > 0.0, "{r}");
        assert_eq!(r["budget_bytes"].as_u64().unwrap(), 1u64 << 40);
    }
    let weights = full["weight_bytes"].as_u64().unwrap();
    let (kv_full, kv_snap) = (full["kv_bytes_per_sequence"].as_u64().unwrap(), snap["kv_bytes_per_sequence"].as_u64().unwrap());
    assert!(weights > 0 && kv_snap * 2 < kv_full, "SnapKV 4x holds under half the full cache: {kv_snap} vs {kv_full}");
    assert_eq!(full["bytes_at_batch"].as_u64().unwrap(), weights + 4 * kv_full);
    // One sequence's bytes are what the batch rows hold per sequence (copies of one prompt).
    let batched = all["batched"].as_array().unwrap();
    let held = |label: &str, b: u64| batched.iter().find(|r| r["label"] == label && r["batch"] == b).unwrap()["kv_bytes_held"].as_u64().unwrap();
    assert_eq!(held("full", 4), 4 * kv_full);
    assert_eq!(held("snapkv(ratio=4)", 2), 2 * kv_snap);

    // A budget of the weights + 2 full caches: the full cache fits 2 sequences and 4 is not run;
    // SnapKV's 4 fit.
    let budget = (weights + 2 * kv_full).to_string();
    let tight = bench_json(&model, &tmp.path().join("tight"), &["--memory-budget", &budget]);
    let full = row(&tight, "full");
    let snap = row(&tight, "snapkv(ratio=4)");
    assert_eq!((full["batch"].as_u64(), full["over_budget"].as_str()), (Some(2), Some("4")), "{full}");
    assert_eq!((snap["batch"].as_u64(), snap["over_budget"].as_str()), (Some(4), Some("")), "{snap}");
    let ran: Vec<(String, u64)> =
        tight["batched"].as_array().unwrap().iter().map(|r| (r["label"].as_str().unwrap().to_string(), r["batch"].as_u64().unwrap())).collect();
    assert!(!ran.contains(&("full".to_string(), 4)), "an over-budget batch is not run: {ran:?}");
    assert!(ran.contains(&("snapkv(ratio=4)".to_string(), 4)), "{ran:?}");
    assert!(tmp.path().join("tight/bench_serving.csv").exists());
    // Below the weights nothing fits.
    let none = bench_json(&model, &tmp.path().join("none"), &["--memory-budget", "1KiB"]);
    assert_eq!(row(&none, "full")["batch"], 0);
    assert_eq!(row(&none, "full")["over_budget"], "1 2 4");
    fails_with(&["bench", "--memory-budget", "8GiB"], &["--batch"]);
    fails_with(&["bench", "--batch", "1", "--memory-budget", "eight", "--model", model.to_str().unwrap(), "--device", "cpu"], &["--memory-budget", "eight"]);
}
