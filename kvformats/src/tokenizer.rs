//! Rebuilds a model's Hugging Face tokenizer from the vocabulary embedded in its GGUF file, as a
//! `tokenizer.json` document, so a GGUF model needs no other file and the same document can be
//! written next to a converted model.
//!
//! Supported: byte-level BPE (`tokenizer.ggml.model = "gpt2"`) with the pre-tokenizers named by
//! `tokenizer.ggml.pre` in [`SUPPORTED_PRE`]. Tokens of type 3 (control) and 4 (user-defined)
//! become special added tokens, matched whole in the input text before BPE runs.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::{json, Value};

use crate::gguf::{GgufError, GgufFile};

/// `tokenizer.ggml.pre` values this module can build, with the pre-tokenizer each one means.
pub const SUPPORTED_PRE: &[&str] = &["default", "gpt-2", "smollm", "qwen2", "llama-bpe"];

/// GGUF token types (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// The pre-tokenizer regex of Qwen2 (as in Qwen2's `tokenizer.json` and llama.cpp's `qwen2`):
/// like GPT-2's but one digit per piece and no contraction-only-after-space rule.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The pre-tokenizer regex of Llama 3 (llama.cpp's `llama-bpe`): numbers in groups of up to 3.
/// The string is checked against llama.cpp's; ids are not (no Llama 3 vocabulary is available
/// offline to test against).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Everything that can go wrong building a tokenizer; each variant names the file or metadata key.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{file}: metadata key {key:?}: {reason}")]
    BadMetadata { file: String, key: String, reason: String },
    #[error("tokenizer model {model:?} (tokenizer.ggml.model) is not supported: only \"gpt2\" (byte-level BPE) is")]
    UnsupportedModel { model: String },
    #[error("pre-tokenizer {pre:?} (tokenizer.ggml.pre) is not supported; supported: {}", SUPPORTED_PRE.join(", "))]
    UnsupportedPre { pre: String },
    #[error("tokenizer spec: {reason}")]
    BadSpec { reason: String },
    #[error("generated tokenizer.json is rejected by the tokenizers crate: {message}")]
    Build { message: String },
    #[error("{}: cannot load tokenizer.json: {message}", path.display())]
    LoadFile { path: PathBuf, message: String },
}

/// The tokenizer as described by a GGUF file's `tokenizer.*` metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTokenizerSpec {
    /// `tokenizer.ggml.model`, e.g. `gpt2` (byte-level BPE) or `llama` (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre`: which pre-tokenizer (regex) splits text before BPE.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, in id order.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`, one per token (1 normal, 3 control, 4 user-defined, ...).
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`, each `"left right"`, highest priority first.
    pub merges: Vec<String>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub padding_token_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`; false when absent.
    pub add_bos_token: bool,
    /// `tokenizer.ggml.add_eos_token`; false when absent.
    pub add_eos_token: bool,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

