//! `kvbench methods` and `kvbench generate --method` end to end: every expected method is listed
//! with its parameters, `--detail` explains one, a compressing run reports its method and measured
//! bytes in `--json`, and a bad `--set` key names the method and the key. `--plugin` loads the
//! example plugin and refuses, with a clear message and exit code 1, a plugin library built for
//! another kvcore release (`plugins/version-skew`).

mod common;

use common::built_library;
use std::process::{Command, Output};

const EXPECTED: &[&str] = &[
    "full",
    "random",
    "streamingllm",
    "h2o",
    "snapkv",
    "pyramidkv",
    "tova",
    "knorm",
    "keydiff",
    "expected-attention",
    "chunkkv",
    "adakv",
    "kivi",
    "flexgen",
    "int8",
    "int4",
];

fn kvbench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvbench")).args(args).output().expect("run kvbench")
}

fn ok(args: &[&str]) -> String {
    let o = kvbench(args);
    assert!(o.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).expect("utf-8 stdout")
}

#[test]
fn methods_lists_every_expected_method_with_its_parameters() {
    let out = ok(&["methods"]);
    for name in EXPECTED {
        assert!(out.lines().any(|l| l.split_whitespace().next() == Some(name)), "`kvbench methods` does not list `{name}`:\n{out}");
    }
    assert!(out.contains("ratio=4"), "eviction methods list their `ratio` default:\n{out}");
    let list: serde_json::Value = serde_json::from_str(&ok(&["methods", "--json"])).expect("methods --json is JSON");
    let names: Vec<&str> = list.as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    for name in EXPECTED {
        assert!(names.contains(name), "`kvbench methods --json` lacks `{name}`: {names:?}");
    }
    let snap = list.as_array().unwrap().iter().find(|m| m["name"] == "snapkv").unwrap();
    let params: Vec<&str> = snap["params"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    for p in ["ratio", "tokens", "window", "kernel"] {
        assert!(params.contains(&p), "snapkv lacks parameter `{p}`: {params:?}");
    }
}

#[test]
fn methods_detail_explains_one_method() {
    let out = ok(&["methods", "--detail", "snapkv"]);
    for needle in ["snapkv", "window", "kernel", "ratio", "2404.14469", "parameters:"] {
        assert!(out.contains(needle), "`methods --detail snapkv` lacks {needle:?}:\n{out}");
    }
    let o = kvbench(&["methods", "--detail", "no-such-method"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no-such-method"));
}

#[test]
fn generate_with_a_method_reports_bytes_and_ratio() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny");
    ok(&["model", "init", "--arch", "llama", "--preset", "tiny", "--random", "--seed", "3", model.to_str().unwrap()]);
    let prompt = "the quick brown fox jumps over the lazy dog ".repeat(12);
    let m = model.to_str().unwrap();
    let run = |method: &str, set: &[&str]| -> serde_json::Value {
        let mut args = vec!["generate", "--model", m, "--prompt", &prompt, "--max-new-tokens", "4", "--device", "cpu", "--json", "--method", method];
        for s in set {
            args.extend(["--set", s]);
        }
        serde_json::from_str(ok(&args).lines().last().unwrap()).expect("generate --json prints JSON")
    };
    let full = run("full", &[]);
    let snap = run("snapkv", &["ratio=4", "window=8"]);
    assert_eq!(snap["method"], "snapkv");
    for key in ["kv_bytes_held", "kv_bytes_held_prompt", "compression_ratio", "kv_bytes_full"] {
        assert!(snap[key].is_number(), "generate --json lacks numeric `{key}`: {snap}");
    }
    let held = snap["kv_bytes_held_prompt"].as_f64().unwrap();
    let full_prompt = full["kv_bytes_held_prompt"].as_f64().unwrap();
    let prompt_tokens = snap["prompt_tokens"].as_f64().unwrap();
    // floor(S/4) of S prompt tokens are kept (plus their i64 positions), versus all S.
    let kept = (prompt_tokens / 4.0).floor();
    assert!(held < full_prompt * 0.4, "snapkv at ratio 4 holds {held} of {full_prompt} bytes after the prompt");
    assert!(held >= full_prompt * kept / prompt_tokens, "snapkv holds less than its kept K/V: {held} vs {full_prompt}");
    let ratio = snap["compression_ratio"].as_f64().unwrap();
    let measured = snap["kv_bytes_full"].as_f64().unwrap() / snap["kv_bytes_held"].as_f64().unwrap();
    assert!((ratio - measured).abs() < 1e-9 && ratio > 2.0, "compression_ratio {ratio} is not full/held = {measured}");
    assert_eq!(full["compression_ratio"].as_f64().unwrap(), 1.0);
}

/// `generate --weight-dtype f16|bf16 --json` stores the weights in 16 bits (fewer weight bytes)
/// and reports how far that moves the prompt's last logits: not at all for f32, a little (the
/// weights' rounding) for f16 and more for bf16's coarser mantissa.
#[test]
fn generate_reports_the_logit_error_of_16_bit_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny");
    ok(&["model", "init", "--arch", "llama", "--preset", "tiny", "--random", "--seed", "4", model.to_str().unwrap()]);
    let prompt = "a stitch in time saves nine ".repeat(8);
    let run = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["generate", "--model", model.to_str().unwrap(), "--prompt", &prompt, "--max-new-tokens", "4", "--device", "cpu", "--json"];
        args.extend(extra);
        serde_json::from_str(ok(&args).lines().last().unwrap()).expect("generate --json prints JSON")
    };
    let f32_run = run(&[]);
    assert_eq!(f32_run["weight_dtype"], "f32");
    assert!(f32_run["weight_logit_error"].is_null(), "{f32_run}");
    let mut errors = Vec::new();
    for w in ["f16", "bf16"] {
        let v = run(&["--weight-dtype", w]);
        assert_eq!(v["weight_dtype"], w);
        assert!(v["weight_bytes"].as_u64().unwrap() < f32_run["weight_bytes"].as_u64().unwrap(), "{w}: {v}");
        let e = v["weight_logit_error"].as_f64().unwrap_or_else(|| panic!("{w}: no weight_logit_error in {v}"));
        assert!(e > 0.0 && e < 0.05, "{w}: logit error {e}");
        errors.push(e);
    }
    assert!(errors[0] < errors[1], "f16 (11-bit mantissa) moves the logits less than bf16 (8-bit): {errors:?}");
}

