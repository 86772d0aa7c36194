//! Prompt compression: methods that shorten the prompt *text* before it is tokenized (LLMLingua-2,
//! Selective-Context), instead of compressing the KV cache. The model then runs with the full
//! cache over the shorter prompt, so the KV bytes follow from the compressed token count.
//!
//! A prompt compressor is registered like a cache method ([`PromptRegistration`], listed by
//! `kvbench methods`), takes `ratio = N` (keep about 1/N of the tokens) and is applied by the
//! runner to the part of a sample the paper compresses: LongBench's `context` field, or the whole
//! input for the needle task.

use kvcache::params::ParamDoc;
use kvcache::MethodError;
use std::sync::Arc;

/// What a compressor returns for one text.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct CompressedPrompt {
    /// The compressed text (what the model will read in place of the original).
    pub text: String,
    /// Tokens of the original text, counted by the compressor's own tokenizer.
    pub original_tokens: usize,
    /// Tokens of the compressed text, same tokenizer.
    pub compressed_tokens: usize,
    /// Wall-clock seconds the compression took (model loading excluded).
    pub seconds: f64,
}

impl CompressedPrompt {
    /// `original_tokens / compressed_tokens` (0 for an empty result).
    pub fn ratio(&self) -> f64 {
        if self.compressed_tokens == 0 {
            0.0
        } else {
            self.original_tokens as f64 / self.compressed_tokens as f64
        }
    }
}

/// A text-level compressor.
pub trait PromptCompressor: Send + Sync {
    /// Registered method name.
    fn name(&self) -> &str;
    /// The target fraction of tokens kept (`1/N` for `ratio = N`).
    fn rate(&self) -> f64;
    /// Compresses `text` to about `rate()` of its tokens.
    fn compress(&self, text: &str) -> crate::Result<CompressedPrompt>;
    /// What decides this compressor's scores apart from its rate (its scorer model, device and
    /// settings): compressors with equal keys score a text identically, so one scoring pass
    /// serves all their rates ([`PromptCompressor::compress_rates`]). `None`: no sharing.
    fn scoring_key(&self) -> Option<String> {
        None
    }
    /// `text` compressed at each of `rates` from one scoring pass, each exactly what a
    /// compressor of that rate returns from [`PromptCompressor::compress`]; a result's
    /// `seconds` is the scoring plus its own selection. The default serves only its own rate.
    fn compress_rates(&self, text: &str, rates: &[f64]) -> crate::Result<Vec<CompressedPrompt>> {
        rates
            .iter()
            .map(|&r| {
                if r == self.rate() {
                    self.compress(text)
                } else {
                    Err(crate::Error::Unsupported(format!("{}: one scoring pass for several rates", self.name())))
                }
            })
            .collect()
    }
}

/// Builds a prompt compressor from its parameters (loading any model lazily, on first use).
pub type PromptBuildFn = fn(&toml::Table) -> Result<Arc<dyn PromptCompressor>, MethodError>;

/// An in-tree prompt compressor, submitted with `inventory::submit!` by its family crate.
pub struct PromptRegistration {
    pub name: &'static str,
    pub family: &'static str,
    pub summary: &'static str,
    pub detail: &'static str,
    pub params: &'static [ParamDoc],
    pub build: PromptBuildFn,
}

inventory::collect!(PromptRegistration);

/// The `ratio = N` every prompt compressor takes, as a keep rate `1/N` (N in [1, 1000]).
pub fn rate_param(p: &mut kvcache::params::Params, default_ratio: f64) -> Result<f64, MethodError> {
    Ok(1.0 / p.float("ratio", default_ratio, 1.0, 1000.0)?)
}