impl GgufTokenizerSpec {
    /// Reads the `tokenizer.*` metadata of `file`; checks types, lengths and token ids.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        let label = file.label();
        let bad = |key: &str, reason: String| TokenizerError::BadMetadata { file: label.to_string(), key: key.to_string(), reason };
        let model = file.meta_str("tokenizer.ggml.model")?.to_string();
        let pre = optional(file, "tokenizer.ggml.pre", |f, k| f.meta_str(k))?.map(str::to_string);
        let tokens: Vec<String> = file.meta_string_array("tokenizer.ggml.tokens")?.into_iter().map(str::to_string).collect();
        if tokens.is_empty() {
            return Err(bad("tokenizer.ggml.tokens", "expected at least one token, found none".into()));
        }
        let token_types = match file.meta("tokenizer.ggml.token_type") {
            None => vec![1; tokens.len()],
            Some(value) => {
                let key = "tokenizer.ggml.token_type";
                let items = value.as_array().ok_or_else(|| bad(key, format!("expected an array of integers, found {}", value.type_name())))?;
                let types = items
                    .iter()
                    .map(|v| v.as_i64().and_then(|t| i32::try_from(t).ok()))
                    .collect::<Option<Vec<i32>>>()
                    .ok_or_else(|| bad(key, "expected an array of 32-bit integers".into()))?;
                if types.len() != tokens.len() {
                    return Err(bad(key, format!("has {} entries, expected one per token ({})", types.len(), tokens.len())));
                }
                types
            }
        };
        let merges = match file.meta("tokenizer.ggml.merges") {
            Some(_) => file.meta_string_array("tokenizer.ggml.merges")?.into_iter().map(str::to_string).collect(),
            None if model == "gpt2" => {
                return Err(TokenizerError::Gguf(GgufError::MissingKey {
                    file: label.to_string(),
                    key: "tokenizer.ggml.merges".into(),
                    expected: "an array of BPE merges \"left right\" (required by tokenizer.ggml.model = gpt2)",
                }))
            }
            None => Vec::new(),
        };
        let token_id = |key: &str| -> Result<Option<u32>, TokenizerError> {
            let Some(id) = optional(file, key, |f, k| f.meta_u64(k))? else {
                return Ok(None);
            };
            match u32::try_from(id) {
                Ok(id) if (id as usize) < tokens.len() => Ok(Some(id)),
                _ => Err(bad(key, format!("token id {id} is out of range: the vocabulary has {} tokens", tokens.len()))),
            }
        };
        let flag = |key: &str| -> Result<bool, TokenizerError> { Ok(optional(file, key, |f, k| f.meta_bool(k))?.unwrap_or(false)) };
        Ok(GgufTokenizerSpec {
            model,
            pre,
            bos_token_id: token_id("tokenizer.ggml.bos_token_id")?,
            eos_token_id: token_id("tokenizer.ggml.eos_token_id")?,
            padding_token_id: token_id("tokenizer.ggml.padding_token_id")?,
            add_bos_token: flag("tokenizer.ggml.add_bos_token")?,
            add_eos_token: flag("tokenizer.ggml.add_eos_token")?,
            chat_template: optional(file, "tokenizer.chat_template", |f, k| f.meta_str(k))?.map(str::to_string),
            tokens,
            token_types,
            merges,
        })
    }

    /// Opens `path` and reads its tokenizer metadata.
    pub fn from_gguf_path(path: &Path) -> Result<Self, TokenizerError> {
        Self::from_gguf(&GgufFile::open(path)?)
    }

    /// The text of token `id`, if it exists.
    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The BOS token's text (for chat templates), if the file names one.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token_id.and_then(|id| self.token(id))
    }

    /// The EOS token's text (for chat templates), if the file names one.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token_id.and_then(|id| self.token(id))
    }
}

/// `Ok(None)` when `key` is absent, else the typed value (a wrong type is an error).
fn optional<'a, T>(file: &'a GgufFile, key: &str, get: impl FnOnce(&'a GgufFile, &str) -> Result<T, GgufError>) -> Result<Option<T>, TokenizerError> {
    match file.meta(key) {
        None => Ok(None),
        Some(_) => Ok(Some(get(file, key)?)),
    }
}

/// The `tokenizer.json` document (Hugging Face `tokenizers` format) for `spec`.
pub fn tokenizer_json(spec: &GgufTokenizerSpec) -> Result<String, TokenizerError> {
    if spec.model != "gpt2" {
        return Err(TokenizerError::UnsupportedModel { model: spec.model.clone() });
    }
    let bad = |reason: String| TokenizerError::BadSpec { reason };
    if spec.token_types.len() != spec.tokens.len() {
        return Err(bad(format!(
            "{} token types for {} tokens (tokenizer.ggml.token_type must have one per token)",
            spec.token_types.len(),
            spec.tokens.len()
        )));
    }
    if spec.merges.is_empty() {
        return Err(bad("tokenizer.ggml.merges is empty; byte-level BPE needs merges".into()));
    }
    let pre = spec.pre.as_deref().unwrap_or("default");
    let (normalizer, pre_tokenizer, ignore_merges) = pre_tokenizer_for(pre)?;

    let mut vocab = serde_json::Map::with_capacity(spec.tokens.len());
    for (id, token) in spec.tokens.iter().enumerate() {
        if vocab.insert(token.clone(), json!(id)).is_some() {
            return Err(bad(format!("token {token:?} appears twice in tokenizer.ggml.tokens (second at id {id})")));
        }
    }
    let merges = spec
        .merges
        .iter()
        .enumerate()
        .map(|(i, merge)| match merge.split_once(' ') {
            Some((left, right)) if !left.is_empty() && !right.is_empty() && !right.contains(' ') => Ok(json!([left, right])),
            _ => Err(bad(format!("tokenizer.ggml.merges[{i}] = {merge:?}, expected \"left right\""))),
        })
        .collect::<Result<Vec<Value>, _>>()?;

    let added_tokens: Vec<Value> = spec
        .tokens
        .iter()
        .zip(&spec.token_types)
        .enumerate()
        .filter(|(_, (_, ty))| matches!(**ty, TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED))
        .map(|(id, (content, _))| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();

    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor(spec)?,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges
        }
    });
    serde_json::to_string(&doc).map_err(|e| bad(format!("cannot serialise tokenizer.json: {e}")))
}

