//! Random-weight models in Hugging Face layout (`config.json`, `model.safetensors`,
//! `tokenizer.json`, `tokenizer_config.json`), for tests that must run offline and for speed
//! benchmarks of shapes too big to download. The tokenizer and chat template are real (taken
//! from a GGUF, by default the SmolLM2 one), so prompts and chat rendering work as for real models.

use crate::config::Architecture;
use crate::error::{Error, Result};
use kvformats::gguf::GgufFile;
use kvformats::tokenizer::{tokenizer_json, GgufTokenizerSpec};
use serde_json::json;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// A model shape.
#[derive(Clone, Copy, Debug)]
pub struct Preset {
    pub name: &'static str,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    pub max_positions: usize,
}

/// Shapes `kvbench model init --preset` knows.
pub const PRESETS: &[Preset] = &[
    Preset { name: "tiny", hidden: 64, intermediate: 128, layers: 2, heads: 4, kv_heads: 2, head_dim: 16, rope_theta: 10_000.0, max_positions: 4096 },
    Preset {
        name: "smollm2-135m",
        hidden: 576,
        intermediate: 1536,
        layers: 30,
        heads: 9,
        kv_heads: 3,
        head_dim: 64,
        rope_theta: 100_000.0,
        max_positions: 8192,
    },
    Preset {
        name: "qwen2.5-0.5b",
        hidden: 896,
        intermediate: 4864,
        layers: 24,
        heads: 14,
        kv_heads: 2,
        head_dim: 64,
        rope_theta: 1_000_000.0,
        max_positions: 32768,
    },
    Preset {
        name: "llama2-7b",
        hidden: 4096,
        intermediate: 11008,
        layers: 32,
        heads: 32,
        kv_heads: 32,
        head_dim: 128,
        rope_theta: 10_000.0,
        max_positions: 4096,
    },
    Preset {
        name: "llama3-8b",
        hidden: 4096,
        intermediate: 14336,
        layers: 32,
        heads: 32,
        kv_heads: 8,
        head_dim: 128,
        rope_theta: 500_000.0,
        max_positions: 8192,
    },
    Preset {
        name: "mistral-7b",
        hidden: 4096,
        intermediate: 14336,
        layers: 32,
        heads: 32,
        kv_heads: 8,
        head_dim: 128,
        rope_theta: 1_000_000.0,
        max_positions: 32768,
    },
];

/// What to write.
#[derive(Clone, Debug)]
pub struct InitOptions {
    pub arch: Architecture,
    pub preset: Preset,
    pub seed: i64,
    /// Storage dtype of the weights.
    pub dtype: Kind,
    /// GGUF whose tokenizer and chat template the model gets.
    pub tokenizer_gguf: std::path::PathBuf,
    /// Sliding window for Mistral (default: a quarter of the context, at least 16).
    pub sliding_window: Option<usize>,
}

