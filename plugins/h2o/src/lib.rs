//! H2O, heavy hitters + recent tokens (`h2o`). Zhang et al., "H2O: Heavy-Hitter Oracle for
//! Efficient Generative Inference of Large Language Models", NeurIPS 2023 (arXiv 2306.14048).
//!
//! `mode = "decode"` (default) is the paper benchmark's H2O (longctx_bench): prefill is not
//! compressed; at the first decode step the budgets are fixed from the length so far
//! `S = prompt + 1`: `heavy = floor(S·(1-recent_fraction)/N)`, `recent = floor(S·recent_fraction/N)`
//! (0.125·S each at 4×); from then on each step's attention probabilities are accumulated per token
//! and the cache keeps the newest `recent` tokens plus the `heavy` best-scored others. Scores are
//! accumulated per KV head (query heads of a group combined by `gqa`) by default; `heads = "query"`
//! is the paper's code: KV heads repeated per query head, scores kept and tokens evicted per query
//! head; the cache then stores `query_heads / kv_heads` times the K/V of the per-KV-head variant
//! and reports those bytes. The paper's grids use `heads = "query"`
//! (`configs/methods/h2o-paper.toml`). Tokens are removed physically, so the next step never
//! sees them (the paper masks them, with the same effect).
//!
//! `mode = "prefill"` evicts right after prefill using the attention every prompt query paid each
//! key (explicit softmax over the prompt, in query blocks), then continues as above. With
//! `recent_fraction = 0` it keeps the top `floor(S/N)` by summed attention: kvpress
//! `ObservedAttentionPress` ranks by attention divided by the number of queries that see each key,
//! which is a different normalisation (documented difference for the cross-check).
//! `kvcore/tests/kvpress_crosscheck.rs` asserts exactly that: kvbench's kept set equals the top of
//! kvpress's scores multiplied back by `S - j` (the number of queries that see key `j`).

use kvcache::cache::CacheFactory;
use kvcache::params::Params;
use kvcache::registration::MethodRegistration;
use kvcache::scorer::{ScoreInput, Scorer};
use kvcache::MethodError;
use kvmethods::eviction::{Accumulate, EvictionConfig, EvictionFactory, Start};
use kvmethods::repeat_kv::RepeatKvFactory;
use kvmethods::scoring::eviction_params;
use std::sync::Arc;
use tch::Tensor;

/// Accumulated attention, from the first decode step (`Decode`, the paper's H2O) or over the
/// prefill too (`Always`).
pub struct AccumulatedScorer {
    pub from: Accumulate,
}

impl Scorer for AccumulatedScorer {
    fn accumulate(&self) -> Accumulate {
        self.from
    }
    fn score(&self, input: &ScoreInput<'_>) -> kvcache::Result<Tensor> {
        input.accumulated.map(|a| a.shallow_clone()).ok_or_else(|| kvcache::Error::Other("h2o: no accumulated scores".into()))
    }
}

fn build(t: &toml::Table) -> Result<Arc<dyn CacheFactory>, MethodError> {
    let mut p = Params::new("h2o", t);
    let budget = p.budget(4.0)?;
    let recent_fraction = p.float("recent_fraction", 0.5, 0.0, 1.0)?;
    let mode = p.choice("mode", "decode", &["decode", "prefill"])?;
    let heads = p.choice("heads", "kv", &["kv", "query"])?;
    let from = if mode == "decode" { Accumulate::Decode } else { Accumulate::Always };
    let mut cfg = EvictionConfig::new("h2o", budget, Arc::new(AccumulatedScorer { from }));
    eviction_params(&mut p, &mut cfg, true)?;
    p.finish()?;
    cfg.schedule.recent_fraction = recent_fraction;
    if mode == "decode" {
        // The paper's H2O: full prefill, the budget fixed at the first decode step, evicting
        // every step from then on.
        cfg.schedule.start = Start::FirstDecode;
        cfg.schedule.decode_evict = true;
    }
    let factory: Arc<dyn CacheFactory> = Arc::new(EvictionFactory(Arc::new(cfg)));
    Ok(if heads == "query" { Arc::new(RepeatKvFactory { inner: factory }) } else { factory })
}

kvcache::inventory::submit! {
    MethodRegistration {
        name: "h2o",
        family: "h2o",
        summary: "heavy hitters + recent tokens by accumulated attention (Zhang et al. 2023)",
        detail: "mode = \"decode\" (paper benchmark): full prefill; budgets fixed at the first decode step from S = prompt+1: \
                 heavy = floor(S*(1-recent_fraction)/N), recent = floor(S*recent_fraction/N); attention accumulated from the first \
                 decode step; evicts every step. mode = \"prefill\": evicts right after prefill using the prompt's attention, \
                 then the same. heads = \"kv\": scores per KV head (gqa combines the group); heads = \"query\": the paper's code, \
                 KV heads repeated per query head, scored and evicted per query head (holds group x the K/V). arXiv 2306.14048.",
        params: kvmethods::eviction_param_docs!(decode_evict = "true";
            ("recent_fraction", "0.5", "share of the budget kept for the newest tokens"),
            ("mode", "decode", "decode: paper H2O (full prefill); prefill: evict after prefill too"),
            ("heads", "kv", "kv: scores per KV head; query: per query head over repeated KV heads (the paper's code)")),
        build,
        scorer: None,
    }
}
