//! Turns resolved model files into a ready decoder, tokenizer and chat template, whatever the
//! format (GGUF with everything embedded, or a Hugging Face directory).

use crate::config::ModelConfig;
use crate::device::{DType, RuntimeSettings};
use crate::error::{Error, Result};
use crate::lm_tokenizer::LmTokenizer;
use crate::model::Model;
use crate::sources::ModelFiles;
use crate::ssm::RecurrentLm;
use crate::weights::Weights;
use kvformats::chat::ChatTemplate;
use kvformats::gguf::GgufFile;
use kvformats::tokenizer::{build_tokenizer, load_tokenizer_file, GgufTokenizerSpec};
use std::path::Path;

/// The network of a loaded model. There is one per loaded model, so the transformer is held
/// inline rather than boxed (the size difference to the boxed recurrent variant costs nothing).
#[allow(clippy::large_enum_variant)]
pub enum Decoder {
    /// A transformer with a KV cache (Llama family), which cache methods apply to.
    Transformer(Model),
    /// A linear-time model with a fixed-size recurrent state (Mamba, RWKV, ...).
    Recurrent(Box<dyn RecurrentLm>),
}

/// A model ready to run.
pub struct LoadedModel {
    pub decoder: Decoder,
    pub tokenizer: LmTokenizer,
    pub chat_template: Option<ChatTemplate>,
    /// Token ids that end generation.
    pub eos_token_ids: Vec<u32>,
    /// Where the model was loaded from.
    pub files: ModelFiles,
    pub settings: RuntimeSettings,
    /// Seconds spent loading.
    pub load_seconds: f64,
}

impl LoadedModel {
    /// The transformer, or an error naming `what` needs one (a recurrent model has no KV cache).
    pub fn transformer(&self, what: &str) -> Result<&Model> {
        match &self.decoder {
            Decoder::Transformer(m) => Ok(m),
            Decoder::Recurrent(r) => Err(not_a_transformer(what, &self.files, r.as_ref())),
        }
    }

    /// [`transformer`](Self::transformer), mutably.
    pub fn transformer_mut(&mut self, what: &str) -> Result<&mut Model> {
        match &mut self.decoder {
            Decoder::Transformer(m) => Ok(m),
            Decoder::Recurrent(r) => Err(not_a_transformer(what, &self.files, r.as_ref())),
        }
    }

    /// The recurrent model, if this is one.
    pub fn recurrent(&self) -> Option<&dyn RecurrentLm> {
        match &self.decoder {
            Decoder::Recurrent(r) => Some(r.as_ref()),
            Decoder::Transformer(_) => None,
        }
    }

    /// The architecture's name: `llama`, `qwen2`, `mistral` or a recurrent family (`mamba`, ...).
    pub fn architecture(&self) -> &str {
        match &self.decoder {
            Decoder::Transformer(m) => m.config.architecture.name(),
            Decoder::Recurrent(r) => r.family(),
        }
    }

    /// The longest context the model's config allows (None: a recurrent model with no limit).
    pub fn max_context(&self) -> Option<usize> {
        match &self.decoder {
            Decoder::Transformer(m) => Some(m.config.max_position_embeddings),
            Decoder::Recurrent(r) => r.max_context(),
        }
    }

    /// Bytes of the weights in memory.
    /// Stores a transformer's projection matrices in a 16-bit `dtype` while it computes in f32
    /// on the CPU ([`Model::store_weights_as`]); `dtype` f32 leaves them as loaded.
    ///
    /// # Errors
    /// For a recurrent model, another compute dtype or device, or a dtype that is not f16/bf16.
    pub fn store_weights_as(&mut self, dtype: DType) -> Result<()> {
        if dtype == DType::F32 {
            return Ok(());
        }
        match &mut self.decoder {
            Decoder::Transformer(m) => m.store_weights_as(dtype.kind()),
            Decoder::Recurrent(_) => Err(Error::InvalidArgument {
                what: "weight dtype",
                value: dtype.name().into(),
                expected: "f32 for a recurrent model (16-bit weight storage is for transformer decoders)".into(),
            }),
        }
    }

