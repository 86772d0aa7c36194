//! Key-diversity eviction (`keydiff`): keeps the keys least similar to the layer-head's mean key
//! direction. Park et al., "KeyDiff: Key Similarity-Based KV Cache Eviction for Long-Context LLM
//! Inference in Resource-Constrained Environments", 2025 (arXiv 2504.15364); scores as kvpress
//! `KeyDiffPress`: `-cos(k, a)` with the anchor `a` the mean of the L2-normalised keys of the
//! same KV head (f32, no query needed, so it is query-agnostic and cheap).
//!
//! Budget: `ratio = N` keeps `floor(S/N)` of the `S` context tokens per KV head after prefill
//! (kvpress `compression_ratio = 1 - 1/N`); `tokens = K` keeps K.
//!
//! By default this is the one-shot version, as in kvpress. The paper's block-wise version, which
//! evicts block by block while the prompt streams in (kvpress: `BlockPress(KeyDiffPress)`), is the
//! shared schedule `block_size = B` that every scorer takes: the cache is cut back to its budget
//! after every block of B tokens, and each block's queries attend over what was kept (kvpress's
//! BlockPress prefills with full attention and only then replays the blocks).
//!
//! Cross-checked against kvpress 0.5.5 on SmolLM2 (`kvcore/tests/kvpress_crosscheck.rs`): kept
//! positions identical up to float-noise swaps at the selection boundary.

use kvmethods::prelude::*;

/// KeyDiff has no parameters of its own: the budget, schedule and storage are the shared ones.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct KeyDiff {}

/// `torch.nn.functional.cosine_similarity`'s and `normalize`'s floor on a norm.
const EPS: f64 = 1e-8;
const NORMALIZE_EPS: f64 = 1e-12;

impl Scorer for KeyDiff {
    fn score(&self, s: &ScoreInput<'_>) -> Result<Tensor> {
        let k = s.keys.to_kind(Kind::Float);
        let norm = k.pow_tensor_scalar(2).sum_dim_intlist(-1, true, Kind::Float).sqrt();
        let unit = &k / norm.clamp_min(NORMALIZE_EPS);
        let anchor = unit.mean_dim([2i64].as_slice(), true, Kind::Float);
        let anchor_norm = anchor.pow_tensor_scalar(2).sum_dim_intlist(-1, true, Kind::Float).sqrt();
        let dot = (&k * &anchor).sum_dim_intlist(-1, false, Kind::Float);
        let denom = (norm.clamp_min(EPS) * anchor_norm.clamp_min(EPS)).squeeze_dim(-1);
        Ok(-(dot / denom))
    }
}

register_scorer!(
    KeyDiff,
    name = "keydiff",
    summary = "keep the keys least similar to the mean key direction (Park et al. 2025)",
    detail = "Score = -cos(k, mean of normalised keys) per KV head (f32); after the context prefill keeps the top floor(S/N) per head \
              (kvpress KeyDiffPress with compression_ratio = 1 - 1/N). One-shot, as kvpress; block_size = B gives the paper's \
              block-wise eviction during prefill (a true block-wise prefill, never more than budget + B held). Paper: arXiv 2504.15364.",
);
