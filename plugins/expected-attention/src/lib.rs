//! Expected-attention eviction (`expected-attention`): keeps the keys that the *next* queries are
//! expected to attend to, from a Gaussian model of the queries. Devoto et al., "Expected
//! Attention: KV Cache Compression by Estimating Attention from Future Queries Distribution",
//! 2025 (arXiv 2510.00636); scores as kvpress `ExpectedAttentionPress`.
//!
//! Per layer and query head, the queries of the prompt before RoPE (all but the first `n_sink`
//! positions) give a mean `μ` and a covariance `Σ`. The rotation RoPE applies at the next
//! `n_future_positions` positions, averaged into one matrix `R`, carries them to where future
//! queries will be: `μ' = R μ`, `Σ' = R Σ Rᵀ`. For a Gaussian query the expected
//! `exp(q·k/√d)` is `exp(μ'·k/√d + kᵀΣ'k / 2d)`; its softmax over the stored keys (the sinks
//! left out) is averaged over the query heads of each KV head (`gqa`), then multiplied by the
//! value norm (`(p + epsilon) · ‖v‖`, `use_vnorm`). The first `n_sink` positions are always kept
//! (scored above every other key).
//!
//! Budget: `ratio = N` keeps `floor(S/N)` of the `S` context tokens per KV head after prefill
//! (kvpress `compression_ratio = 1 - 1/N`), sinks included; `tokens = K` keeps K.
//!
//! How kvbench gets the statistics without keeping the queries: the eviction cache undoes RoPE on
//! each prefill chunk's queries (with the model's frequencies, `CacheSpec::rope`) and merges the
//! chunk's mean and centred products into running ones (f64, Chan et al.'s update), so a prompt
//! prefilled in chunks scores as kvpress's single pass over the whole prompt does. The
//! statistics (a `D×D` matrix per query head) are held, and counted in the cache's bytes, until
//! the compression they serve; with `decode_evict = true` they keep growing with the decoded
//! queries and each eviction averages RoPE over the positions after the last one.
//!
//! Differences from kvpress, none of which a one-shot run after prefill exercises:
//! * Sinks are the first `n_sink` *positions*, where kvpress drops the first `n_sink` slots of
//!   what it is given (the same tokens after a prefill).
//! * A context of at most `n_sink` tokens, which kvpress refuses (assertion), has no statistics:
//!   every key then scores by its value norm alone (uniform expected attention).
//! * Caches built without the model's RoPE (an external plugin host, a synthetic spec) cannot
//!   use this scorer: it fails with a message instead of guessing.
//!
//! Cross-checked against kvpress 0.5.5 on SmolLM2 (`kvcore/tests/kvpress_crosscheck.rs`).

use kvmethods::kvcache::rope::mean_rotation;
use kvmethods::kvcache::scorer::QueryStats;
use kvmethods::prelude::*;

/// ExpectedAttention's parameters (kvpress's names and defaults).
#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct ExpectedAttention {
    /// Future positions the RoPE rotation is averaged over.
    pub n_future_positions: usize,
    /// First positions always kept and left out of the query statistics.
    pub n_sink: usize,
    /// Include the covariance term `kᵀΣk / 2d` (false: the mean alone).
    pub use_covariance: bool,
    /// Multiply by the value norms.
    pub use_vnorm: bool,
    /// Added to the expected attention before the value-norm rescaling.
    pub epsilon: f64,
}

impl Default for ExpectedAttention {
    fn default() -> Self {
        ExpectedAttention { n_future_positions: 512, n_sink: 4, use_covariance: true, use_vnorm: true, epsilon: 0.0 }
    }
}

