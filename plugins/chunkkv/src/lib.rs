//! Chunk-wise eviction (`chunkkv`): keeps whole chunks of consecutive tokens, chosen by the
//! summed scores of any scoring method, so that what survives is runs of text rather than
//! scattered tokens. Liu et al., "ChunkKV: Semantic-Preserving KV Cache Compression for Efficient
//! Long-Context LLM Inference", 2025 (arXiv 2502.00299); selects as kvpress `ChunkKVPress`.
//!
//! The wrapped scorer (`scorer = "snapkv"` by default; `knorm`, `keydiff`, `tova`, any scoring
//! method, with its own parameters beside) scores every token per KV head. The scores are summed
//! over the layer's KV heads, each chunk of `chunk_length` tokens gets the mean of its tokens'
//! sums (a shorter last chunk the mean of its own), and the best chunks are kept whole, the same
//! ones for every head.
//!
//! Budget: `ratio = N` keeps `max(1, floor(C/N))` of the `C` chunks of the `S`-token context
//! (kvpress `int(C · (1 - compression_ratio))` with `compression_ratio = 1 - 1/N`), so about
//! `S/N` tokens; `tokens = K` keeps `floor(K/chunk_length)` chunks. A context shorter than one
//! chunk is selected token by token (kvpress delegates to the wrapped press), and so is a
//! `tokens` budget under one chunk (so that the cache never holds more than K).
//!
//! With `decode_evict = true` the cache is kept at its budget (a whole number of chunks) while
//! decoding by re-selecting whole chunks of consecutive stored tokens every `decode_interval`
//! steps; kvpress's ChunkKVPress compresses only after prefill.
//!
//! One difference from kvpress, outside what a benchmark run exercises: with a batch of B > 1
//! sequences each sequence picks its own chunks and the partial last chunk is not a candidate
//! (kvpress applies the first sequence's chunks to all).
//!
//! Cross-checked against kvpress 0.5.5 on SmolLM2 (`kvcore/tests/kvpress_crosscheck.rs`) with
//! Knorm and SnapKV as the wrapped scorer.

use kvcache::registration::builtin_scorer;
use kvmethods::eviction::{Allocation, EvictionConfig, EvictionFactory};
use kvmethods::prelude::*;
use kvmethods::scoring::SharedKnobs;

fn build_chunkkv(t: &toml::Table) -> std::result::Result<Arc<dyn CacheFactory>, MethodError> {
    let mut p = Params::new("chunkkv", t);
    let budget = p.budget(4.0)?;
    let length = p.int("chunk_length", 20, 1, 1 << 20)?;
    let inner: String = p.get("scorer", "snapkv".to_string(), "the name of a scoring method")?;
    let knobs = SharedKnobs::read("chunkkv", &mut p, false)?;
    let rest = p.take_rest();
    p.finish()?;
    let mut cfg = EvictionConfig::new("chunkkv", budget, builtin_scorer("chunkkv", &inner, &rest)?);
    knobs.apply(&mut cfg);
    cfg.allocation = Allocation::Chunks { length };
    Ok(Arc::new(EvictionFactory(Arc::new(cfg))))
}

kvcache::inventory::submit! {
    MethodRegistration {
        name: "chunkkv",
        family: "chunkkv",
        summary: "keep whole chunks of consecutive tokens, ranked by any scorer (Liu et al. 2025)",
        detail: "After the context prefill, the wrapped scorer's per-head scores are summed over KV heads, each chunk of \
                 chunk_length tokens is ranked by its mean, and the best max(1, floor(C/N)) of the C chunks are kept whole, the \
                 same chunks for every head (kvpress ChunkKVPress with compression_ratio = 1 - 1/N). The wrapped scorer's own \
                 parameters go beside (e.g. window = 32 for snapkv). Paper: arXiv 2502.00299.",
        params: kvmethods::eviction_param_docs!(decode_evict = "false";
            ("chunk_length", "20", "tokens per chunk"),
            ("scorer", "snapkv", "the scoring method that ranks tokens (any scorer: snapkv, knorm, keydiff, tova, ...)")),
        build: build_chunkkv,
        scorer: None,
    }
}
