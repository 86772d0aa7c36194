//! TOVA, token omission via attention (`tova`). Oren et al., "Transformers are Multi-State RNNs",
//! 2024 (arXiv 2401.06104). The score of a token is the attention the newest query pays it,
//! averaged over all query heads (one ranking shared by every KV head), as in kvpress `TOVAPress`;
//! the newest token is always kept.
//!
//! Budget: `ratio = N` keeps `floor(S/N)` of the context per head after prefill; as in the TOVA
//! paper the cache then stays at that size while decoding (`decode_evict = true`: each step drops
//! the lowest-scored token under the newest query's attention).
//!
//! After prefill the kept positions equal kvpress `TOVAPress` on SmolLM2, 3 prompts
//! (`kvcore/tests/kvpress_crosscheck.rs`); near-ties at the cut-off may swap (float noise).

use kvcore::cache::CacheFactory;
use kvcore::methods::{protect_window, window_probs, EvictionConfig, EvictionFactory, ScoreInput, Scorer};
use kvcore::registry::{eviction_params, MethodError, MethodRegistration, Params};
use std::sync::Arc;
use tch::{Kind, Tensor};

/// Attention of the last query, averaged over heads.
pub struct TovaScorer;

impl Scorer for TovaScorer {
    fn query_window(&self) -> usize {
        1
    }
    fn score(&self, input: &ScoreInput<'_>) -> kvcore::Result<Tensor> {
        let probs = window_probs(input)?; // [B, Hq, 1, S]
        let (b, hkv, s) = input.positions.size3()?;
        let mean = probs.mean_dim([1i64, 2].as_slice(), false, Kind::Float); // [B, S]
        let scores = mean.unsqueeze(1).expand([b, hkv, s], false).contiguous();
        Ok(protect_window(&scores, input))
    }
}

fn build(t: &toml::Table) -> Result<Arc<dyn CacheFactory>, MethodError> {
    let mut p = Params::new("tova", t);
    let budget = p.budget(4.0)?;
    let mut cfg = EvictionConfig::new("tova", budget, Arc::new(TovaScorer));
    eviction_params(&mut p, &mut cfg, true)?;
    p.finish()?;
    Ok(Arc::new(EvictionFactory(Arc::new(cfg))))
}

inventory::submit! {
    MethodRegistration {
        name: "tova",
        family: "tova",
        summary: "keep the tokens the newest query attends to most, averaged over heads (Oren et al. 2024)",
        detail: "Score = softmax attention of the last query, mean over all query heads (kvpress TOVAPress); the newest \
                 token is always kept. Keeps floor(S/N) per head after prefill and, by default, stays at that budget \
                 while decoding (one eviction per step). arXiv 2401.06104.",
        params: kvcore::eviction_param_docs!(decode_evict = "true";),
        build,
        scorer: Some(|t| {
            Params::new("tova", t).finish()?;
            Ok(Arc::new(TovaScorer))
        }),
    }
}