    pub fn weight_bytes(&self) -> u64 {
        match &self.decoder {
            Decoder::Transformer(m) => m.weight_bytes,
            Decoder::Recurrent(r) => r.weight_bytes(),
        }
    }

    /// Bytes a full KV cache holds per token in the cache dtype (0 for a recurrent model).
    pub fn kv_bytes_per_token(&self) -> u64 {
        match &self.decoder {
            Decoder::Transformer(m) => m.config.kv_bytes_per_token(self.settings.kv_dtype.size_in_bytes()),
            Decoder::Recurrent(_) => 0,
        }
    }

    /// Number of layers.
    pub fn num_layers(&self) -> usize {
        match &self.decoder {
            Decoder::Transformer(m) => m.config.num_hidden_layers,
            Decoder::Recurrent(r) => r.num_layers(),
        }
    }
}

/// The refusal of `what` (which needs a KV cache) on the recurrent model `r` loaded from `files`.
fn not_a_transformer(what: &str, files: &ModelFiles, r: &dyn RecurrentLm) -> Error {
    Error::Unsupported(format!(
        "{what} needs a transformer with a KV cache; {} is a {} model (a fixed-size recurrent state)",
        files.path().display(),
        r.family()
    ))
}

/// Changes to a checkpoint's configuration applied before the model is built (a model config's
/// RoPE and context overrides; the paper stretches Llama-3's RoPE base 32× for its passkey runs).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ConfigOverrides {
    /// Replaces `rope_theta`.
    pub rope_theta: Option<f64>,
    /// Multiplies `rope_theta` (after `rope_theta`, if both are given).
    pub rope_theta_factor: Option<f64>,
    /// Replaces the RoPE scaling with linear scaling by this factor.
    pub rope_linear_factor: Option<f64>,
    /// Replaces `max_position_embeddings`.
    pub max_position_embeddings: Option<usize>,
}

impl ConfigOverrides {
    /// Applies the overrides to `config`.
    pub fn apply(&self, config: &mut ModelConfig) {
        if let Some(t) = self.rope_theta {
            config.rope_theta = t;
        }
        if let Some(f) = self.rope_theta_factor {
            config.rope_theta *= f;
        }
        if let Some(f) = self.rope_linear_factor {
            config.rope_scaling = crate::config::RopeScaling::Linear { factor: f };
        }
        if let Some(n) = self.max_position_embeddings {
            config.max_position_embeddings = n;
        }
    }
}

/// Loads the model at `files` with the given device and dtypes.
pub fn load(files: &ModelFiles, settings: RuntimeSettings) -> Result<LoadedModel> {
    load_with(files, settings, &ConfigOverrides::default())
}