#[test]
fn a_bad_setting_names_the_method_and_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny");
    ok(&["model", "init", "--arch", "llama", "--preset", "tiny", "--random", model.to_str().unwrap()]);
    let m = model.to_str().unwrap();
    let o = kvbench(&["generate", "--model", m, "--prompt", "hello", "--device", "cpu", "--method", "snapkv", "--set", "windw=8"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "an unknown key must fail");
    assert!(err.contains("snapkv") && err.contains("windw") && err.contains("window"), "error should name method, key and accepted keys:\n{err}");
    let o = kvbench(&["generate", "--model", m, "--prompt", "hello", "--device", "cpu", "--method", "snapkv", "--set", "ratio=0.5"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "an out-of-range ratio must fail");
    assert!(err.contains("snapkv") && err.contains("ratio"), "error should name method and key:\n{err}");
}

#[test]
fn plugin_flag_loads_the_example_and_lists_its_method() {
    let lib = built_library("libkvplugin_example_external.so");
    let out = ok(&["--plugin", lib.to_str().unwrap(), "methods"]);
    assert!(out.lines().any(|l| l.contains("example-recent")), "the plugin's method should be listed:\n{out}");
}

#[test]
fn a_plugin_built_for_another_kvcore_release_is_refused_clearly() {
    let lib = built_library("libkvplugin_version_skew.so");
    for args in [vec!["methods"], vec!["generate", "--prompt", "hi", "--method", "full"]] {
        let mut all = vec!["--plugin", lib.to_str().unwrap()];
        all.extend(args.iter().copied());
        let o = kvbench(&all);
        let err = String::from_utf8_lossy(&o.stderr);
        // Exit code 1 (a handled error), not a signal or a panic's 101.
        assert_eq!(o.status.code(), Some(1), "{all:?} should fail with exit code 1:\n{err}");
        assert!(!err.contains("panicked"), "{err}");
        for needle in ["kvcore version", "0.0.1", env!("CARGO_PKG_VERSION"), "rebuild the plugin", "libkvplugin_version_skew.so"] {
            assert!(err.contains(needle), "the refusal should mention `{needle}`:\n{err}");
        }
        assert!(!err.contains("should have refused"), "the host called into the refused plugin:\n{err}");
    }
}
