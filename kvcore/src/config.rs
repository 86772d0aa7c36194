//! Model hyper-parameters for the Llama family (Llama 2/3/3.1, Mistral, Qwen2/2.5, SmolLM2), read
//! from a Hugging Face `config.json` (transformers 4.x and 5.x spellings) or from GGUF metadata.

use crate::error::{Error, Result};
use kvformats::gguf::GgufFile;
use serde_json::Value;
use std::path::Path;

/// The decoder variants kvbench runs; they share one parameterised implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Architecture {
    /// Llama 2/3/3.1 and SmolLM2.
    Llama,
    /// Mistral: Llama plus a sliding attention window.
    Mistral,
    /// Qwen2/2.5: Llama plus biases on the q/k/v projections.
    Qwen2,
}

impl Architecture {
    /// Parses `model_type` / `general.architecture`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "llama" | "smollm" | "smollm2" => Some(Architecture::Llama),
            "mistral" => Some(Architecture::Mistral),
            "qwen2" => Some(Architecture::Qwen2),
            _ => None,
        }
    }
    /// The name used in configs.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
            Architecture::Qwen2 => "qwen2",
        }
    }
}

/// How rotary frequencies are rescaled for long contexts.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (LongChat, "linear" in transformers).
    Linear {
        factor: f64,
    },
    /// Llama 3.1's piecewise frequency rescaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// Everything the decoder needs to know about a model's shape.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    /// Per layer: the sliding attention window, if that layer has one.
    pub sliding_window: Vec<Option<usize>>,
    /// Biases on the q/k/v projections (Qwen2, or Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama with `attention_bias`).
    pub o_bias: bool,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl ModelConfig {
    /// Bytes one token occupies in a full KV cache of element size `elem_bytes`.
    pub fn kv_bytes_per_token(&self, elem_bytes: usize) -> u64 {
        (2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * elem_bytes) as u64
    }

    /// Checks the shape is internally consistent.
    pub fn validate(&self, file: &Path) -> Result<()> {
        let err = |key: &str, problem: String| Error::Config { file: file.into(), key: key.into(), problem };
        for (key, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
        ] {
            if v == 0 {
                return Err(err(key, "must be a positive integer".into()));
            }
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return Err(err("num_key_value_heads", format!("{} does not divide num_attention_heads = {}", self.num_key_value_heads, self.num_attention_heads)));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(err("head_dim", format!("{} is odd; rotary embeddings need an even head size", self.head_dim)));
        }
        Ok(())
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_hf_config(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::File { file: path.into(), problem: format!("not valid JSON: {e}") })?;
        let cfg = Self::from_hf_json(&v, path)?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn from_hf_json(v: &Value, file: &Path) -> Result<Self> {
        let err = |key: &str, problem: &str| Error::Config { file: file.into(), key: key.into(), problem: problem.into() };
        let req_usize = |key: &str| -> Result<usize> {
            v.get(key).and_then(Value::as_u64).map(|x| x as usize).ok_or_else(|| err(key, "missing or not a non-negative integer"))
        };
        let opt_usize = |key: &str| v.get(key).and_then(Value::as_u64).map(|x| x as usize);
        let opt_f64 = |key: &str| v.get(key).and_then(Value::as_f64);
        let opt_bool = |key: &str| v.get(key).and_then(Value::as_bool);

        let model_type = v.get("model_type").and_then(Value::as_str).ok_or_else(|| err("model_type", "missing or not a string"))?;
        let architecture = Architecture::from_name(model_type).ok_or_else(|| Error::UnknownArchitecture { arch: model_type.into(), file: file.into() })?;
        let hidden_size = req_usize("hidden_size")?;
        let num_attention_heads = req_usize("num_attention_heads")?;
        let num_hidden_layers = req_usize("num_hidden_layers")?;
        let num_key_value_heads = opt_usize("num_key_value_heads").unwrap_or(num_attention_heads);
        let head_dim = opt_usize("head_dim").unwrap_or(hidden_size.checked_div(num_attention_heads).unwrap_or(0));
        if opt_bool("mlp_bias") == Some(true) {
            return Err(err("mlp_bias", "true is not supported (no Llama-family checkpoint kvbench targets uses it)"));
        }

        // transformers 5 nests rope settings in `rope_parameters`; 4.x uses rope_theta + rope_scaling.
        let rope = v.get("rope_parameters").filter(|r| r.is_object());
        let rope_theta = rope.and_then(|r| r.get("rope_theta")).and_then(Value::as_f64).or_else(|| opt_f64("rope_theta")).unwrap_or(10_000.0);
        let scaling = rope.or_else(|| v.get("rope_scaling").filter(|r| r.is_object()));
        let rope_scaling = match scaling {
            None => RopeScaling::None,
            Some(s) => {
                let kind = s.get("rope_type").or_else(|| s.get("type")).and_then(Value::as_str).unwrap_or("default");
                let f = |k: &str| s.get(k).and_then(Value::as_f64);
                match kind {
                    "default" => RopeScaling::None,
                    "linear" => RopeScaling::Linear { factor: f("factor").ok_or_else(|| err("rope_scaling.factor", "missing"))? },
                    "llama3" => RopeScaling::Llama3 {
                        factor: f("factor").ok_or_else(|| err("rope_scaling.factor", "missing"))?,
                        low_freq_factor: f("low_freq_factor").ok_or_else(|| err("rope_scaling.low_freq_factor", "missing"))?,
                        high_freq_factor: f("high_freq_factor").ok_or_else(|| err("rope_scaling.high_freq_factor", "missing"))?,
                        original_max_position_embeddings: f("original_max_position_embeddings")
                            .ok_or_else(|| err("rope_scaling.original_max_position_embeddings", "missing"))?,
                    },
                    other => return Err(err("rope_scaling.rope_type", &format!("`{other}` is not supported (expected default, linear or llama3)"))),
                }
            }
        };

        // Sliding windows: Mistral on every layer; Qwen2 only with use_sliding_window, from
        // max_window_layers on; an explicit `layer_types` list wins.
        let window = opt_usize("sliding_window");
        let sliding_window: Vec<Option<usize>> = if let Some(types) = v.get("layer_types").and_then(Value::as_array) {
            if types.len() != num_hidden_layers {
                return Err(err("layer_types", "length differs from num_hidden_layers"));
            }
            types.iter().map(|t| if t.as_str() == Some("sliding_attention") { window } else { None }).collect()
        } else {
            match architecture {
                Architecture::Mistral => vec![window; num_hidden_layers],
                Architecture::Qwen2 if opt_bool("use_sliding_window") == Some(true) => {
                    let from = opt_usize("max_window_layers").unwrap_or(num_hidden_layers);
                    (0..num_hidden_layers).map(|i| if i >= from { window } else { None }).collect()
                }
                _ => vec![None; num_hidden_layers],
            }
        };

        let attention_bias = opt_bool("attention_bias").unwrap_or(false);
        let ids = |key: &str| -> Vec<u32> {
            match v.get(key) {
                Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
                Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).map(|x| x as u32).collect(),
                _ => vec![],
            }
        };
        Ok(ModelConfig {
            architecture,
            hidden_size,
            intermediate_size: req_usize("intermediate_size")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size: req_usize("vocab_size")?,
            rms_norm_eps: opt_f64("rms_norm_eps").unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: opt_usize("max_position_embeddings").unwrap_or(4096),
            sliding_window,
            qkv_bias: architecture == Architecture::Qwen2 || attention_bias,
            o_bias: attention_bias,
            tie_word_embeddings: opt_bool("tie_word_embeddings").unwrap_or(false),
            bos_token_id: ids("bos_token_id").first().copied(),
            eos_token_ids: ids("eos_token_id"),
        })
    }

    /// Reads the model shape from GGUF metadata (`<arch>.block_count` and friends).
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let arch_name = gguf.architecture()?.to_string();
        let architecture =
            Architecture::from_name(&arch_name).ok_or_else(|| Error::UnknownArchitecture { arch: arch_name.clone(), file: gguf.path.clone() })?;
        let key = |k: &str| format!("{arch_name}.{k}");
        let u = |k: &str| -> Result<usize> { Ok(gguf.meta_u64(&key(k))? as usize) };
        let opt_u = |k: &str| gguf.meta(&key(k)).and_then(|v| v.as_u64()).map(|x| x as usize);
        let opt_f = |k: &str| gguf.meta(&key(k)).and_then(|v| v.as_f64());

        let hidden_size = u("embedding_length")?;
        let num_attention_heads = u("attention.head_count")?;
        let num_hidden_layers = u("block_count")?;
        let num_key_value_heads = opt_u("attention.head_count_kv").unwrap_or(num_attention_heads);
        let head_dim = opt_u("attention.key_length").unwrap_or(hidden_size.checked_div(num_attention_heads).unwrap_or(0));
        let vocab_size = match gguf.meta("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
            Some(tokens) => tokens.len(),
            None => u("vocab_size")?,
        };
        let rope_scaling = match gguf.meta(&key("rope.scaling.type")).and_then(|v| v.as_str()) {
            None | Some("none") => RopeScaling::None,
            Some("linear") => RopeScaling::Linear { factor: opt_f("rope.scaling.factor").unwrap_or(1.0) },
            Some(other) => {
                return Err(Error::Config {
                    file: gguf.path.clone(),
                    key: key("rope.scaling.type"),
                    problem: format!("`{other}` is not supported (expected none or linear)"),
                })
            }
        };
        let window = opt_u("attention.sliding_window");
        let has_output = gguf.tensor_info("output.weight").is_some();
        let tok = |k: &str| gguf.meta(k).and_then(|v| v.as_u64()).map(|x| x as u32);
        let cfg = ModelConfig {
            architecture,
            hidden_size,
            intermediate_size: u("feed_forward_length")?,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            vocab_size,
            rms_norm_eps: opt_f("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            rope_theta: opt_f("rope.freq_base").unwrap_or(10_000.0),
            rope_scaling,
            max_position_embeddings: opt_u("context_length").unwrap_or(4096),
            sliding_window: vec![window; num_hidden_layers],
            qkv_bias: gguf.tensor_info("blk.0.attn_q.bias").is_some(),
            o_bias: gguf.tensor_info("blk.0.attn_output.bias").is_some(),
            tie_word_embeddings: !has_output,
            bos_token_id: tok("tokenizer.ggml.bos_token_id"),
            eos_token_ids: tok("tokenizer.ggml.eos_token_id").into_iter().collect(),
        };
        cfg.validate(&gguf.path)?;
        Ok(cfg)
    }
}
