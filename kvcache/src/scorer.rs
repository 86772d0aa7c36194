//! Scoring: a scoring method ranks the tokens a layer's cache holds (higher is kept). It sees the
//! stored keys, values and positions, the last queries when it asks for a window, and attention
//! accumulated so far when its schedule accumulates; it returns `[B, Hkv, S]` f32 scores. Which
//! tokens survive, when, and in what storage is decided by the eviction machinery that wraps it
//! (`plugins/kvmethods`), so a scorer is a few lines.

use crate::cache::{attention_probs, CacheSpec};
use crate::error::{Error, MethodError, Result};
use crate::params::GqaAgg;
use tch::Tensor;

/// What a scorer sees: the stored tokens, the last queries, the layer.
pub struct ScoreInput<'a> {
    pub layer: usize,
    pub spec: &'a CacheSpec,
    /// `[B, Hkv, S, D]`.
    pub keys: &'a Tensor,
    pub values: &'a Tensor,
    /// Absolute positions `[B, Hkv, S]` (i64), ascending along S.
    pub positions: &'a Tensor,
    /// The last queries `[B, Hq, W, D]` (after RoPE), if the scorer asked for a window.
    pub queries: Option<&'a Tensor>,
    /// Position of the first of those queries.
    pub query_start: usize,
    pub scale: f64,
    pub sliding_window: Option<usize>,
    /// Attention accumulated over the steps so far `[B, Hkv, S]`, for methods that accumulate.
    pub accumulated: Option<&'a Tensor>,
    pub gqa: GqaAgg,
}

/// When attention probabilities are accumulated into a per-token score for a scorer to read
/// (`ScoreInput::accumulated`; H2O).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accumulate {
    Never,
    /// From the first decode step on (the paper's H2O).
    Decode,
    /// Over the whole prefill and decoding (H2O with prefill eviction, kvpress ObservedAttention).
    Always,
}

/// Ranks stored tokens: higher scores are kept. Scores are `[B, Hkv, S]`, f32.
pub trait Scorer: Send + Sync {
    /// Queries the scorer needs from the end of the context (0: none).
    fn query_window(&self) -> usize {
        0
    }
    /// Scores of the stored tokens.
    fn score(&self, input: &ScoreInput<'_>) -> Result<Tensor>;
    /// Whether (and from when) the cache must accumulate attention for this scorer.
    fn accumulate(&self) -> Accumulate {
        Accumulate::Never
    }
    /// Checks parameter values serde cannot (e.g. an odd pooling kernel), naming the key.
    fn validate(&self, _method: &str) -> std::result::Result<(), MethodError> {
        Ok(())
    }
}

/// Attention probabilities `[B, Hq, W, S]` of the input's window queries over its keys.
pub fn window_probs(input: &ScoreInput<'_>) -> Result<Tensor> {
    let q = input.queries.ok_or_else(|| Error::Other("scorer needs window queries but none were kept".into()))?;
    Ok(attention_probs(q, input.query_start, input.keys, input.positions, input.scale, input.sliding_window))
}

/// Boolean `[B, Hkv, S]`: tokens inside the query window (their positions are ≥ its first query).
pub fn in_window(input: &ScoreInput<'_>) -> Tensor {
    input.positions.ge(input.query_start as i64)
}

/// Sets scores of the window's own tokens above every other score (they are always kept).
pub fn protect_window(scores: &Tensor, input: &ScoreInput<'_>) -> Tensor {
    let top = scores.max().double_value(&[]) + 1.0;
    scores.masked_fill(&in_window(input), top)
}

/// A deterministic hash of (seed, layer, batch·head, position) to `[0, 1)`, for the random scorer.
pub fn hash_unit(seed: u64, layer: u64, row: u64, pos: u64) -> f64 {
    let mut x = seed ^ 0x9E37_79B9_7F4A_7C15;
    for v in [layer, row, pos] {
        x = x.wrapping_add(v.wrapping_mul(0xBF58_476D_1CE4_E5B9)).wrapping_add(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
    }
    (x >> 11) as f64 / (1u64 << 53) as f64
}
