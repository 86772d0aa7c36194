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

use kvcore::cache::CacheFactory;
use kvcore::methods::{EvictionConfig, EvictionFactory, ScoreInput, Scorer};
use kvcore::registry::{eviction_params, MethodError, MethodRegistration, Params};
use std::sync::Arc;
use tch::{Kind, Tensor};

/// `-‖k‖₂` per token.
pub struct KnormScorer;

impl Scorer for KnormScorer {
    fn score(&self, input: &ScoreInput<'_>) -> kvcore::Result<Tensor> {
        Ok(-input.keys.to_kind(Kind::Float).pow_tensor_scalar(2).sum_dim_intlist(-1, false, Kind::Float).sqrt())
    }
}

fn build(t: &toml::Table) -> Result<Arc<dyn CacheFactory>, MethodError> {
    let mut p = Params::new("knorm", t);
    let budget = p.budget(4.0)?;
    let mut cfg = EvictionConfig::new("knorm", budget, Arc::new(KnormScorer));
    eviction_params(&mut p, &mut cfg, false)?;
    p.finish()?;
    Ok(Arc::new(EvictionFactory(Arc::new(cfg))))
}

inventory::submit! {
    MethodRegistration {
        name: "knorm",
        family: "knorm",
        summary: "keep the keys with the smallest L2 norm (Devoto et al. 2024)",
        detail: "Score = -||k||_2 (f32) per KV head; after the context prefill keeps the top floor(S/N) per head \
                 (kvpress KnormPress with compression_ratio = 1 - 1/N). Paper: arXiv 2406.11430.",
        params: kvcore::eviction_param_docs!(decode_evict = "false";),
        build,
        scorer: Some(|t| {
            Params::new("knorm", t).finish()?;
            Ok(Arc::new(KnormScorer))
        }),
    }
}