/// Normalizer, pre-tokenizer and `ignore_merges` for a `tokenizer.ggml.pre` value.
fn pre_tokenizer_for(pre: &str) -> Result<(Value, Value, bool), TokenizerError> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": !use_regex, "use_regex": use_regex});
    let split_then_bytes = |regex: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            byte_level(false)
        ]})
    };
    Ok(match pre {
        // GPT-2: ByteLevel's built-in regex.
        "default" | "gpt-2" => (Value::Null, byte_level(true), false),
        // SmolLM/SmolLM2's tokenizer.json: every digit alone, then GPT-2's regex.
        "smollm" => (
            Value::Null,
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level(true)
            ]}),
            false,
        ),
        "qwen2" => (json!({"type": "NFC"}), split_then_bytes(QWEN2_REGEX), false),
        // Llama 3's tokenizer.json sets ignore_merges: a piece that is a whole token is kept.
        "llama-bpe" => (Value::Null, split_then_bytes(LLAMA3_REGEX), true),
        other => return Err(TokenizerError::UnsupportedPre { pre: other.to_string() }),
    })
}

/// A template that adds BOS/EOS when the spec asks for them, else none.
fn post_processor(spec: &GgufTokenizerSpec) -> Result<Value, TokenizerError> {
    let special = |flag: bool, id: Option<u32>, what: &str| -> Result<Option<(String, u32)>, TokenizerError> {
        if !flag {
            return Ok(None);
        }
        let id = id.ok_or_else(|| TokenizerError::BadSpec {
            reason: format!("tokenizer.ggml.add_{what}_token is true but tokenizer.ggml.{what}_token_id is missing"),
        })?;
        let token = spec.token(id).ok_or_else(|| TokenizerError::BadSpec { reason: format!("tokenizer.ggml.{what}_token_id = {id} is not a token id") })?;
        Ok(Some((token.to_string(), id)))
    };
    let bos = special(spec.add_bos_token, spec.bos_token_id, "bos")?;
    let eos = special(spec.add_eos_token, spec.eos_token_id, "eos")?;
    if bos.is_none() && eos.is_none() {
        return Ok(Value::Null);
    }
    let piece = |t: &(String, u32), type_id: u32| json!({"SpecialToken": {"id": t.0, "type_id": type_id}});
    let seq = |name: &str, type_id: u32| json!({"Sequence": {"id": name, "type_id": type_id}});
    let mut single = Vec::new();
    let mut pair = Vec::new();
    for (name, type_id) in [("A", 0), ("B", 1)] {
        let target = if name == "A" { &mut single } else { &mut pair };
        if let Some(b) = &bos {
            target.push(piece(b, type_id));
        }
        target.push(seq(name, type_id));
        if let Some(e) = &eos {
            target.push(piece(e, type_id));
        }
    }
    let pair: Vec<Value> = single.iter().cloned().chain(pair).collect();
    let mut specials = serde_json::Map::new();
    for (token, id) in bos.iter().chain(eos.iter()) {
        specials.insert(token.clone(), json!({"id": token, "ids": [id], "tokens": [token]}));
    }
    Ok(json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials}))
}

/// Builds the tokenizer by loading [`tokenizer_json`]'s document.
pub fn build_tokenizer(spec: &GgufTokenizerSpec) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let doc = tokenizer_json(spec)?;
    let tokenizer = tokenizers::Tokenizer::from_str(&doc).map_err(|e| TokenizerError::Build { message: e.to_string() })?;
    let size = tokenizer.get_vocab_size(true);
    if size != spec.tokens.len() {
        return Err(TokenizerError::Build { message: format!("vocabulary has {size} entries, expected {}", spec.tokens.len()) });
    }
    Ok(tokenizer)
}

/// Loads a Hugging Face `tokenizer.json` (for models stored as HF directories).
pub fn load_tokenizer_file(path: &Path) -> Result<tokenizers::Tokenizer, TokenizerError> {
    tokenizers::Tokenizer::from_file(path).map_err(|e| TokenizerError::LoadFile { path: path.to_path_buf(), message: e.to_string() })
}