impl ExpectedAttention {
    /// Expected attention `[B, Hq, S]` of the stored keys under the statistics (sinks excluded
    /// from the softmax).
    fn expected_probs(&self, s: &ScoreInput<'_>, stats: &QueryStats, sink: &Tensor) -> Result<Tensor> {
        let rope = s.spec.full_rope("expected-attention (its statistics rotate the mean query to future positions)")?;
        let (_, hkv, _, d) = s.keys.size4()?;
        let device = s.keys.device();
        let (cos, sin) = rope.cos_sin_range(stats.next_pos, self.n_future_positions, device);
        let r = mean_rotation(&cos, &sin);
        let mu = stats.mean.to_kind(Kind::Float).matmul(&r.tr());
        let hq = mu.size()[1];
        let keys = s.keys.to_kind(Kind::Float).repeat_interleave_self_int(hq / hkv, Some(1), None::<i64>);
        let mut logits = keys.matmul(&mu.unsqueeze(-1)).squeeze_dim(-1) / (d as f64).sqrt();
        if self.use_covariance {
            let cov = r.matmul(&stats.covariance().to_kind(Kind::Float)).matmul(&r.tr());
            logits += (keys.matmul(&cov) * &keys).sum_dim_intlist(-1, false, Kind::Float) / (d as f64) / 2.0;
        }
        let sink_q = sink.repeat_interleave_self_int(hq / hkv, Some(1), None::<i64>);
        Ok(logits.masked_fill(&sink_q, f64::NEG_INFINITY).softmax(-1, Kind::Float))
    }
}

impl Scorer for ExpectedAttention {
    fn query_stats_from(&self) -> Option<usize> {
        Some(self.n_sink)
    }

    fn score(&self, s: &ScoreInput<'_>) -> Result<Tensor> {
        let sink = s.positions.lt(self.n_sink as i64);
        let vnorm = || s.values.to_kind(Kind::Float).pow_tensor_scalar(2).sum_dim_intlist(-1, false, Kind::Float).sqrt();
        let scores = match s.query_stats {
            Some(stats) if stats.count > 0 => {
                let p = self.expected_probs(s, stats, &sink)?;
                let p = s.gqa.reduce(&p, s.spec.kv_heads as i64);
                if self.use_vnorm {
                    (p + self.epsilon) * vnorm()
                } else {
                    p
                }
            }
            // No query after the sinks yet: uniform expected attention.
            _ if self.use_vnorm => vnorm(),
            _ => s.positions.ones_like().to_kind(Kind::Float),
        };
        // Sinks above every other key (kvpress pads them with the maximum score + 1).
        let others = scores.masked_select(&sink.logical_not());
        let top = if others.numel() > 0 { others.max().double_value(&[]) } else { 0.0 };
        Ok(scores.masked_fill(&sink, top + 1.0))
    }

    fn validate(&self, method: &str) -> std::result::Result<(), MethodError> {
        let bad = |key: &str, value: String, expected: &str| MethodError::BadParam { method: method.into(), key: key.into(), value, expected: expected.into() };
        if !(1..=1 << 20).contains(&self.n_future_positions) {
            return Err(bad("n_future_positions", self.n_future_positions.to_string(), "an integer in [1, 1048576]"));
        }
        if self.n_sink > 1 << 20 {
            return Err(bad("n_sink", self.n_sink.to_string(), "an integer in [0, 1048576]"));
        }
        if !self.epsilon.is_finite() || self.epsilon < 0.0 {
            return Err(bad("epsilon", self.epsilon.to_string(), "a finite number >= 0"));
        }
        Ok(())
    }
}

register_scorer!(
    ExpectedAttention,
    name = "expected-attention",
    summary = "keep the keys future queries are expected to attend to, from the queries' mean and covariance (Devoto et al. 2025)",
    detail = "Per query head, the mean and covariance of the prompt's queries before RoPE (after the first n_sink), rotated by \
              RoPE averaged over the next n_future_positions positions, give the expected attention \
              softmax(mu.k/sqrt(d) + k'Sigma k/2d) over the stored keys; averaged over each KV head's query heads and \
              multiplied by ||v||. The first n_sink positions are always kept. After the context prefill keeps the top \
              floor(S/N) per KV head (kvpress ExpectedAttentionPress with compression_ratio = 1 - 1/N). Paper: arXiv 2510.00636.",
    params = [
        ("n_future_positions", "512", "future positions the RoPE rotation is averaged over"),
        ("n_sink", "4", "first positions always kept and left out of the query statistics"),
        ("use_covariance", "true", "include the query covariance term (false: the mean alone)"),
        ("use_vnorm", "true", "multiply the expected attention by the value norms"),
        ("epsilon", "0", "added to the expected attention before the value-norm rescaling"),
    ],
);
