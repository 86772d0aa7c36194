//! LLMLingua-2 prompt compression: an XLM-RoBERTa token classifier predicts, per word, whether to
//! keep it; the prompt is cut to the requested rate before the model under test reads it.
//!
//! [`xlmr`] is the classifier on libtorch, [`compress`] the algorithm of llmlingua 0.2.2 with the
//! paper's settings; this file registers the `llmlingua2` prompt compressor and loads the model
//! lazily, on the first text.

pub mod compress;
pub mod xlmr;

use compress::{Lingua2, Settings, MAX_FORCE_TOKENS};
use kvcore::device::DeviceSpec;
use kvcore::error::{Error, Result};
use kvcore::prompt::{rate_param, CompressedPrompt, PromptCompressor, PromptRegistration};
use kvcore::registry::{MethodError, ParamDoc, Params};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The model the paper uses.
pub const DEFAULT_MODEL: &str = "microsoft/llmlingua-2-xlm-roberta-large-meetingbank";

/// Finds the model directory: an existing local directory, else a hub repository
/// (`org/name[@revision]`, with or without `hf:`) downloaded into the kvbench home on first use.
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    resolve_model_with(spec, &kvcore::sources::kvbench_home(), &kvcore::sources::hf_endpoint())
}

/// [`resolve_model`] with an explicit kvbench home and hub address.
pub fn resolve_model_with(spec: &str, home: &Path, endpoint: &str) -> Result<PathBuf> {
    let local = Path::new(spec);
    if local.is_dir() {
        for f in ["config.json", "tokenizer.json"] {
            if !local.join(f).is_file() {
                return Err(Error::File {
                    file: local.into(),
                    problem: format!("no {f}: an LLMLingua-2 model directory needs config.json, model.safetensors and tokenizer.json"),
                });
            }
        }
        return Ok(local.to_path_buf());
    }
    let repo = spec.strip_prefix("hf:").unwrap_or(spec);
    let r = kvcore::sources::HfRef::parse(repo).map_err(|_| Error::InvalidArgument {
        what: "llmlingua2 model",
        value: spec.into(),
        expected: "an existing local directory (config.json, model.safetensors, tokenizer.json) or a hub repository org/name[@revision]".into(),
    })?;
    kvcore::sources::fetch_hf(&r, home, endpoint).map_err(|e| {
        Error::Other(format!(
            "llmlingua2: cannot get the model `{spec}` from the Hugging Face hub into {}: {e}. \
             This needs network access to the hub (set HF_ENDPOINT for a mirror). Offline, download the \
             repository's config.json, model.safetensors and tokenizer.json elsewhere, copy them into a \
             directory and pass it: --set model=/path/to/dir (or `model = \"/path/to/dir\"` in the method's config)",
            r.cache_dir(home).display()
        ))
    })
}

/// Loads the classifier and its tokenizer from a model directory.
pub fn load(dir: &Path, device: tch::Device) -> Result<Lingua2> {
    let model = xlmr::XlmrTokenClassifier::load(dir, device)?;
    let tj = dir.join("tokenizer.json");
    let tokenizer = tokenizers::Tokenizer::from_file(&tj).map_err(|e| Error::File { file: tj.clone(), problem: format!("cannot load tokenizer: {e}") })?;
    Lingua2::new(tokenizer, model)
}

/// The registered compressor: settings, and the model once loaded.
pub struct LlmLingua2 {
    settings: Settings,
    model: String,
    device: DeviceSpec,
    /// The model, shared with every instance of the same model and device once loaded.
    loaded: Mutex<Option<Arc<Mutex<Lingua2>>>>,
}

impl LlmLingua2 {
    /// Runs `f` on the model, loading it on first use. Every instance with the same model and
    /// device uses one loaded copy ([`kvcore::prompt::shared_model`]): a grid builds one instance
    /// per cell and rate.
    pub fn with_model<T>(&self, f: impl FnOnce(&Lingua2) -> Result<T>) -> Result<T> {
        let shared = {
            let mut held = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
            if held.is_none() {
                let key = format!("llmlingua2 model={} device={}", self.model, self.device);
                *held = Some(kvcore::prompt::shared_model(&key, || {
                    let dir = resolve_model(&self.model)?;
                    load(&dir, self.device.resolve()?)
                })?);
            }
            Arc::clone(held.as_ref().expect("set above"))
        };
        let model = shared.lock().unwrap_or_else(|p| p.into_inner());
        f(&model)
    }
}

impl PromptCompressor for LlmLingua2 {
    fn name(&self) -> &str {
        "llmlingua2"
    }
    fn rate(&self) -> f64 {
        self.settings.rate
    }
    fn compress(&self, text: &str) -> Result<CompressedPrompt> {
        self.with_model(|m| {
            let t0 = std::time::Instant::now();
            let c = m.compress(text, &self.settings)?;
            Ok(CompressedPrompt {
                original_tokens: m.count_tokens(text)?,
                compressed_tokens: m.count_tokens(&c.text)?,
                text: c.text,
                seconds: t0.elapsed().as_secs_f64(),
            })
        })
    }
}

