//! Model-config overrides (RoPE base, RoPE factor, linear scaling, context length) change the
//! model exactly as editing its `config.json` would.

mod common;

use kvcore::cache::FullCacheFactory;
use kvcore::device::{DType, RuntimeSettings};
use kvcore::loader::{load, load_with, ConfigOverrides};
use kvcore::sources::ModelFiles;
use tch::{Device, Kind};

fn settings() -> RuntimeSettings {
    RuntimeSettings { device: Device::Cpu, dtype: DType::F32, kv_dtype: DType::F32 }
}

fn random_model(dir: &std::path::Path) {
    let preset = kvcore::random_init::PRESETS.iter().find(|p| p.name == "tiny").copied().unwrap();
    let opts = kvcore::random_init::InitOptions {
        arch: kvcore::config::Architecture::Llama,
        preset,
        seed: 11,
        dtype: Kind::Float,
        tokenizer_gguf: common::smollm2_gguf(),
        sliding_window: None,
    };
    kvcore::random_init::write_random_model(&opts, dir).unwrap();
}

fn edit_config(dir: &std::path::Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn overrides_equal_an_edited_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m");
    random_model(&dir);
    let ids: Vec<u32> = (0..40).map(|i| (i * 53 + 7) % 900 + 3).collect();
    let files = ModelFiles::HfDir(dir.clone());
    let base = load(&files, settings()).unwrap();
    let theta = base.transformer("test").unwrap().config.rope_theta;
    let mut base = base;
    let plain = kvcore::generate::all_logits(&mut base, &ids, &FullCacheFactory).unwrap();
    let overrides =
        ConfigOverrides { rope_theta_factor: Some(32.0), rope_linear_factor: Some(4.0), max_position_embeddings: Some(12345), ..Default::default() };
    let mut over = load_with(&files, settings(), &overrides).unwrap();
    assert_eq!(over.transformer("test").unwrap().config.rope_theta, theta * 32.0);
    assert_eq!(over.transformer("test").unwrap().config.max_position_embeddings, 12345);
    let stretched = kvcore::generate::all_logits(&mut over, &ids, &FullCacheFactory).unwrap();
    assert!(common::max_abs_diff(&plain, &stretched) > 1e-4, "the RoPE override changed nothing");
    // The same change written into config.json.
    edit_config(&dir, |v| {
        v["rope_theta"] = serde_json::json!(theta * 32.0);
        v["rope_scaling"] = serde_json::json!({"rope_type": "linear", "factor": 4.0});
        v["max_position_embeddings"] = serde_json::json!(12345);
    });
    let mut edited = load(&files, settings()).unwrap();
    let reference = kvcore::generate::all_logits(&mut edited, &ids, &FullCacheFactory).unwrap();
    assert_eq!(common::max_abs_diff(&reference, &stretched), 0.0);
    // rope_theta replaces the base.
    let mut set = load_with(&files, settings(), &ConfigOverrides { rope_theta: Some(777.0), ..Default::default() }).unwrap();
    assert_eq!(set.transformer("test").unwrap().config.rope_theta, 777.0);
    let _ = kvcore::generate::all_logits(&mut set, &ids, &FullCacheFactory).unwrap();
}
