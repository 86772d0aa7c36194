//! Shared helpers for kvcore's integration tests: the reference Python, the cached real models.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("kvcore sits in the workspace").to_path_buf()
}

/// The Python with the reference packages: `$KVBENCH_PYTHON`, else `.venv/bin/python`.
pub fn python() -> PathBuf {
    match std::env::var_os("KVBENCH_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => root().join(".venv/bin/python"),
    }
}

/// Runs a reference script from `scripts/reference`, failing the test with its output if it fails.
pub fn run_reference(script: &str, args: &[&str]) {
    let py = python();
    assert!(py.exists(), "reference python {} is missing: run scripts/bootstrap.sh --test", py.display());
    let out =
        Command::new(&py).arg(root().join("scripts/reference").join(script)).args(args).output().unwrap_or_else(|e| panic!("cannot run {}: {e}", py.display()));
    assert!(
        out.status.success(),
        "{script} {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The cached SmolLM2 GGUF, which the test command fetches before running tests.
pub fn smollm2_gguf() -> PathBuf {
    let home = kvcore::sources::kvbench_home();
    let m = kvcore::sources::known_model("smollm2-135m").expect("known");
    let p = kvcore::sources::cached_path(&home, m);
    assert!(p.is_file(), "{} is missing: run `./kvbench model fetch smollm2-135m` (scripts/test.sh does)", p.display());
    p
}

/// Writes SmolLM2's tokenizer (built from its GGUF) into a Hugging Face directory.
pub fn write_smollm2_tokenizer(dir: &Path) {
    let gguf = kvformats::gguf::GgufFile::open(&smollm2_gguf()).expect("open SmolLM2 GGUF");
    let spec = kvformats::tokenizer::GgufTokenizerSpec::from_gguf(&gguf).expect("tokenizer spec");
    let json = kvformats::tokenizer::tokenizer_json(&spec).expect("tokenizer json");
    std::fs::write(dir.join("tokenizer.json"), json).expect("write tokenizer.json");
}

/// Reads an .npy file as a tensor.
pub fn npy(path: &Path) -> tch::Tensor {
    tch::Tensor::read_npy(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Max |a - b|.
pub fn max_abs_diff(a: &tch::Tensor, b: &tch::Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// `x` (one head's `D` channels) rotated to position `p` in f64: RoPE base 10000 in the Hugging
/// Face `rotate_half` layout, written independently of `kvcache::rope` for the re-indexing tests.
pub fn rotate_f64(x: &[f32], p: f64) -> Vec<f64> {
    let (d, h) = (x.len(), x.len() / 2);
    (0..d)
        .map(|c| {
            let angle = p * 10000f64.powf(-2.0 * (c % h) as f64 / d as f64);
            let other = if c < h { -(x[c + h] as f64) } else { x[c - h] as f64 };
            x[c] as f64 * angle.cos() + other * angle.sin()
        })
        .collect()
}
