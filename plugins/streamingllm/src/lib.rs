//! StreamingLLM (`streamingllm`): attention sinks plus a recent window. Xiao et al., "Efficient
//! Streaming Language Models with Attention Sinks", ICLR 2024 (arXiv 2309.17453).
//!
//! Budget as in the paper's benchmark (longctx_bench via InfLLM's stream-llm): `ratio = N` gives
//! `budget = floor(S/N)` for an `S`-token context (at `ratio = 6`, `floor(0.17 · S)`: the paper's
//! configs write 6x as `compression_ratio: 0.17`, as InfLLM here does too), `sinks = int(budget · sink_ratio)` (0.021) and
//! `local = budget - sinks`. `prefill = "chunked"` (default) compresses during prefill: every query
//! sees only the sinks and the `local` tokens before it, and after each chunk the cache keeps the
//! sinks and the newest `local` tokens, so memory stays at the budget throughout (chunk size is the
//! caller's `--prefill-chunk`; the result does not depend on it). `prefill = "full"` prefills with
//! full attention and keeps sinks + recent afterwards (kvpress `StreamingLLMPress`, which uses
//! `n_sink = 4`: set `sinks = 4`). Decoding keeps the window sliding at the budget.
//!
//! Positions: by default keys keep their original RoPE positions (as kvpress does without
//! `KeyRerotationPress`). `positions = "reindexed"` follows the paper's code (InfLLM's stream-llm):
//! a sink outside a query's local window is seen at distance `local + sinks - j`, as if the sinks
//! sat just before the window, so no attended key is farther than the budget
//! (`kvcache::cache::attend_sinks_local_reindexed`; chunked prefill only). The paper grids run it
//! (`configs/methods/streamingllm-paper.toml`).
//! With `prefill = "full"`, `sinks = 4` the kept positions equal kvpress `StreamingLLMPress` on
//! SmolLM2 (`kvcore/tests/kvpress_crosscheck.rs`).

use kvcache::cache::CacheFactory;
use kvcache::params::Params;
use kvcache::registration::MethodRegistration;
use kvcache::scorer::{ScoreInput, Scorer};
use kvcache::MethodError;
use kvmethods::eviction::{EvictionConfig, EvictionFactory, Start, StreamingPrefill};
use kvmethods::scoring::eviction_params;
use std::sync::Arc;
use tch::{Kind, Tensor};

/// Newer is better (the cache applies sinks itself).
pub struct RecencyScorer;

impl Scorer for RecencyScorer {
    fn score(&self, input: &ScoreInput<'_>) -> kvcache::Result<Tensor> {
        Ok(input.positions.to_kind(Kind::Float))
    }
}

fn build(t: &toml::Table) -> Result<Arc<dyn CacheFactory>, MethodError> {
    let mut p = Params::new("streamingllm", t);
    let budget = p.budget(4.0)?.paper();
    let sink_ratio = p.float("sink_ratio", 0.021, 0.0, 1.0)?;
    let sinks = p.opt_int("sinks", 0, usize::MAX >> 1)?;
    let mode = p.choice("prefill", "chunked", &["chunked", "full"])?;
    let positions = p.choice("positions", "absolute", &["absolute", "reindexed"])?;
    if positions == "reindexed" && mode != "chunked" {
        return Err(p.refuse(
            "positions",
            "\"reindexed\" (with prefill = \"full\")",
            "positions = \"reindexed\" only with prefill = \"chunked\" (InfLLM's stream-llm attends through sinks and a local window from the first chunk)",
        ));
    }
    let mut cfg = EvictionConfig::new("streamingllm", budget, Arc::new(RecencyScorer));
    eviction_params(&mut p, &mut cfg, true)?;
    if positions == "reindexed" && matches!(cfg.storage, kvmethods::eviction::Storage::Quantized(_)) {
        return Err(p.refuse(
            "positions",
            "\"reindexed\" (with storage)",
            "positions = \"reindexed\" with dense storage (quantized storage attends at absolute positions)",
        ));
    }
    p.finish()?;
    cfg.schedule.start = Start::Streaming(StreamingPrefill { sink_ratio, sinks, chunked: mode == "chunked", reindex: positions == "reindexed" });
    Ok(Arc::new(EvictionFactory(Arc::new(cfg))))
}

kvcache::inventory::submit! {
    MethodRegistration {
        name: "streamingllm",
        family: "streamingllm",
        summary: "attention sinks + recent window, compressing during chunked prefill (Xiao et al. 2024)",
        detail: "budget = floor(S/N) of the S-token context (floor(0.17 * S) at ratio = 6, the paper's 0.17); sinks = int(budget * sink_ratio) (0.021 as in the paper's \
                 config), local = budget - sinks. prefill = \"chunked\": sinks + sliding-window attention during prefill, \
                 cache trimmed after every chunk; prefill = \"full\": full prefill, then keep sinks + newest (kvpress \
                 StreamingLLMPress; use sinks = 4). positions = \"absolute\": keys keep their original positions; \
                 \"reindexed\": InfLLM's stream-llm (the paper's code), a sink outside the local window is seen at distance \
                 local + sinks - j. arXiv 2309.17453.",
        params: kvmethods::eviction_param_docs!(decode_evict = "true";
            ("sink_ratio", "0.021", "fraction of the budget kept as sink tokens"),
            ("sinks", "(unset)", "absolute number of sink tokens (overrides sink_ratio)"),
            ("prefill", "chunked", "chunked: compress during prefill; full: full prefill, compress after"),
            ("positions", "absolute", "absolute: keys keep their positions; reindexed: sinks outside the window at InfLLM's distance local + sinks - j (chunked only)")),
        build,
        scorer: None,
    }
}