/// Writes a random-weight model into `out_dir`.
pub fn write_random_model(opts: &InitOptions, out_dir: &Path) -> Result<()> {
    let _guard = tch::no_grad_guard();
    let spec = write_tokenizer_files(&opts.tokenizer_gguf, out_dir)?;
    let vocab = spec.tokens.len();

    let p = opts.preset;
    let model_type = opts.arch.name();
    let qwen = opts.arch == Architecture::Qwen2;
    let mut cfg = json!({
        "architectures": [match opts.arch { Architecture::Llama => "LlamaForCausalLM", Architecture::Mistral => "MistralForCausalLM", Architecture::Qwen2 => "Qwen2ForCausalLM" }],
        "model_type": model_type,
        "hidden_size": p.hidden,
        "intermediate_size": p.intermediate,
        "num_hidden_layers": p.layers,
        "num_attention_heads": p.heads,
        "num_key_value_heads": p.kv_heads,
        "head_dim": p.head_dim,
        "vocab_size": vocab,
        "rms_norm_eps": 1e-5,
        "rope_theta": p.rope_theta,
        "max_position_embeddings": p.max_positions,
        "hidden_act": "silu",
        "tie_word_embeddings": opts.arch == Architecture::Llama,
        "bos_token_id": spec.bos_token_id,
        "eos_token_id": spec.eos_token_id,
        "torch_dtype": match opts.dtype { Kind::BFloat16 => "bfloat16", Kind::Half => "float16", _ => "float32" },
    });
    if opts.arch == Architecture::Mistral {
        cfg["sliding_window"] = json!(opts.sliding_window.unwrap_or((p.max_positions / 4).max(16)));
    }
    write_json(&out_dir.join("config.json"), &cfg)?;

    tch::manual_seed(opts.seed);
    let randn = |shape: &[usize]| {
        let s: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        (Tensor::randn(&s, (Kind::Float, Device::Cpu)) * 0.02).to_kind(opts.dtype)
    };
    let ones = |n: usize| Tensor::ones([n as i64], (opts.dtype, Device::Cpu));
    let (h, d) = (p.hidden, p.head_dim);
    let mut named: Vec<(String, Tensor)> = vec![("model.embed_tokens.weight".into(), randn(&[vocab, h]))];
    for i in 0..p.layers {
        let pre = format!("model.layers.{i}");
        named.push((format!("{pre}.input_layernorm.weight"), ones(h)));
        named.push((format!("{pre}.post_attention_layernorm.weight"), ones(h)));
        named.push((format!("{pre}.self_attn.q_proj.weight"), randn(&[p.heads * d, h])));
        named.push((format!("{pre}.self_attn.k_proj.weight"), randn(&[p.kv_heads * d, h])));
        named.push((format!("{pre}.self_attn.v_proj.weight"), randn(&[p.kv_heads * d, h])));
        named.push((format!("{pre}.self_attn.o_proj.weight"), randn(&[h, p.heads * d])));
        if qwen {
            named.push((format!("{pre}.self_attn.q_proj.bias"), randn(&[p.heads * d])));
            named.push((format!("{pre}.self_attn.k_proj.bias"), randn(&[p.kv_heads * d])));
            named.push((format!("{pre}.self_attn.v_proj.bias"), randn(&[p.kv_heads * d])));
        }
        named.push((format!("{pre}.mlp.gate_proj.weight"), randn(&[p.intermediate, h])));
        named.push((format!("{pre}.mlp.up_proj.weight"), randn(&[p.intermediate, h])));
        named.push((format!("{pre}.mlp.down_proj.weight"), randn(&[h, p.intermediate])));
    }
    named.push(("model.norm.weight".into(), ones(h)));
    if opts.arch != Architecture::Llama {
        named.push(("lm_head.weight".into(), randn(&[vocab, h])));
    }
    write_weights(&named, out_dir)
}

/// Writes the tokenizer, tokenizer config (chat template) and generation config taken from the
/// GGUF at `gguf_path` into `out_dir` (created if needed); returns the GGUF's tokenizer.
fn write_tokenizer_files(gguf_path: &Path, out_dir: &Path) -> Result<GgufTokenizerSpec> {
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let gguf = GgufFile::open(gguf_path)?;
    let spec = GgufTokenizerSpec::from_gguf(&gguf).map_err(|e| Error::Tokenizer(e.to_string()))?;
    let tok_json = tokenizer_json(&spec).map_err(|e| Error::Tokenizer(e.to_string()))?;
    let tok_path = out_dir.join("tokenizer.json");
    std::fs::write(&tok_path, tok_json).map_err(|e| Error::io(&tok_path, e))?;
    let name_of = |id: Option<u32>| id.and_then(|i| spec.tokens.get(i as usize).cloned());
    let tok_cfg = json!({
        "bos_token": name_of(spec.bos_token_id),
        "eos_token": name_of(spec.eos_token_id),
        "chat_template": spec.chat_template,
        "add_bos_token": spec.add_bos_token,
    });
    write_json(&out_dir.join("tokenizer_config.json"), &tok_cfg)?;
    write_json(&out_dir.join("generation_config.json"), &json!({"bos_token_id": spec.bos_token_id, "eos_token_id": spec.eos_token_id}))?;
    Ok(spec)
}

