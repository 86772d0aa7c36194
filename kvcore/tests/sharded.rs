//! Sharded Hugging Face checkpoints (`model.safetensors.index.json` + shards) load to the same
//! model as the single-file checkpoint, and an index pointing outside the directory is refused.

mod common;

use kvcore::cache::FullCacheFactory;
use kvcore::config::Architecture;
use kvcore::device::{DType, RuntimeSettings};
use kvcore::generate::all_logits;
use kvcore::loader::load;
use kvcore::random_init::{write_random_model, InitOptions, PRESETS};
use kvcore::sources::ModelFiles;
use tch::{Device, Tensor};

fn settings() -> RuntimeSettings {
    RuntimeSettings { device: Device::Cpu, dtype: DType::F32, kv_dtype: DType::F32 }
}

#[test]
fn sharded_checkpoint_equals_single_file() {
    let tmp = tempfile::tempdir().unwrap();
    let single = tmp.path().join("single");
    let opts = InitOptions {
        arch: Architecture::Mistral,
        preset: *PRESETS.iter().find(|p| p.name == "tiny").unwrap(),
        seed: 5,
        dtype: tch::Kind::Float,
        tokenizer_gguf: common::smollm2_gguf(),
        sliding_window: Some(8),
    };
    write_random_model(&opts, &single).unwrap();

    // Split the tensors over two shards, the way transformers does, with an index.
    let sharded = tmp.path().join("sharded");
    std::fs::create_dir_all(&sharded).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        std::fs::copy(single.join(f), sharded.join(f)).unwrap();
    }
    let mut named = Tensor::read_safetensors(single.join("model.safetensors")).unwrap();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let half = named.len() / 2;
    let mut weight_map = serde_json::Map::new();
    for (i, part) in [&named[..half], &named[half..]].iter().enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        Tensor::write_safetensors(part, sharded.join(&file)).unwrap();
        for (name, _) in part.iter() {
            weight_map.insert(name.clone(), serde_json::Value::String(file.clone()));
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(sharded.join("model.safetensors.index.json"), index.to_string()).unwrap();

    let ids: Vec<u32> = (0..40u32).map(|i| (i * 997) % 49152).collect();
    let mut a = load(&ModelFiles::HfDir(single), settings()).unwrap();
    let mut b = load(&ModelFiles::HfDir(sharded.clone()), settings()).unwrap();
    let la = all_logits(&mut a, &ids, &FullCacheFactory).unwrap();
    let lb = all_logits(&mut b, &ids, &FullCacheFactory).unwrap();
    assert!(la.equal(&lb), "sharded checkpoint gives different logits");

    // An index whose shard name leaves the directory is an error naming the index file.
    let bad = serde_json::json!({"weight_map": {"model.norm.weight": "../single/model.safetensors"}});
    std::fs::write(sharded.join("model.safetensors.index.json"), bad.to_string()).unwrap();
    let err = load(&ModelFiles::HfDir(sharded), settings()).err().expect("must fail").to_string();
    assert!(err.contains("model.safetensors.index.json") && err.contains("leaves the directory"), "{err}");
}
