//! Linear-time (state-space / recurrent) language models, whose per-sequence memory is a fixed-size
//! recurrent state instead of a KV cache that grows with the context: the baselines that KV-cache
//! compression is measured against (issue 9). Every family implements [`RecurrentLm`], which is
//! what the loader, generation and the runner use; [`load_dir`] picks the family from the files.
//!
//! Families: [`mamba`] (Mamba v1), [`mamba2`] (Mamba-2, SSD), [`recurrent_gemma`]
//! (RecurrentGemma / Griffin), [`rwkv`] (RWKV-5.2 and RWKV-6 World, from `.pth`, read by [`pth`]).

pub mod mamba;
pub mod mamba2;
pub mod pth;
pub mod recurrent_gemma;
pub mod rwkv;
pub mod tensor_map;

use crate::error::{Error, Result};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Everything a recurrent model needs to go on from where it stopped, for one sequence: tensors
/// whose layout the model defines (per layer, e.g. Mamba's conv window and SSM state). Its size
/// does not grow with the tokens seen (a local-attention window is bounded).
#[derive(Debug, Default)]
pub struct RecurrentState {
    pub tensors: Vec<Tensor>,
    /// Tokens consumed so far (the next token's position).
    pub tokens: usize,
}

impl RecurrentState {
    /// Bytes held by the state tensors.
    pub fn bytes(&self) -> u64 {
        self.tensors.iter().map(|t| (t.numel() * t.kind().elt_size_in_bytes()) as u64).sum()
    }

    /// A deep copy (to branch several continuations from one prefix).
    pub fn deep_clone(&self) -> Self {
        RecurrentState { tensors: self.tensors.iter().map(Tensor::copy).collect(), tokens: self.tokens }
    }
}

/// A causal language model with a fixed-size recurrent state (batch 1).
pub trait RecurrentLm: Send {
    /// The family, as configs and records name it: `mamba`, `mamba2`, `rwkv5`, `rwkv6`, `recurrent_gemma`.
    fn family(&self) -> &'static str;
    fn vocab_size(&self) -> usize;
    fn num_layers(&self) -> usize;
    /// Width of the residual stream (sizes the memory guard's activation estimate).
    fn hidden_size(&self) -> usize;
    /// Bytes of the weights as held in memory.
    fn weight_bytes(&self) -> u64;
    /// End-of-sequence ids from the model's own config (the loader adds the tokenizer's).
    fn eos_token_ids(&self) -> Vec<u32>;
    /// The longest context the model was trained for, when its config says (None: unbounded).
    fn max_context(&self) -> Option<usize> {
        None
    }
    /// A fresh state (no tokens seen).
    fn new_state(&self) -> Result<RecurrentState>;
    /// Feeds `ids` on top of `state`, advancing it. Returns f32 logits: `[T, vocab]` for every
    /// position with `all_positions`, else `[1, vocab]` for the last one (the LM head runs there only).
    fn forward(&self, ids: &[u32], state: &mut RecurrentState, all_positions: bool) -> Result<Tensor>;
    /// Bytes of the state of one sequence at its largest (what [`RecurrentState::bytes`] reaches).
    fn state_bytes(&self) -> u64;
}

/// Serialises the random-weight builders: libtorch's generator is process-wide, so two models
/// built with the same seed on two threads (tests run in parallel) would otherwise draw
/// interleaved numbers. Seeds the generator; hold the guard while drawing.
pub(crate) fn seeded_rng(seed: i64) -> std::sync::MutexGuard<'static, ()> {
    static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let guard = RNG.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    tch::manual_seed(seed);
    guard
}