/// Random linear-time models `kvbench model init --arch A --preset P` knows (Hugging Face
/// layouts): `tiny` for tests, and the shapes of small published models for speed benchmarks
/// (`recurrent_gemma`'s `reduced-2b` keeps recurrentgemma-2b's widths over 6 layers).
pub const RECURRENT_PRESETS: &[(&str, &[&str])] =
    &[("mamba", &["tiny", "mamba-130m"]), ("mamba2", &["tiny", "mamba2-130m"]), ("recurrent_gemma", &["tiny", "reduced-2b"])];

/// The `config.json` of a random linear-time model of `arch`/`preset` with `vocab` rows.
fn recurrent_config(arch: &str, preset: &str, vocab: usize, eos: Option<u32>) -> Option<serde_json::Value> {
    let mut cfg = match (arch, preset) {
        ("mamba", "tiny" | "mamba-130m") => {
            let (hidden, layers) = if preset == "tiny" { (64, 2) } else { (768, 24) };
            json!({"architectures": ["MambaForCausalLM"], "model_type": "mamba", "hidden_size": hidden, "intermediate_size": 2 * hidden,
                   "state_size": 16, "num_hidden_layers": layers, "conv_kernel": 4, "time_step_rank": "auto", "use_bias": false,
                   "use_conv_bias": true, "residual_in_fp32": true, "tie_word_embeddings": true})
        }
        ("mamba2", "tiny" | "mamba2-130m") => {
            let (hidden, layers, heads, head_dim, state, chunk) = if preset == "tiny" { (64, 2, 8, 16, 16, 16) } else { (768, 24, 24, 64, 128, 256) };
            json!({"architectures": ["Mamba2ForCausalLM"], "model_type": "mamba2", "hidden_size": hidden, "num_hidden_layers": layers,
                   "num_heads": heads, "head_dim": head_dim, "expand": 2, "state_size": state, "n_groups": 1, "conv_kernel": 4,
                   "chunk_size": chunk, "use_bias": false, "use_conv_bias": true, "residual_in_fp32": true, "tie_word_embeddings": true})
        }
        ("recurrent_gemma", "tiny" | "reduced-2b") => {
            let (hidden, inter, layers, heads, head_dim, window) = if preset == "tiny" { (64, 192, 3, 4, 16, 32) } else { (1024, 6144, 6, 8, 128, 2048) };
            json!({"architectures": ["RecurrentGemmaForCausalLM"], "model_type": "recurrent_gemma", "hidden_size": hidden,
                   "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": 1,
                   "head_dim": head_dim, "lru_width": hidden, "attention_window_size": window, "conv1d_width": 4,
                   "logits_soft_cap": 30.0, "block_types": ["recurrent", "recurrent", "attention"], "tie_word_embeddings": true})
        }
        _ => return None,
    };
    cfg["vocab_size"] = json!(vocab);
    cfg["eos_token_id"] = json!(eos);
    Some(cfg)
}

