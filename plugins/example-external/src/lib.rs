//! A template for a method built outside kvbench and loaded at run time with
//! `kvbench --plugin target/release/libkvplugin_example_external.so ...`.
//!
//! It registers `example-recent` (keep the newest tokens, a sliding window: the simplest eviction
//! method) exactly as in-tree methods register, and `kvcore::export_plugin!()` exports the C entry
//! point through which the host checks versions and calls in. Copy this crate, rename the method,
//! replace the scorer. `panic = true` makes building the method panic, to show (and test) that a
//! panic inside a plugin comes back to the host as an error instead of crossing the boundary.

use kvcore::cache::CacheFactory;
use kvcore::methods::{EvictionConfig, EvictionFactory, ScoreInput, Scorer};
use kvcore::registry::{eviction_params, MethodError, MethodRegistration, Params};
use std::sync::Arc;
use tch::{Kind, Tensor};

/// Newer tokens score higher.
pub struct RecentScorer;

impl Scorer for RecentScorer {
    fn score(&self, input: &ScoreInput<'_>) -> kvcore::Result<Tensor> {
        Ok(input.positions.to_kind(Kind::Float))
    }
}

fn build(t: &toml::Table) -> Result<Arc<dyn CacheFactory>, MethodError> {
    let mut p = Params::new("example-recent", t);
    let budget = p.budget(4.0)?;
    let panic = p.bool("panic", false)?;
    let mut cfg = EvictionConfig::new("example-recent", budget, Arc::new(RecentScorer));
    eviction_params(&mut p, &mut cfg, true)?;
    p.finish()?;
    if panic {
        panic!("example-recent was asked to panic");
    }
    Ok(Arc::new(EvictionFactory(Arc::new(cfg))))
}

inventory::submit! {
    MethodRegistration {
        name: "example-recent",
        family: "example-external",
        summary: "template external plugin: keep the newest tokens (a sliding window)",
        detail: "Keeps the newest floor(S/N) tokens per head after prefill and slides while decoding. Built as a cdylib and \
                 loaded with --plugin; see plugins/README.md, \"Write your own method\".",
        params: kvcore::eviction_param_docs!(decode_evict = "true"; ("panic", "false", "panic while building (tests the boundary)")),
        build,
        scorer: None,
    }
}

kvcore::export_plugin!();
