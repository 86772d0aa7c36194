//! Scoring: a scoring method ranks the tokens a layer's cache holds (higher is kept). It sees the
//! stored keys, values and positions, the last queries when it asks for a window, and attention
//! accumulated so far when its schedule accumulates, and the running mean and covariance of the
//! queries before RoPE when it asks for them ([`QueryStats`]); it returns `[B, Hkv, S]` f32 scores. Which
//! tokens survive, when, and in what storage is decided by the eviction machinery that wraps it
//! (`plugins/kvmethods`), so a scorer is a few lines.

use crate::cache::{attention_probs, CacheSpec};
use crate::error::{Error, MethodError, Result};
use crate::params::GqaAgg;
use tch::{Kind, Tensor};

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
    /// Statistics of the queries seen so far, for scorers that ask ([`Scorer::query_stats_from`]).
    pub query_stats: Option<&'a QueryStats>,
    /// `[B, Hkv, S]` f32: the most attention each stored token received while the engine
    /// reconstructed the context, for scorers that ask ([`Scorer::reconstruction`]; KVzip); 0 for
    /// tokens no pass reconstructed.
    pub reconstruction: Option<&'a Tensor>,
    pub gqa: GqaAgg,
}

/// Running statistics of a layer's queries before RoPE, per (batch, query head): the count, the
/// mean and the sum of squared deviations (`Σ (q - mean)(q - mean)ᵀ`), in f64, combined chunk by
/// chunk with Chan et al.'s pairwise update, so a prompt prefilled in chunks gets the statistics
/// of the whole prompt without keeping its queries.
pub struct QueryStats {
    /// Queries counted.
    pub count: usize,
    /// Position after the last query counted (the next query's position).
    pub next_pos: usize,
    /// `[B, Hq, D]`, f64.
    pub mean: Tensor,
    /// `[B, Hq, D, D]`, f64.
    pub m2: Tensor,
}

impl QueryStats {
    /// Statistics of `q` `[B, Hq, L, D]` (before RoPE), the queries of positions `first..first+L`.
    pub fn of(q: &Tensor, first: usize) -> QueryStats {
        let l = q.size()[2] as usize;
        let qf = q.to_kind(Kind::Float);
        let mean = qf.mean_dim([2i64].as_slice(), true, Kind::Float);
        let c = &qf - &mean;
        // The chunk's centred products in f32 (as kvpress computes the whole prompt's), combined in f64.
        let m2 = c.transpose(2, 3).matmul(&c).to_kind(Kind::Double);
        QueryStats { count: l, next_pos: first + l, mean: mean.squeeze_dim(2).to_kind(Kind::Double), m2 }
    }

    /// Adds the statistics of later queries (`other` follows `self`).
    pub fn merge(&mut self, other: QueryStats) {
        if self.count == 0 {
            *self = other;
            return;
        }
        let (na, nb) = (self.count as f64, other.count as f64);
        let n = na + nb;
        let delta = &other.mean - &self.mean;
        let outer = delta.unsqueeze(-1).matmul(&delta.unsqueeze(-2));
        self.mean = &self.mean + &delta * (nb / n);
        self.m2 = &self.m2 + &other.m2 + outer * (na * nb / n);
        self.count += other.count;
        self.next_pos = other.next_pos;
    }

    /// The population covariance `m2 / count` `[B, Hq, D, D]` (f64).
    pub fn covariance(&self) -> Tensor {
        &self.m2 / (self.count.max(1) as f64)
    }

    /// The statistics of batch row `b`, query heads `first..first+n` (a head's own group).
    pub fn narrow(&self, b: i64, first: i64, n: i64) -> QueryStats {
        QueryStats {
            count: self.count,
            next_pos: self.next_pos,
            mean: self.mean.narrow(0, b, 1).narrow(1, first, n),
            m2: self.m2.narrow(0, b, 1).narrow(1, first, n),
        }
    }

    /// A deep copy.
    pub fn copy(&self) -> QueryStats {
        QueryStats { count: self.count, next_pos: self.next_pos, mean: self.mean.copy(), m2: self.m2.copy() }
    }
}

/// Context reconstruction (KVzip, arXiv 2505.23416): once the prompt is in, the engine feeds a
/// prompt that asks the model to repeat the context, chunk by chunk, on top of the uncompressed
/// cache, and every layer's cache records the most attention each context token receives from the
/// repeating tokens ([`crate::cache::LayerCache::reconstruct`]). Pass `i` feeds
/// `prompt_i + chat suffix + chunk_i`, where `prompt_0` is `first_prompt` and later prompts are
/// `next_prompt` followed by the last `overlap_tokens` tokens of the previous chunk; the chat
/// suffix is the model's assistant-turn opening (its chat template's, else a newline). A leading
/// chat-template prefix (system and user-turn opening) is not reconstructed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reconstruction {
    /// Context tokens repeated per pass (bounds the pass's memory).
    pub chunk_tokens: usize,
    /// The first stored tokens every pass's scores are normalised with (attention sinks).
    pub sinks: usize,
    pub first_prompt: String,
    pub next_prompt: String,
    pub overlap_tokens: usize,
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
    /// The first absolute position whose queries the scorer needs summarised in
    /// [`ScoreInput::query_stats`] (mean and covariance before RoPE, over every query from there
    /// on); `None` (the default): no statistics are kept.
    fn query_stats_from(&self) -> Option<usize> {
        None
    }
    /// Context reconstruction passes this scorer needs the engine to run after prefill (KVzip);
    /// their scores reach it in [`ScoreInput::reconstruction`]. `None` (the default): none.
    fn reconstruction(&self) -> Option<Reconstruction> {
        None
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