/// [`load`] with configuration overrides.
pub fn load_with(files: &ModelFiles, settings: RuntimeSettings, overrides: &ConfigOverrides) -> Result<LoadedModel> {
    let _guard = tch::no_grad_guard();
    let t0 = std::time::Instant::now();
    let kind = settings.dtype.kind();
    let (config, weights, tokenizer, chat_template) = match files {
        ModelFiles::Gguf(path) => {
            let gguf = GgufFile::open(path)?;
            let config = ModelConfig::from_gguf(&gguf)?;
            let spec = GgufTokenizerSpec::from_gguf(&gguf).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
            let tokenizer: LmTokenizer = build_tokenizer(&spec).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?.into();
            let token_str = |id: Option<u32>| id.and_then(|i| spec.tokens.get(i as usize).cloned());
            let chat = match &spec.chat_template {
                Some(src) => Some(
                    ChatTemplate::new(src, token_str(spec.bos_token_id), token_str(spec.eos_token_id))
                        .map_err(|e| Error::Chat(format!("{}: {e}", path.display())))?,
                ),
                None => None,
            };
            let weights = Weights::from_gguf(&gguf, &config, kind, settings.device)?;
            (config, weights, tokenizer, chat)
        }
        ModelFiles::HfDir(dir) if crate::ssm::detect_family(dir)?.is_some() => {
            return load_recurrent(dir, files, settings, t0);
        }
        ModelFiles::HfDir(dir) => {
            let config = ModelConfig::from_hf_config(&dir.join("config.json"))?;
            let tok_path = dir.join("tokenizer.json");
            let tokenizer: LmTokenizer = load_tokenizer_file(&tok_path).map_err(|e| Error::Tokenizer(format!("{}: {e}", tok_path.display())))?.into();
            let chat = load_hf_chat_template(dir)?;
            let mut config = config;
            if let Some(ids) = generation_config_eos(dir) {
                config.eos_token_ids = ids;
            }
            let weights = Weights::from_safetensors_dir(dir, kind, settings.device)?;
            (config, weights, tokenizer, chat)
        }
    };
    let mut eos = config.eos_token_ids.clone();
    // Chat models end a turn with these even when the GGUF names another EOS.
    for special in ["<|im_end|>", "<|eot_id|>"] {
        if let Some(id) = tokenizer.token_to_id(special) {
            if !eos.contains(&id) && chat_template.is_some() {
                eos.push(id);
            }
        }
    }
    let mut config = config;
    overrides.apply(&mut config);
    let model = Model::new(config, weights, kind, settings.device)?;
    Ok(LoadedModel {
        decoder: Decoder::Transformer(model),
        tokenizer,
        chat_template,
        eos_token_ids: eos,
        files: files.clone(),
        settings,
        load_seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Loads a linear-time model directory: weights by [`crate::ssm::load_dir`], the tokenizer from
/// `tokenizer.json` (or RWKV's World vocabulary), chat template and EOS ids as for transformers.
fn load_recurrent(dir: &Path, files: &ModelFiles, settings: RuntimeSettings, t0: std::time::Instant) -> Result<LoadedModel> {
    let model = crate::ssm::load_dir(dir, settings.dtype.kind(), settings.device)?;
    let tok_path = dir.join("tokenizer.json");
    let world_vocab = dir.join(crate::ssm::rwkv::WORLD_VOCAB_FILE);
    let tokenizer: LmTokenizer = if tok_path.is_file() {
        load_tokenizer_file(&tok_path).map_err(|e| Error::Tokenizer(format!("{}: {e}", tok_path.display())))?.into()
    } else if world_vocab.is_file() {
        let w = kvformats::world_tokenizer::WorldTokenizer::from_vocab_file(&world_vocab).map_err(|e| Error::Tokenizer(e.to_string()))?;
        LmTokenizer::World(std::sync::Arc::new(w))
    } else {
        return Err(Error::File {
            file: dir.into(),
            problem: format!("no tokenizer: expected tokenizer.json, or {} for an RWKV World model", crate::ssm::rwkv::WORLD_VOCAB_FILE),
        });
    };
    let chat_template = load_hf_chat_template(dir)?;
    let eos_token_ids = generation_config_eos(dir).unwrap_or_else(|| model.eos_token_ids());
    Ok(LoadedModel {
        decoder: Decoder::Recurrent(model),
        tokenizer,
        chat_template,
        eos_token_ids,
        files: files.clone(),
        settings,
        load_seconds: t0.elapsed().as_secs_f64(),
    })
}

fn load_hf_chat_template(dir: &Path) -> Result<Option<ChatTemplate>> {
    let cfg = dir.join("tokenizer_config.json");
    if cfg.is_file() || dir.join("chat_template.jinja").is_file() {
        match ChatTemplate::from_tokenizer_config(&cfg) {
            Ok(t) => Ok(Some(t)),
            Err(e) => {
                let msg = e.to_string();
                if msg.contains("no chat template") || msg.contains("no chat_template") {
                    Ok(None)
                } else {
                    Err(Error::Chat(format!("{}: {msg}", cfg.display())))
                }
            }
        }
    } else {
        Ok(None)
    }
}

fn generation_config_eos(dir: &Path) -> Option<Vec<u32>> {
    let text = std::fs::read_to_string(dir.join("generation_config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    match v.get("eos_token_id")? {
        serde_json::Value::Number(n) => Some(vec![n.as_u64()? as u32]),
        serde_json::Value::Array(a) => Some(a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect()),
        _ => None,
    }
}
