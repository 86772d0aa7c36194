//! RecurrentGemma's configuration: `config.json` of a Hugging Face `RecurrentGemmaForCausalLM`,
//! checked key by key, and the shapes and state sizes derived from it.

use crate::error::{Error, Result};
use serde_json::Value;
use std::path::Path;
use tch::Kind;

/// The temporal-mixing block of a residual layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockType {
    /// Conv1D + RG-LRU.
    Recurrent,
    /// Local sliding-window attention.
    Attention,
}

/// The shapes and switches of a RecurrentGemma model, from a Hugging Face `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct RecurrentGemmaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// As the config says; the MLP's inner width is half of it (transformers halves it).
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    /// Attention heads, and the number of blocks of the RG-LRU's block-diagonal gates.
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    /// Width of the recurrence (the RG-LRU state per layer).
    pub lru_width: usize,
    /// Keys each token attends to, itself included.
    pub attention_window_size: usize,
    /// Temporal width of the causal depthwise convolution.
    pub conv1d_width: usize,
    pub logits_soft_cap: f64,
    pub rms_norm_eps: f64,
    /// The repeating pattern of temporal blocks (layer `l` has `block_types[l % len]`).
    pub block_types: Vec<BlockType>,
    pub rope_theta: f64,
    /// Leading dimensions of each head that get the rotary embedding (`partial_rotary_factor *
    /// head_dim`).
    pub rotary_dim: usize,
    /// Bias on the q/k/v projections (o_proj always has one).
    pub attention_bias: bool,
    /// The LM head is the embedding matrix (`lm_head.weight` may be absent from the files).
    pub tie_word_embeddings: bool,
    /// End-of-sequence token ids (informational: [`super::greedy`] does not stop at them).
    pub eos_token_ids: Vec<u32>,
}

impl RecurrentGemmaConfig {
    /// Reads `path` (a `config.json`).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// Parses config JSON; `path` names the file in errors. Required: the shape keys
    /// (`vocab_size`, `hidden_size`, `intermediate_size`, `num_hidden_layers`,
    /// `num_attention_heads`); the rest default as in transformers.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let err = |key: &str, problem: String| Error::Config { file: path.to_path_buf(), key: key.into(), problem };
        let root: Value = serde_json::from_str(text).map_err(|e| err("(file)", format!("not valid JSON: {e}")))?;
        let obj = root.as_object().ok_or_else(|| err("(file)", "expected a JSON object".into()))?;
        let get = |key: &str| obj.get(key).filter(|v| !v.is_null());