/// Checks `ids` against the vocabulary and makes the `[1, T]` int64 input on `device`.
pub fn ids_tensor(ids: &[u32], vocab_size: usize, device: Device) -> Result<Tensor> {
    if ids.is_empty() {
        return Err(Error::InvalidArgument { what: "token ids", value: "[]".into(), expected: "at least one token".into() });
    }
    if let Some(&bad) = ids.iter().find(|&&t| t as usize >= vocab_size) {
        return Err(Error::InvalidArgument { what: "token id", value: bad.to_string(), expected: format!("below the vocabulary size {vocab_size}") });
    }
    let v: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
    Ok(Tensor::from_slice(&v).to_device(device).unsqueeze(0))
}

/// Greedy decoding: exactly `n` new tokens after `ids` (argmax each step, no stop at EOS), the
/// prompt fed at once, then one token per step.
pub fn greedy(model: &dyn RecurrentLm, ids: &[u32], n: usize) -> Result<Vec<u32>> {
    let _g = tch::no_grad_guard();
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return Ok(out);
    }
    let mut state = model.new_state()?;
    let mut logits = model.forward(ids, &mut state, false)?;
    loop {
        let next = logits.view([-1]).argmax(-1, false).int64_value(&[]) as u32;
        out.push(next);
        if out.len() == n {
            return Ok(out);
        }
        logits = model.forward(&[next], &mut state, false)?;
    }
}

/// A Hugging Face `config.json`, parsed. Bare `Infinity`/`NaN` (which transformers 4.x writes,
/// e.g. Mamba-2's `time_step_limit`) are read as strings.
pub(crate) fn read_hf_config(config_json: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(config_json).map_err(|e| Error::io(config_json, e))?;
    let text = mamba2::quote_bare_non_finite(&text);
    serde_json::from_str(&text).map_err(|e| Error::Config { file: config_json.into(), key: "(file)".into(), problem: format!("not valid JSON: {e}") })
}

/// The recurrent family of the checkpoint in `dir`, or None for a transformer (or unknown) one:
/// `config.json`'s `model_type` for Hugging Face layouts (read once; an original `mamba_ssm`
/// config counts as Mamba); without a `config.json`, an RWKV
/// checkpoint by its tensor names ([`rwkv::detect_version`]: the pickle of the one `*.pth`).
pub fn detect_family(dir: &Path) -> Result<Option<&'static str>> {
    let cfg = dir.join("config.json");
    if cfg.is_file() {
        let config = read_hf_config(&cfg)?;
        if mamba::is_mamba_ssm_config(&config) {
            return Ok(Some("mamba"));
        }
        return Ok(match config.get("model_type").and_then(|m| m.as_str()) {
            Some("mamba") => Some("mamba"),
            Some("mamba2") => Some("mamba2"),
            Some("recurrent_gemma") => Some("recurrent_gemma"),
            _ => None,
        });
    }
    Ok(match rwkv::detect_version(dir)? {
        Some(rwkv::RwkvVersion::V5) => Some("rwkv5"),
        Some(rwkv::RwkvVersion::V6) => Some("rwkv6"),
        None => None,
    })
}

/// Loads the recurrent model in `dir` (family from [`detect_family`]), weights as `kind` on `device`.
pub fn load_dir(dir: &Path, kind: Kind, device: Device) -> Result<Box<dyn RecurrentLm>> {
    match detect_family(dir)? {
        Some("mamba") => Ok(Box::new(mamba::MambaModel::load(dir, kind, device)?)),
        Some("mamba2") => Ok(Box::new(mamba2::Mamba2Model::load(dir, kind, device)?)),
        Some("recurrent_gemma") => Ok(Box::new(recurrent_gemma::RecurrentGemmaModel::load(dir, kind, device)?)),
        Some("rwkv5" | "rwkv6") => Ok(Box::new(rwkv::RwkvModel::load(dir, kind, device)?)),
        _ => Err(Error::File {
            file: dir.into(),
            problem: "not a recurrent model directory this build knows (expected a config.json with model_type `mamba`, `mamba2` or `recurrent_gemma`, or one RWKV-5/6 `*.pth`)".into(),
        }),
    }
}
