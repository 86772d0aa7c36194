//! Scoring methods from a struct: [`register_scorer!`] registers a type that implements
//! [`Scorer`] and `Deserialize` (its fields are the method's own parameters) as an eviction method
//! that takes the shared parameters ([`eviction_params`]: the budget, `decode_evict`,
//! `decode_interval`, `gqa`, `storage`), is listed by `kvbench methods`, and can be wrapped by
//! other methods (AdaKV's `scorer = "..."`).

use crate::eviction::{EvictionConfig, EvictionFactory};
use kvcache::cache::CacheFactory;
use kvcache::params::Params;
use kvcache::scorer::Scorer;
use kvcache::MethodError;
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// The knobs every eviction method shares, besides the budget.
#[derive(Clone, Debug)]
pub struct SharedKnobs {
    /// Keep the cache at its budget while decoding.
    pub decode_evict: bool,
    /// With `decode_evict`: evict every N decode steps.
    pub decode_interval: usize,
    pub gqa: kvcache::params::GqaAgg,
    /// Keep the survivors quantized.
    pub storage: Option<crate::quantized::QuantConfig>,
    /// Compress during prefill, every this many tokens (`block_size`).
    pub block_size: Option<usize>,
    /// Compress only while decoding, to this many tokens (`target_size`), every `interval` steps.
    pub target_size: Option<usize>,
    pub interval: Option<usize>,
    /// Prune this fraction of key channels after prefill (ThinK; 0: none).
    pub key_channel_ratio: f64,
    /// Prefill queries that score the key channels.
    pub channel_window: usize,
}

/// kvpress DecodingPress's default `compression_interval`.
pub const DEFAULT_INTERVAL: usize = 512;

impl SharedKnobs {
    /// Reads `decode_evict` (default `decode_default`), `decode_interval`, `gqa` and `storage`.
    /// Also reads the schedules `block_size` (compress during prefill) and `target_size` with
    /// `interval` (compress only while decoding), refusing the combinations that contradict.
    pub fn read(name: &str, p: &mut Params, decode_default: bool) -> Result<Self, MethodError> {
        let knobs = SharedKnobs {
            decode_evict: p.bool("decode_evict", decode_default)?,
            decode_interval: p.int("decode_interval", 1, 1, 1 << 20)?,
            gqa: p.gqa()?,
            storage: crate::quantized::storage_param(name, p)?,
            block_size: p.opt_int("block_size", 1, 1 << 20)?,
            target_size: p.opt_int("target_size", 1, usize::MAX >> 1)?,
            interval: p.opt_int("interval", 1, 1 << 20)?,
            key_channel_ratio: p.float("key_channel_ratio", 0.0, 0.0, 0.99)?,
            channel_window: p.int("channel_window", 32, 1, 1 << 20)?,
        };
        if let Some(k) = knobs.target_size {
            for key in ["ratio", "tokens", "decode_evict", "decode_interval", "block_size", "storage"] {
                if p.was_given(key) {
                    return Err(p.refuse(
                        "target_size",
                        &format!("{k} (with {key})"),
                        &format!("target_size alone: it compresses only while decoding, to target_size tokens every `interval` steps (kvpress DecodingPress); leave out `{key}`"),
                    ));
                }
            }
        } else if let Some(i) = knobs.interval {
            return Err(p.refuse(
                "interval",
                &i.to_string(),
                "`interval` only with `target_size` (with `ratio`/`tokens`, evict while decoding with decode_evict = true and decode_interval)",
            ));
        }
        Ok(knobs)
    }

    /// Sets these knobs on `cfg`.
    pub fn apply(self, cfg: &mut EvictionConfig) {
        cfg.schedule.decode_evict = self.decode_evict;
        cfg.schedule.decode_interval = self.decode_interval;
        cfg.schedule.prefill_block = self.block_size;
        if self.key_channel_ratio > 0.0 {
            cfg.key_channels = Some(crate::eviction::KeyChannels { ratio: self.key_channel_ratio, window: self.channel_window });
        }
        if let Some(k) = self.target_size {
            cfg.budget = kvcache::params::Budget::Tokens(k);
            cfg.schedule.decode_only = true;
            cfg.schedule.decode_evict = true;
            cfg.schedule.decode_interval = self.interval.unwrap_or(DEFAULT_INTERVAL);
        }
        cfg.gqa = self.gqa;
        cfg.storage = self.storage.map_or(crate::eviction::Storage::Dense, crate::eviction::Storage::Quantized);
    }
}

/// Reads the knobs every eviction method shares (`decode_evict`, `decode_interval`, `gqa`,
/// `storage`) into `cfg`.
pub fn eviction_params(p: &mut Params, cfg: &mut EvictionConfig, decode_default: bool) -> Result<(), MethodError> {
    SharedKnobs::read(&cfg.name.clone(), p, decode_default)?.apply(cfg);
    Ok(())
}

/// Reads scorer `S`'s own parameters from `p` and checks them.
pub fn typed_scorer<S: Scorer + DeserializeOwned>(name: &str, p: &mut Params) -> Result<S, MethodError> {
    let s: S = p.typed()?;
    s.validate(name)?;
    Ok(s)
}