        if let Some(v) = get("model_type") {
            let mt = v.as_str().ok_or_else(|| err("model_type", format!("expected a string, found {v}")))?;
            if mt != "recurrent_gemma" {
                return Err(err("model_type", format!("`{mt}` is not RecurrentGemma (expected `recurrent_gemma`)")));
            }
        }
        let uint = |key: &str, v: &Value| -> Result<usize> {
            v.as_u64().and_then(|n| usize::try_from(n).ok()).ok_or_else(|| err(key, format!("expected a non-negative integer, found {v}")))
        };
        let positive = |key: &str, v: &Value| -> Result<usize> {
            match uint(key, v)? {
                0 => Err(err(key, "must be at least 1".into())),
                n => Ok(n),
            }
        };
        let req = |key: &str| -> Result<usize> { positive(key, get(key).ok_or_else(|| err(key, "missing (required for RecurrentGemma)".into()))?) };
        let opt = |key: &str, default: usize| -> Result<usize> { get(key).map_or(Ok(default), |v| positive(key, v)) };
        let flag = |key: &str, default: bool| -> Result<bool> {
            get(key).map_or(Ok(default), |v| v.as_bool().ok_or_else(|| err(key, format!("expected true or false, found {v}"))))
        };
        let number =
            |key: &str, v: &Value| -> Result<f64> { v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| err(key, format!("expected a number, found {v}"))) };

        let vocab_size = req("vocab_size")?;
        let hidden_size = req("hidden_size")?;
        let intermediate_size = req("intermediate_size")?;
        let num_hidden_layers = req("num_hidden_layers")?;
        let num_attention_heads = req("num_attention_heads")?;
        let num_key_value_heads = opt("num_key_value_heads", num_attention_heads)?;
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(err("num_key_value_heads", format!("{num_key_value_heads} does not divide num_attention_heads {num_attention_heads}")));
        }
        let head_dim = opt("head_dim", hidden_size / num_attention_heads)?;
        if head_dim * num_attention_heads != hidden_size {
            return Err(err("head_dim", format!("{head_dim} x {num_attention_heads} heads is not hidden_size {hidden_size}")));
        }
        if intermediate_size < 2 {
            return Err(err("intermediate_size", "must be at least 2 (the MLP is half of it)".into()));
        }
        let lru_width = opt("lru_width", hidden_size)?;
        if lru_width % num_attention_heads != 0 {
            return Err(err("lru_width", format!("{lru_width} is not a multiple of num_attention_heads {num_attention_heads}")));
        }
        let logits_soft_cap = match get("logits_soft_cap") {
            None => 30.0,
            Some(v) => Some(number("logits_soft_cap", v)?)
                .filter(|c| *c > 0.0)
                .ok_or_else(|| err("logits_soft_cap", format!("expected a positive number, found {v}")))?,
        };
        let rms_norm_eps = match get("rms_norm_eps") {
            None => 1e-6,
            Some(v) => Some(number("rms_norm_eps", v)?)
                .filter(|e| *e >= 0.0)
                .ok_or_else(|| err("rms_norm_eps", format!("expected a non-negative number, found {v}")))?,
        };
        let block_types = match get("block_types") {
            None => vec![BlockType::Recurrent, BlockType::Recurrent, BlockType::Attention],
            Some(Value::Array(a)) if !a.is_empty() => a
                .iter()
                .map(|v| match v.as_str() {
                    Some("recurrent") => Ok(BlockType::Recurrent),
                    Some("attention") => Ok(BlockType::Attention),
                    _ => Err(err("block_types", format!("unknown block type {v} (expected \"recurrent\" or \"attention\")"))),
                })
                .collect::<Result<Vec<_>>>()?,
            Some(v) => return Err(err("block_types", format!("expected a non-empty list, found {v}"))),
        };
        if let Some(v) = get("hidden_activation") {
            let act = v.as_str().ok_or_else(|| err("hidden_activation", format!("expected a string, found {v}")))?;
            if act != "gelu_pytorch_tanh" {
                return Err(err("hidden_activation", format!("`{act}` is not supported (only gelu_pytorch_tanh)")));
            }
        }

        // Rotary settings: transformers 5 writes `rope_parameters`; older files have top-level keys.
        let rope = get("rope_parameters");
        if let Some(r) = rope {
            if !r.is_object() {
                return Err(err("rope_parameters", format!("expected an object, found {r}")));
            }
            if let Some(t) = r.get("rope_type").filter(|t| !t.is_null()) {
                if t.as_str() != Some("default") {
                    return Err(err("rope_parameters.rope_type", format!("{t} is not supported (only \"default\")")));
                }
            }
        }
        let rope_key = |key: &str| -> Option<(String, &Value)> {
            rope.and_then(|r| r.get(key))
                .filter(|v| !v.is_null())
                .map(|v| (format!("rope_parameters.{key}"), v))
                .or_else(|| get(key).map(|v| (key.to_string(), v)))
        };
        let rope_theta = match rope_key("rope_theta") {
            None => 10000.0,
            Some((k, v)) => Some(number(&k, v)?).filter(|t| *t > 0.0).ok_or_else(|| err(&k, format!("expected a positive number, found {v}")))?,
        };
        let rotary_dim = match rope_key("partial_rotary_factor") {
            None => head_dim / 2,
            Some((k, v)) => {
                let f = number(&k, v)?;
                let d = (head_dim as f64 * f) as usize;
                if !(f > 0.0 && f <= 1.0) || d < 2 || !d.is_multiple_of(2) {
                    return Err(err(&k, format!("{v} x head_dim {head_dim} must give an even rotary width of at least 2")));
                }
                d
            }
        };
        let eos_token_ids = match get("eos_token_id") {
            None => vec![1],
            Some(Value::Array(a)) => a.iter().map(|v| uint("eos_token_id", v).map(|n| n as u32)).collect::<Result<Vec<_>>>()?,
            Some(v) => vec![uint("eos_token_id", v)? as u32],
        };
        Ok(RecurrentGemmaConfig {
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            lru_width,
            attention_window_size: opt("attention_window_size", 2048)?,
            conv1d_width: opt("conv1d_width", 4)?,
            logits_soft_cap,
            rms_norm_eps,
            block_types,
            rope_theta,
            rotary_dim,
            attention_bias: flag("attention_bias", false)?,
            tie_word_embeddings: flag("tie_word_embeddings", true)?,
            eos_token_ids,
        })
    }

    /// The temporal block of layer `l`.
    pub fn block_type(&self, l: usize) -> BlockType {
        self.block_types[l % self.block_types.len()]
    }

    /// Bytes of one sequence's state at its largest (the KV rings full), weights' dtype `kind`.
    pub fn state_bytes(&self, kind: Kind) -> u64 {
        let elt = kind.elt_size_in_bytes();
        (0..self.num_hidden_layers)
            .map(|l| match self.block_type(l) {
                BlockType::Recurrent => self.lru_width * ((self.conv1d_width - 1) * elt + 4),
                BlockType::Attention => 2 * self.num_key_value_heads * self.attention_window_size * self.head_dim * elt,
            } as u64)
            .sum()
    }
}