/// Writes a random-weight linear-time model (`arch`: mamba, mamba2 or recurrent_gemma; see
/// [`RECURRENT_PRESETS`]) in its Hugging Face layout into `out_dir`, with the tokenizer and chat
/// template of `tokenizer_gguf` (weights stored in `dtype`).
pub fn write_random_recurrent(arch: &str, preset: &str, seed: i64, dtype: Kind, tokenizer_gguf: &Path, out_dir: &Path) -> Result<()> {
    use crate::ssm::{mamba, mamba2, recurrent_gemma};
    let _guard = tch::no_grad_guard();
    let known = || RECURRENT_PRESETS.iter().map(|(a, ps)| format!("{a}: {}", ps.join(", "))).collect::<Vec<_>>().join("; ");
    if recurrent_config(arch, preset, 1, None).is_none() {
        return Err(Error::InvalidArgument { what: "linear-time model arch/preset", value: format!("{arch}/{preset}"), expected: known() });
    }
    let spec = write_tokenizer_files(tokenizer_gguf, out_dir)?;
    let cfg = recurrent_config(arch, preset, spec.tokens.len(), spec.eos_token_id).expect("checked above");
    let cfg_path = out_dir.join("config.json");
    write_json(&cfg_path, &cfg)?;
    let text = cfg.to_string();
    let tensors = match arch {
        "mamba" => mamba::MambaModel::random_tensors(&mamba::MambaConfig::from_json_str(&text, &cfg_path)?, seed, Device::Cpu),
        "mamba2" => mamba2::Mamba2Model::random_tensors(&mamba2::Mamba2Config::from_json_str(&text, &cfg_path)?, seed, Device::Cpu),
        _ => recurrent_gemma::RecurrentGemmaModel::random_tensors(&recurrent_gemma::RecurrentGemmaConfig::from_json_str(&text, &cfg_path)?, seed, Device::Cpu),
    };
    write_named_weights(tensors, dtype, out_dir)
}

/// Writes a random-weight RWKV World model (`version` 5 or 6; preset `tiny`: width 64, 2 layers,
/// 4 heads of 16; `169m`: the 169M World models' width 768, 12 layers, 12 heads of 64; both with
/// the World vocabulary's 65,536 rows) into `out_dir` as `model.safetensors` with the published
/// tensor names, beside a copy of the World vocabulary `vocab`.
pub fn write_random_rwkv(version: u8, preset: &str, seed: i64, dtype: Kind, vocab: &Path, out_dir: &Path) -> Result<()> {
    use crate::ssm::rwkv::{RwkvConfig, RwkvModel, RwkvVersion, WORLD_VOCAB_FILE};
    let _guard = tch::no_grad_guard();
    let (width, layers, heads, ffn, mix_rank, decay_rank) = match preset {
        "tiny" => (64, 2, 4, 224, 8, 16),
        "169m" => (768, 12, 12, 2688, 32, 64),
        other => return Err(Error::InvalidArgument { what: "RWKV preset", value: other.into(), expected: "tiny or 169m".into() }),
    };
    let version = match version {
        5 => RwkvVersion::V5,
        6 => RwkvVersion::V6,
        v => return Err(Error::InvalidArgument { what: "RWKV version", value: v.to_string(), expected: "5 or 6".into() }),
    };
    let v6 = version == RwkvVersion::V6;
    let config = RwkvConfig {
        version,
        vocab_size: 65_536,
        hidden_size: width,
        attention_size: width,
        ffn_size: ffn,
        num_layers: layers,
        num_heads: heads,
        mix_rank: if v6 { mix_rank } else { 0 },
        decay_rank: if v6 { decay_rank } else { 0 },
        faaaa: true,
        time_state: false,
    };
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let dest = out_dir.join(WORLD_VOCAB_FILE);
    std::fs::copy(vocab, &dest).map_err(|e| Error::io(&dest, e))?;
    write_named_weights(RwkvModel::random_tensors(&config, seed, Device::Cpu), dtype, out_dir)
}

/// Writes `named` as `out_dir/model.safetensors`, through a temporary name renamed into place.
fn write_weights(named: &[(String, Tensor)], out_dir: &Path) -> Result<()> {
    let path = out_dir.join("model.safetensors");
    let partial = out_dir.join(".model.safetensors.partial");
    Tensor::write_safetensors(named, &partial)?;
    std::fs::rename(&partial, &path).map_err(|e| Error::io(&path, e))
}

/// [`write_weights`] for a family's name → tensor map, converted to `dtype`, in name order (so the
/// file is the same bytes for the same seed).
fn write_named_weights(tensors: std::collections::HashMap<String, Tensor>, dtype: Kind, out_dir: &Path) -> Result<()> {
    let mut named: Vec<(String, Tensor)> = tensors.into_iter().map(|(n, t)| (n, t.to_kind(dtype))).collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    write_weights(&named, out_dir)
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::Other(e.to_string()))?;
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}
