//! Checks the GGUF reader and dequantisation against gguf-py (llama.cpp's Python package), on a
//! synthetic file holding every metadata type and every supported tensor type, and on the real
//! SmolLM2 and Qwen2.5 model files. The reference comes from `scripts/reference/gguf_reference.py`
//! run with `$KVBENCH_PYTHON` (default `<workspace>/.venv/bin/python`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use kvformats::gguf::{GgmlType, GgufFile, GgufValue};
use serde_json::Value;

mod common;
use common::{python, workspace_root};

/// Runs gguf_reference.py with `args`; panics with a clear message when python or gguf-py is missing.
fn run_reference(args: &[&str]) {
    let script = workspace_root().join("scripts/reference/gguf_reference.py");
    let py = python();
    let out = Command::new(&py)
        .arg(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the reference python {} ({e}); set KVBENCH_PYTHON or run scripts/bootstrap.sh --test", py.display()));
    assert!(
        out.status.success(),
        "{} {} {} failed ({}):\n{}",
        py.display(),
        script.display(),
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn load_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

/// Compares one metadata value with its typed JSON form `{"t": type, "v": value}`.
fn check_value(v: &GgufValue, j: &Value) -> Result<(), String> {
    let t = j["t"].as_str().ok_or("reference value without a type")?;
    let jv = &j["v"];
    let ok = match (t, v) {
        ("u8", GgufValue::U8(x)) => jv.as_u64() == Some(u64::from(*x)),
        ("i8", GgufValue::I8(x)) => jv.as_i64() == Some(i64::from(*x)),
        ("u16", GgufValue::U16(x)) => jv.as_u64() == Some(u64::from(*x)),
        ("i16", GgufValue::I16(x)) => jv.as_i64() == Some(i64::from(*x)),
        ("u32", GgufValue::U32(x)) => jv.as_u64() == Some(u64::from(*x)),
        ("i32", GgufValue::I32(x)) => jv.as_i64() == Some(i64::from(*x)),
        ("u64", GgufValue::U64(x)) => jv.as_u64() == Some(*x),
        ("i64", GgufValue::I64(x)) => jv.as_i64() == Some(*x),
        ("f32", GgufValue::F32(x)) => jv.as_f64() == Some(f64::from(*x)),
        ("f64", GgufValue::F64(x)) => jv.as_f64() == Some(*x),
        ("bool", GgufValue::Bool(x)) => jv.as_bool() == Some(*x),
        ("string", GgufValue::String(x)) => jv.as_str() == Some(x.as_str()),
        ("array", GgufValue::Array(items)) => {
            let refs = jv.as_array().ok_or("reference array is not a list")?;
            if refs.len() != items.len() {
                return Err(format!("array has {} items, reference {}", items.len(), refs.len()));
            }
            for (i, (item, r)) in items.iter().zip(refs).enumerate() {
                check_value(item, r).map_err(|e| format!("item {i}: {e}"))?;
            }
            true
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("read {} {v}, reference {t} {jv}", v.type_name()))
    }
}

fn check_metadata(file: &GgufFile, reference: &Value) {
    let expected = reference["metadata"].as_object().expect("reference metadata");
    let ours: Vec<&String> = file.metadata.keys().collect();
    let mut theirs: Vec<&String> = expected.keys().collect();
    theirs.sort();
    assert_eq!(ours, theirs, "metadata keys differ");
    for (key, j) in expected {
        let v = file.meta(key).expect("key present");
        if let Err(e) = check_value(v, j) {
            panic!("{}: metadata {key:?}: {e}", file.label());
        }
    }
}

/// Compares tensor infos and every dequantised tensor the reference holds; returns
/// (tensor name, type, max |ours - ref|, max |ref|) for each compared tensor.
fn check_tensors(file: &GgufFile, reference: &Value, dir: &Path) -> Vec<(String, GgmlType, f32, f32)> {
    let expected = reference["tensors"].as_array().expect("reference tensors");
    assert_eq!(file.tensors.len(), expected.len(), "tensor count");
    let mut report = Vec::new();
    for (t, r) in file.tensors.iter().zip(expected) {
        assert_eq!(t.name, r["name"].as_str().expect("name"));
        assert_eq!(u64::from(t.ggml_type.id()), r["type"].as_u64().expect("type"), "{}", t.name);
        let dims: Vec<u64> = r["dims"].as_array().expect("dims").iter().map(|d| d.as_u64().expect("dim")).collect();
        assert_eq!(t.dims, dims, "{}: dims", t.name);
        assert_eq!(file.data_offset() + t.offset, r["data_offset"].as_u64().expect("offset"), "{}", t.name);
        assert_eq!(t.n_bytes, r["n_bytes"].as_u64().expect("n_bytes"), "{}", t.name);
        let shape: Vec<i64> = dims.iter().rev().map(|&d| d as i64).collect();
        assert_eq!(t.torch_shape(), shape);
        let Some(f32_name) = r["f32"].as_str() else {
            continue;
        };
        let want = read_f32(&dir.join(f32_name));
        let got = file.dequantize_f32(&t.name).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.len() as u64, t.n_elements(), "{}", t.name);
        assert_eq!(got.len(), want.len(), "{}: element count vs reference", t.name);
        assert!(want.iter().all(|x| x.is_finite()), "{}: reference has non-finite values", t.name);
        let max_ref = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        let max_diff = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        let bit_mismatches = got.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        println!(
            "{:<28} {:>5} {:>10} elems  max|ref| {:<12.6e} max diff {:e}  bitwise mismatches {}",
            t.name,
            t.ggml_type.name(),
            got.len(),
            max_ref,
            max_diff,
            bit_mismatches
        );
        assert!(max_diff <= 1e-6 * max_ref, "{}: {} dequantisation differs from gguf-py by {max_diff} (max |x| {max_ref})", t.name, t.ggml_type.name());
        report.push((t.name.clone(), t.ggml_type, max_diff, max_ref));
    }
    report
}

#[test]
fn synthetic_file_matches_gguf_py() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf-8 temp path");
    run_reference(&["synth", d]);
    let path = dir.path().join("synth.gguf");
    let reference = load_json(&dir.path().join("reference.json"));

    let file = GgufFile::open(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(u64::from(file.version), reference["version"].as_u64().expect("version"));
    assert_eq!(file.alignment(), 64);
    assert_eq!(file.data_offset() % 64, 0);
    assert_eq!(file.architecture().expect("arch"), "synthetic");
    check_metadata(&file, &reference);
    let report = check_tensors(&file, &reference, dir.path());
    let types: Vec<GgmlType> = report.iter().map(|r| r.1).collect();
    for ty in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ] {
        assert!(types.contains(&ty), "synthetic file lacks a {ty} tensor");
    }

    // Typed accessors on the same file.
    assert_eq!(file.meta_u64("test.u64").expect("u64"), u64::MAX - 2);
    assert_eq!(file.meta_u64("test.u8").expect("u8"), 250);
    assert!(file.meta_u64("test.i8").is_err(), "negative value read as u64");
    assert_eq!(file.meta_f64("test.f64").expect("f64"), -1.0e300 / 3.0);
    assert_eq!(file.meta_string_array("test.array_string").expect("strings"), ["a", "", "<|im_start|>", "Ġworld"]);
    let err = file.meta_str("test.u32").expect_err("u32 is not a string").to_string();
    assert!(err.contains("test.u32") && err.contains("string"), "{err}");
    let err = file.meta_u64("no.such.key").expect_err("missing").to_string();
    assert!(err.contains("no.such.key") && err.contains("missing"), "{err}");

    // The same bytes from memory, and relabelled as GGUF v2 (identical layout), parse identically.
    let bytes = std::fs::read(&path).expect("read synth.gguf");
    let mem = GgufFile::from_bytes(bytes.clone(), "synth-in-memory").expect("from_bytes");
    assert_eq!(mem.metadata, file.metadata);
    assert_eq!(mem.tensors, file.tensors);
    let mut v2 = bytes.clone();
    v2[4..8].copy_from_slice(&2u32.to_le_bytes());
    let v2 = GgufFile::from_bytes(v2, "synth-v2").expect("v2 file");
    assert_eq!(v2.version, 2);
    assert_eq!(v2.tensors, file.tensors);
    assert_eq!(v2.dequantize_f32("t.q6_k").expect("q6_k"), file.dequantize_f32("t.q6_k").expect("q6_k"));

    // Every strict prefix that cuts into the header or tensor data is an error, never a panic;
    // prefixes that only drop trailing padding still hold every tensor.
    let needed = file.tensors.iter().map(|t| file.data_offset() + t.offset + t.n_bytes).max().unwrap_or(0);
    for len in 0..bytes.len() {
        let r = GgufFile::from_bytes(bytes[..len].to_vec(), "prefix");
        if (len as u64) < needed {
            let e = r.err().unwrap_or_else(|| panic!("prefix of {len} bytes (need {needed}) parsed"));
            assert!(!e.to_string().is_empty());
        } else {
            assert!(r.is_ok(), "prefix of {len} bytes holds all tensors but failed: {:?}", r.err());
        }
    }
}

fn model_path(dir: &str, file: &str) -> PathBuf {
    let home = match std::env::var_os("KVBENCH_HOME") {
        Some(h) => PathBuf::from(h),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is not set")).join(".cache/kvbench"),
    };
    let path = home.join("models").join(dir).join(file);
    assert!(path.is_file(), "model file {} is missing: run `kvbench model fetch {dir}` (scripts/test.sh does this) or set KVBENCH_HOME", path.display());
    path
}

fn type_counts(file: &GgufFile) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for t in &file.tensors {
        *counts.entry(t.ggml_type.name()).or_insert(0) += 1;
    }
    counts
}

