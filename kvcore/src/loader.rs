//! Turns resolved model files into a ready decoder, tokenizer and chat template, whatever the
//! format (GGUF with everything embedded, or a Hugging Face directory).

use crate::config::ModelConfig;
use crate::device::RuntimeSettings;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::sources::ModelFiles;
use crate::weights::Weights;
use kvformats::chat::ChatTemplate;
use kvformats::gguf::GgufFile;
use kvformats::tokenizer::{build_tokenizer, load_tokenizer_file, GgufTokenizerSpec};
use std::path::Path;
use tokenizers::Tokenizer;

/// A model ready to run.
pub struct LoadedModel {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<ChatTemplate>,
    /// Token ids that end generation.
    pub eos_token_ids: Vec<u32>,
    /// Where the model was loaded from.
    pub files: ModelFiles,
    pub settings: RuntimeSettings,
    /// Seconds spent loading.
    pub load_seconds: f64,
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
            let tokenizer = build_tokenizer(&spec).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
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
        ModelFiles::HfDir(dir) => {
            let config = ModelConfig::from_hf_config(&dir.join("config.json"))?;
            let tok_path = dir.join("tokenizer.json");
            let tokenizer = load_tokenizer_file(&tok_path).map_err(|e| Error::Tokenizer(format!("{}: {e}", tok_path.display())))?;
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
        model,
        tokenizer,
        chat_template,
        eos_token_ids: eos,
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