fn build(t: &toml::Table) -> std::result::Result<Arc<dyn PromptCompressor>, MethodError> {
    let mut p = Params::new("llmlingua2", t);
    let rate = rate_param(&mut p, 4.0)?;
    let mut settings = Settings::paper(rate);
    let model: String = p.get("model", DEFAULT_MODEL.to_string(), "a local model directory or a hub repository org/name")?;
    let strings = "a list of strings";
    if let Some(f) = p.opt::<Vec<String>>("force_tokens", strings)? {
        if f.len() > MAX_FORCE_TOKENS {
            return Err(MethodError::BadParam {
                method: "llmlingua2".into(),
                key: "force_tokens".into(),
                value: format!("{} tokens", f.len()),
                expected: format!("at most {MAX_FORCE_TOKENS} (llmlingua's max_force_token)"),
            });
        }
        settings.force_tokens = f;
    }
    if let Some(c) = p.opt::<Vec<String>>("chunk_end_tokens", strings)? {
        settings.chunk_end_tokens = c;
    }
    settings.drop_consecutive = p.bool("drop_consecutive", true)?;
    settings.batch_size = p.int("batch_size", 50, 1, 4096)?;
    let device_s: String = p.get("device", "auto".to_string(), "cpu, cuda, cuda:N or auto")?;
    let device = device_s.parse::<DeviceSpec>().map_err(|_| MethodError::BadParam {
        method: "llmlingua2".into(),
        key: "device".into(),
        value: format!("{device_s:?}"),
        expected: "cpu, cuda, cuda:N or auto".into(),
    })?;
    p.finish()?;
    Ok(Arc::new(LlmLingua2 { settings, model, device, loaded: Mutex::new(None) }))
}

inventory::submit! {
    PromptRegistration {
        name: "llmlingua2",
        family: "llmlingua",
        summary: "prompt compression: LLMLingua-2, an XLM-RoBERTa token classifier keeps the words most likely to matter (the paper's prompt-compression baseline; needs the model from the hub or a local dir)",
        detail: "Pan et al., \"LLMLingua-2: Data Distillation for Efficient and Faithful Task-Agnostic Prompt Compression\" (ACL Findings 2024), as the KV-cache paper runs it: llmlingua==0.2.2, model microsoft/llmlingua-2-xlm-roberta-large-meetingbank, compress_prompt_llmlingua2(context, rate=1/N, force_tokens=['\\n','.','!','?',','], chunk_end_tokens=['.','\\n'], return_word_label=True, drop_consecutive=True).\n\
How it works (reimplemented in Rust on libtorch, step for step): force tokens the tokenizer does not keep whole are swapped for [NEWi] placeholders; the text is cut into chunks of at most 510 tokens, each ending at the last chunk-end token within reach; each chunk goes through XLM-RoBERTa (framed as llmlingua 0.2.2 frames it: its dataset's [CLS]/[SEP], which XLM-R maps to <unk>); a word's keep probability is the mean over its tokens, 1.0 for force tokens; with drop_consecutive a force token repeating the previous one with no confident word between is set to 0; words whose probability exceeds the (100*(1-1/N)+1)-th percentile of the per-token-weighted probabilities are kept, repeated force tokens dropped, and joined back.\n\
ratio = N maps to rate = 1/N (ratio = 1 returns the text unchanged, up to the tokenizer's round trip). Applied to the part of a sample the paper compresses: LongBench's context field, or the whole input for the passkey task; the model under test then runs with the full cache over the shorter prompt.\n\
Token counts: llmlingua weighs each word in the percentile by its GPT-3.5 token count (tiktoken cl100k_base) and reports origin/compressed tokens with tiktoken. kvbench cannot fetch tiktoken's encoding offline, so it uses the compressor's own tokenizer (XLM-R sentencepiece) for both: the reported original/compressed token counts are XLM-R tokens, and the threshold can differ slightly from llmlingua with real tiktoken (kept-word parity is tested against llmlingua 0.2.2 with its tiktoken counter replaced by the same count).\n\
The model: the default is downloaded from the Hugging Face hub (config.json, model.safetensors, tokenizer.json; about 2.2 GB) into the kvbench home on first use, which needs network access. Offline the default model is unavailable: copy those files into a directory and pass --set model=/path/to/dir. It runs in f32 (about 2.2 GB of memory) on `device` (auto: the first GPU, else the CPU; slow on CPU for long contexts).",
        params: &[
            ParamDoc { name: "ratio", default: "4", help: "keep about 1/N of the prompt (rate = 1/N)" },
            ParamDoc { name: "model", default: DEFAULT_MODEL, help: "hub repository (org/name[@revision], fetched into the kvbench home) or a local directory with config.json, model.safetensors, tokenizer.json" },
            ParamDoc { name: "force_tokens", default: "[\"\\n\", \".\", \"!\", \"?\", \",\"]", help: "tokens always kept (at most 100)" },
            ParamDoc { name: "chunk_end_tokens", default: "[\".\", \"\\n\"]", help: "tokens a 512-token chunk may end at" },
            ParamDoc { name: "drop_consecutive", default: "true", help: "drop a force token that repeats the previous kept one with nothing kept between" },
            ParamDoc { name: "batch_size", default: "50", help: "chunks per forward pass" },
            ParamDoc { name: "device", default: "auto", help: "where the classifier runs: cpu, cuda, cuda:N or auto" },
        ],
        build,
    }
}
