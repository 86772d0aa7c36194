//! Query-agnostic eviction by context reconstruction (`kvzip`): keeps the KV pairs the model
//! attends to most when asked to repeat its context. Kim et al., "KVzip: Query-Agnostic KV Cache
//! Compression with Context Reconstruction", 2025 (arXiv 2505.23416); scores and selects as
//! kvpress 0.5.5 `KVzipPress`.
//!
//! Once the prompt is prefilled, the engine runs reconstruction passes over the uncompressed cache
//! (`kvcore::reconstruct`): pass `i` feeds "\n\nRepeat the previous context exactly." (later
//! passes: "...the part of the previous context exactly, starting with" and the previous chunk's
//! last 8 tokens), the chat template's assistant-turn opening (a newline without a template) and
//! chunk `i` of the context, `chunk_size` tokens at a time so that memory stays bounded. Per layer
//! and KV head, a context token scores the most attention any repeating query (any query head of
//! the group) pays it, the softmax taken over the first `n_sink` tokens, the chunk and the pass's
//! own tokens. The passes store nothing. They cost about one more prefill of the context, counted
//! in the method's prefill time. The first `n_sink` tokens are always kept.
//!
//! Budget: `ratio = N` keeps, in all, what every layer and head would keep at `floor(S/N)` tokens
//! each (kvpress `compression_ratio = 1 - 1/N`), pooled over layers and heads: the best scores of
//! the whole model, so layers and heads keep different numbers of tokens (kvpress
//! `layerwise = False`, the default). With `layerwise = true` each layer keeps `H·floor(S/N)`, its
//! heads pooled. `tokens = K` is the same with `K` per head in place of `floor(S/N)`.
//!
//! Differences from kvpress, each outside what its cross-check prompts exercise:
//! * A chat-template prefix (system turn, user-turn opening) is skipped only when the prompt
//!   starts with it; kvpress always skips that many tokens.
//! * Every head keeps at least its best token (kvpress has no such floor). The sinks score above
//!   everything, so this changes nothing unless the budget is smaller than the sinks.
//! * The pruned pairs are really removed: each head stores only its kept tokens. kvpress masks
//!   them in attention instead.
//! * KVzip+'s normalisation (`kvzip_plus_normalization`) is not offered.
//!
//! Cross-checked against kvpress 0.5.5 on SmolLM2 (`kvcore/tests/kvpress_crosscheck.rs`), with
//! the default chunk and with 64-token chunks.

use kvcache::scorer::Reconstruction;
use kvmethods::eviction::{Allocation, EvictionConfig, EvictionFactory};
use kvmethods::prelude::*;
use kvmethods::scoring::typed_scorer;

/// KVzip's scorer: its scores are the reconstruction passes' ([`ScoreInput::reconstruction`]).
#[derive(Debug, Deserialize)]
#[serde(default)]
pub struct KvZip {
    /// Leading tokens always kept and always in the reconstruction softmax.
    pub n_sink: usize,
    /// Context tokens repeated per reconstruction pass.
    pub chunk_size: usize,
}

impl Default for KvZip {
    fn default() -> Self {
        KvZip { n_sink: 4, chunk_size: 2048 }
    }
}

impl Scorer for KvZip {
    fn reconstruction(&self) -> Option<Reconstruction> {
        Some(Reconstruction {
            chunk_tokens: self.chunk_size,
            sinks: self.n_sink,
            first_prompt: "\n\nRepeat the previous context exactly.".into(),
            next_prompt: "\n\nRepeat the part of the previous context exactly, starting with".into(),
            overlap_tokens: 8,
        })
    }

    fn score(&self, s: &ScoreInput<'_>) -> Result<Tensor> {
        let r = s.reconstruction.ok_or_else(|| {
            Error::Unsupported(
                "kvzip scores by context reconstruction, which the engine runs before end_prefill \
                 (kvcore::reconstruct::finish_prefill); this cache was compressed without it"
                    .into(),
            )
        })?;
        if r.size() != s.positions.size() {
            return Err(Error::Other(format!("kvzip: reconstruction scores {:?} for stored tokens {:?}", r.size(), s.positions.size())));
        }
        // Sinks above every attention probability (kvpress: the maximum score + 1).
        let top = r.max().double_value(&[]) + 1.0;
        Ok(r.masked_fill(&s.positions.lt(self.n_sink as i64), top))
    }

    fn validate(&self, method: &str) -> std::result::Result<(), MethodError> {
        if self.chunk_size == 0 {
            return Err(MethodError::BadParam { method: method.into(), key: "chunk_size".into(), value: "0".into(), expected: "at least 1 token".into() });
        }
        Ok(())
    }
}

fn build_kvzip(t: &kvcache::toml::Table) -> std::result::Result<Arc<dyn CacheFactory>, MethodError> {
    let mut p = Params::new("kvzip", t);
    let budget = p.budget(4.0)?;
    let layerwise = p.bool("layerwise", false)?;
    let scorer: KvZip = typed_scorer("kvzip", &mut p)?;
    p.finish()?;
    let mut cfg = EvictionConfig::new("kvzip", budget, Arc::new(scorer));
    cfg.allocation = Allocation::Pooled { layerwise };
    Ok(Arc::new(EvictionFactory(Arc::new(cfg))))
}

fn kvzip_scorer(t: &kvcache::toml::Table) -> std::result::Result<Arc<dyn Scorer>, MethodError> {
    kvmethods::scoring::build_scorer::<KvZip>("kvzip", t)
}

kvcache::inventory::submit! {
    MethodRegistration {
        name: "kvzip",
        family: "kvzip",
        summary: "keep what the model attends to when asked to repeat its context (Kim et al. 2025)",
        detail: "After the prompt, the engine asks the model to repeat the context, chunk_size tokens per pass, over the \
                 uncompressed cache; each context token scores the most attention a repeating query pays it (softmax over the \
                 n_sink sinks, the chunk and the pass's own tokens; max over the group's query heads), sinks always kept. \
                 ratio = N keeps L*H*floor(S/N) tokens in all, the best scores pooled over layers and heads (kvpress KVzipPress \
                 with compression_ratio = 1 - 1/N, layerwise = False); layerwise = true pools each layer's heads only. The \
                 passes cost about one more prefill, counted in prefill time. Paper: arXiv 2505.23416.",
        params: &[
            ParamDoc { name: "ratio", default: "4", help: "keep 1/N of the context tokens, pooled over layers and heads (the paper's N×); 1 = no compression" },
            ParamDoc { name: "tokens", default: "(unset)", help: "keep this many tokens per head on average instead" },
            ParamDoc { name: "layerwise", default: "false", help: "pool the budget over each layer's heads only (every layer keeps 1/N)" },
            ParamDoc { name: "n_sink", default: "4", help: "leading tokens always kept (attention sinks)" },
            ParamDoc { name: "chunk_size", default: "2048", help: "context tokens repeated per reconstruction pass (bounds its memory)" },
        ],
        build: build_kvzip,
        scorer: Some(kvzip_scorer),
    }
}