/// The cache factory of scoring method `name` with scorer `S`: the budget (`ratio`, default 4,
/// or `tokens`), `S`'s own fields, then the shared eviction knobs; any other key is refused.
pub fn build_scoring<S: Scorer + DeserializeOwned + 'static>(name: &str, t: &toml::Table, decode_default: bool) -> Result<Arc<dyn CacheFactory>, MethodError> {
    let mut p = Params::new(name, t);
    let budget = p.budget(4.0)?;
    let scorer: S = typed_scorer(name, &mut p)?;
    let mut cfg = EvictionConfig::new(name, budget, Arc::new(scorer));
    eviction_params(&mut p, &mut cfg, decode_default)?;
    p.finish()?;
    Ok(Arc::new(EvictionFactory(Arc::new(cfg))))
}

/// Scorer `S` alone, for wrappers: only `S`'s own parameters are accepted.
pub fn build_scorer<S: Scorer + DeserializeOwned + 'static>(name: &str, t: &toml::Table) -> Result<Arc<dyn Scorer>, MethodError> {
    let mut p = Params::new(name, t);
    let scorer: S = typed_scorer(name, &mut p)?;
    p.finish()?;
    Ok(Arc::new(scorer))
}

/// The parameter docs of an eviction method: the shared knobs (with this method's
/// `decode_evict` default), then its own `(name, default, help)` triples.
#[macro_export]
macro_rules! eviction_param_docs {
    (decode_evict = $de:expr; $( ($n:expr, $d:expr, $h:expr) ),* $(,)?) => {
        &[
            $crate::kvcache::params::ParamDoc { name: "ratio", default: "4", help: "keep 1/N of the context tokens per head (the paper's N×); 1 = no compression" },
            $crate::kvcache::params::ParamDoc { name: "tokens", default: "(unset)", help: "keep this many tokens per head instead (absolute per-layer budget)" },
            $crate::kvcache::params::ParamDoc { name: "decode_evict", default: $de, help: "keep the cache at its budget while decoding" },
            $crate::kvcache::params::ParamDoc { name: "decode_interval", default: "1", help: "with decode_evict: evict every N decode steps" },
            $crate::kvcache::params::ParamDoc { name: "gqa", default: "mean", help: "combine query-head scores per KV head: mean or max" },
            $crate::kvcache::params::ParamDoc { name: "storage", default: "(none)", help: "keep the survivors quantized, e.g. {method = \"kivi\", bits = 2} (kivi, flexgen, int8, int4 and their parameters; needs decode_evict = false)" },
            $crate::kvcache::params::ParamDoc { name: "block_size", default: "(unset)", help: "compress during prefill: after every block of this many tokens the cache is cut back to its budget (sized from the context), so it never holds more than budget + block_size (KeyDiff's block-wise prefill; kvpress BlockPress, here a true chunked prefill)" },
            $crate::kvcache::params::ParamDoc { name: "target_size", default: "(unset)", help: "compress only while decoding: every `interval` decode steps, cut the cache to this many tokens (kvpress DecodingPress); replaces ratio/tokens and decode_evict" },
            $crate::kvcache::params::ParamDoc { name: "interval", default: "512", help: "with target_size: decode steps between compressions (kvpress compression_interval)" },
            $crate::kvcache::params::ParamDoc { name: "key_channel_ratio", default: "0", help: "also prune this fraction of key channels per head after prefill (ThinK): the cache holds fewer key bytes; needs decode_evict = false" },
            $crate::kvcache::params::ParamDoc { name: "channel_window", default: "32", help: "with key_channel_ratio: the last prefill queries that score the channels" },
            $( $crate::kvcache::params::ParamDoc { name: $n, default: $d, help: $h } ),*
        ]
    };
}

/// Registers a scoring method: `register_scorer!(Type, name = "...", summary = "...")`, with
/// optional `detail = "..."` (budget mapping, paper, deviations; shown by `methods --detail`),
/// `decode_evict = true` (the default is false: compress once after prefill) and
/// `params = [("key", "default", "help"), ...]` documenting `Type`'s fields. The family is the
/// crate's package name without `kvplugin-`. `Type` must implement `Scorer`, `Deserialize` and
/// take its defaults from serde (`#[serde(default)]`).
#[macro_export]
macro_rules! register_scorer {
    ($ty:ty, name = $name:literal, summary = $summary:expr
        $(, detail = $detail:expr)?
        $(, decode_evict = $de:tt)?
        $(, params = [$( ($pn:expr, $pd:expr, $ph:expr) ),* $(,)?])? $(,)?) => {
        const _: () = {
            const DECODE_EVICT: bool = $crate::register_scorer!(@or $($de)?);
            fn build(t: &$crate::kvcache::toml::Table) -> ::std::result::Result<::std::sync::Arc<dyn $crate::kvcache::cache::CacheFactory>, $crate::kvcache::MethodError> {
                $crate::scoring::build_scoring::<$ty>($name, t, DECODE_EVICT)
            }
            fn scorer(t: &$crate::kvcache::toml::Table) -> ::std::result::Result<::std::sync::Arc<dyn $crate::kvcache::scorer::Scorer>, $crate::kvcache::MethodError> {
                $crate::scoring::build_scorer::<$ty>($name, t)
            }
            $crate::kvcache::inventory::submit! {
                $crate::kvcache::registration::MethodRegistration {
                    name: $name,
                    family: env!("CARGO_PKG_NAME"),
                    summary: $summary,
                    detail: $crate::register_scorer!(@detail $($detail)?),
                    params: $crate::eviction_param_docs!(decode_evict = if DECODE_EVICT { "true" } else { "false" }; $($( ($pn, $pd, $ph) ),*)?),
                    build,
                    scorer: Some(scorer),
                }
            }
        };
    };
    (@or) => { false };
    (@or $de:tt) => { $de };
    (@detail) => { "" };
    (@detail $d:expr) => { $d };
}
