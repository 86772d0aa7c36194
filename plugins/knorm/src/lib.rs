//! Key-norm eviction (`knorm`): keeps the keys with the smallest L2 norm, which tend to receive the
//! most attention. Devoto et al., "A Simple and Effective L2 Norm-Based Strategy for KV Cache
//! Compression", EMNLP 2024 (arXiv 2406.11430); scores as kvpress `KnormPress` (`-‖k‖₂` in f32).
//!
//! Budget: `ratio = N` keeps `floor(S/N)` of the `S` context tokens per KV head after prefill
//! (kvpress `compression_ratio = 1 - 1/N`); `tokens = K` keeps K.
//!
//! Cross-checked against kvpress 0.5.5 on SmolLM2 (`kvcore/tests/kvpress_crosscheck.rs`): kept
//! positions identical except float-noise swaps at the selection boundary (two keys whose norms differ
//! by < 1e-3 relative may fall on either side; 1 swap in 270 layer-heads on 3 prompts).

use kvmethods::prelude::*;

/// Knorm has no parameters of its own: the budget, schedule and storage are the shared ones.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Knorm {}

impl Scorer for Knorm {
    fn score(&self, s: &ScoreInput<'_>) -> Result<Tensor> {
        Ok(-s.keys.to_kind(Kind::Float).pow_tensor_scalar(2).sum_dim_intlist(-1, false, Kind::Float).sqrt())
    }
}

register_scorer!(
    Knorm,
    name = "knorm",
    summary = "keep the keys with the smallest L2 norm (Devoto et al. 2024)",
    detail = "Score = -||k||_2 (f32) per KV head; after the context prefill keeps the top floor(S/N) per head \
              (kvpress KnormPress with compression_ratio = 1 - 1/N). Paper: arXiv 2406.11430.",
);
