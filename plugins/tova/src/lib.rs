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

use kvmethods::prelude::*;

/// TOVA has no parameters of its own. The score is the attention of the last query, averaged
/// over heads.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Tova {}

impl Scorer for Tova {
    fn query_window(&self) -> usize {
        1
    }
    fn score(&self, input: &ScoreInput<'_>) -> Result<Tensor> {
        let probs = window_probs(input)?; // [B, Hq, 1, S]
        let (b, hkv, s) = input.positions.size3()?;
        let mean = probs.mean_dim([1i64, 2].as_slice(), false, Kind::Float); // [B, S]
        let scores = mean.unsqueeze(1).expand([b, hkv, s], false).contiguous();
        Ok(protect_window(&scores, input))
    }
}

register_scorer!(
    Tova,
    name = "tova",
    summary = "keep the tokens the newest query attends to most, averaged over heads (Oren et al. 2024)",
    detail = "Score = softmax attention of the last query, mean over all query heads (kvpress TOVAPress); the newest \
              token is always kept. Keeps floor(S/N) per head after prefill and, by default, stays at that budget \
              while decoding (one eviction per step). arXiv 2401.06104.",
    decode_evict = true,
);
