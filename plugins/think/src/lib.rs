//! Key-channel pruning (`think`): drops the key channels that matter least to the queries, so the
//! cache holds narrower keys. Xu et al., "ThinK: Thinner Key Cache by Query-Driven Pruning",
//! ICLR 2025 (arXiv 2407.21018); channel scores as kvpress `ThinKPress`.
//!
//! After the context prefill, per KV head, channel `c` scores `mean(q_c²) · mean(k_c²)`: the last
//! `channel_window` (32) queries after RoPE, averaged over the head's query heads, and the stored
//! keys. The `floor(D · key_channel_ratio)` lowest channels are pruned from every stored key and
//! from every later key and query (attention is `q·k` over the kept channels, scaled by `1/√D` as
//! before); values keep all `D` channels. At `key_channel_ratio = 0.5` the cache holds half the
//! key bytes (plus the kept channels' indices) and three quarters of the K/V bytes.
//!
//! It composes with token eviction: `scorer = "snapkv"` (any scoring method, its parameters
//! beside) with `ratio = N` or `tokens = K` first evicts tokens as that method does, then prunes
//! channels of the survivors (kvpress `ComposedPress([SnapKVPress, ThinKPress])`). The default
//! `ratio = 1` evicts no token. Every scoring method also takes `key_channel_ratio` itself.
//!
//! Difference from kvpress: kvpress zeroes the pruned channels and keeps the key's shape, so it
//! saves no memory; here they are gone from the cache (the attention computed is the same).

use kvcache::registration::builtin_scorer;
use kvmethods::eviction::{EvictionConfig, EvictionFactory, KeyChannels};
use kvmethods::prelude::*;

fn build_think(t: &kvcache::toml::Table) -> std::result::Result<Arc<dyn CacheFactory>, MethodError> {
    let mut p = Params::new("think", t);
    let budget = p.budget(1.0)?;
    let ratio = p.float("key_channel_ratio", 0.5, 0.0, 0.99)?;
    let window = p.int("channel_window", 32, 1, 1 << 20)?;
    let inner: String = p.get("scorer", "snapkv".to_string(), "the name of a scoring method")?;
    let gqa = p.gqa()?;
    let rest = p.take_rest();
    p.finish()?;
    let mut cfg = EvictionConfig::new("think", budget, builtin_scorer("think", &inner, &rest)?);
    cfg.gqa = gqa;
    if ratio > 0.0 {
        cfg.key_channels = Some(KeyChannels { ratio, window });
    }
    Ok(Arc::new(EvictionFactory(Arc::new(cfg))))
}

kvcache::inventory::submit! {
    MethodRegistration {
        name: "think",
        family: "think",
        summary: "prune the key channels the queries need least, so keys are narrower (Xu et al. 2025)",
        detail: "After the context prefill, per KV head, channel c scores mean(q_c^2) * mean(k_c^2) over the last channel_window \
                 queries (after RoPE, averaged over the head's query heads) and the stored keys; the floor(D * key_channel_ratio) \
                 lowest channels are removed from the stored keys and from every later key and query (values keep all channels; \
                 kvpress ThinKPress, which zeroes them instead). With scorer and ratio = N it first evicts tokens as that method \
                 does (kvpress ComposedPress). Paper: arXiv 2407.21018.",
        params: &[
            ParamDoc { name: "key_channel_ratio", default: "0.5", help: "fraction of key channels pruned per KV head" },
            ParamDoc { name: "channel_window", default: "32", help: "the last prefill queries that score the channels" },
            ParamDoc { name: "ratio", default: "1", help: "also keep 1/N of the context tokens per head, chosen by `scorer` (1: no token eviction)" },
            ParamDoc { name: "tokens", default: "(unset)", help: "keep this many tokens per head instead" },
            ParamDoc { name: "scorer", default: "snapkv", help: "the scoring method that evicts tokens when ratio > 1 (its parameters go beside)" },
            ParamDoc { name: "gqa", default: "mean", help: "combine query-head scores per KV head: mean or max" },
        ],
        build: build_think,
        scorer: None,
    }
}