/// Dumps `path` with gguf-py (dequantising `names`) and compares everything with our reader.
fn compare_with_dump(file: &GgufFile, path: &Path, names: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = vec!["dump", path.to_str().expect("utf-8 path"), dir.path().to_str().expect("utf-8")];
    args.extend_from_slice(names);
    run_reference(&args);
    let reference = load_json(&dir.path().join("reference.json"));
    assert_eq!(u64::from(file.version), reference["version"].as_u64().expect("version"));
    check_metadata(file, &reference);
    let report = check_tensors(file, &reference, dir.path());
    assert_eq!(report.len(), names.len(), "compared tensors");
}

#[test]
fn smollm2_matches_gguf_py() {
    let path = model_path("smollm2-135m", "SmolLM2-135M-Instruct.Q4_1.gguf");
    let file = GgufFile::open(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(file.architecture().expect("arch"), "llama");
    assert_eq!(file.meta_u64("llama.block_count").expect("blocks"), 30);
    assert_eq!(file.meta_u64("llama.embedding_length").expect("embd"), 576);
    assert_eq!(file.meta_u64("llama.feed_forward_length").expect("ffn"), 1536);
    assert_eq!(file.meta_u64("llama.attention.head_count").expect("heads"), 9);
    assert_eq!(file.meta_u64("llama.attention.head_count_kv").expect("kv heads"), 3);
    assert_eq!(file.meta_u64("llama.context_length").expect("ctx"), 8192);
    assert_eq!(file.meta_f64("llama.rope.freq_base").expect("rope"), 100000.0);
    assert_eq!(file.meta_string_array("tokenizer.ggml.tokens").expect("tokens").len(), 49152);
    assert_eq!(file.alignment(), 32);
    assert_eq!(file.tensors.len(), 272);
    let counts = type_counts(&file);
    assert_eq!(counts.get("Q4_1"), Some(&210), "{counts:?}");
    assert_eq!(counts.get("Q8_0"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("F32"), Some(&61), "{counts:?}");
    let embd = file.tensor_info("token_embd.weight").expect("token_embd");
    assert_eq!(embd.ggml_type, GgmlType::Q8_0);
    assert_eq!(embd.torch_shape(), [49152, 576]);
    assert_eq!(file.tensor_info("blk.0.attn_k.weight").expect("attn_k").torch_shape(), [192, 576]);
    compare_with_dump(&file, &path, &["token_embd.weight", "blk.0.attn_q.weight", "blk.29.ffn_down.weight", "output_norm.weight"]);
}

#[test]
fn smollm2_whole_file_dequantisation_time() {
    let path = model_path("smollm2-135m", "SmolLM2-135M-Instruct.Q4_1.gguf");
    let start = Instant::now();
    let file = GgufFile::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let opened = start.elapsed();
    let mut n = 0usize;
    let mut non_finite = 0usize;
    let start = Instant::now();
    for t in &file.tensors {
        let v = file.dequantize_f32(&t.name).unwrap_or_else(|e| panic!("{e}"));
        n += v.len();
        non_finite += v.iter().filter(|x| !x.is_finite()).count();
    }
    let took = start.elapsed();
    println!(
        "SmolLM2: open {:.1} ms; dequantised {n} values in {} tensors in {:.3} s ({:.2} ns/value)",
        opened.as_secs_f64() * 1e3,
        file.tensors.len(),
        took.as_secs_f64(),
        took.as_secs_f64() * 1e9 / n as f64
    );
    assert_eq!(non_finite, 0);
    assert_eq!(n as u64, file.tensors.iter().map(|t| t.n_elements()).sum::<u64>());
    // Generous bound for a shared 2-core machine; the measured time is printed above.
    assert!(took.as_secs_f64() < 5.0, "whole-file dequantisation took {took:?}");
}

#[test]
fn qwen_matches_gguf_py() {
    let path = model_path("qwen2.5-0.5b", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    let file = GgufFile::open(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(file.architecture().expect("arch"), "qwen2");
    assert_eq!(file.meta_u64("qwen2.block_count").expect("blocks"), 24);
    assert_eq!(file.meta_u64("qwen2.embedding_length").expect("embd"), 896);
    assert_eq!(file.meta_u64("qwen2.attention.head_count").expect("heads"), 14);
    assert_eq!(file.meta_u64("qwen2.attention.head_count_kv").expect("kv heads"), 2);
    assert_eq!(file.meta_u64("qwen2.context_length").expect("ctx"), 32768);
    assert_eq!(file.meta_string_array("tokenizer.ggml.tokens").expect("tokens").len(), 151936);
    let counts = type_counts(&file);
    for (ty, n) in [("Q5_0", 133), ("Q8_0", 13), ("Q6_K", 12), ("Q4_K", 12), ("F32", 121)] {
        assert_eq!(counts.get(ty), Some(&n), "{ty}: {counts:?}");
    }
    // The smallest tensor of each quantised type, plus a bias (F32).
    let mut names: Vec<&str> = Vec::new();
    for ty in [GgmlType::Q5_0, GgmlType::Q6_K, GgmlType::Q4_K, GgmlType::Q8_0] {
        let t = file.tensors.iter().filter(|t| t.ggml_type == ty).min_by_key(|t| t.n_bytes).unwrap_or_else(|| panic!("no {ty} tensor"));
        names.push(&t.name);
    }
    names.push("blk.0.attn_q.bias");
    compare_with_dump(&file, &path, &names);
}
