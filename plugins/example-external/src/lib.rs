//! A template for a method built outside kvbench and loaded at run time with
//! `kvbench --plugin target/release/libkvplugin_example_external.so ...`.
//!
//! It registers `example-recent` (keep the newest tokens, a sliding window: the simplest eviction
//! method) exactly as in-tree scoring methods register, and `kvcache::export_plugin!()` exports
//! the C entry point through which the host checks versions and calls in. Copy this crate, rename
//! the package and the method, replace the scorer. `panic = true` makes building the method
//! panic, to show (and test) that a panic inside a plugin comes back to the host as an error
//! instead of crossing the boundary.

use kvmethods::prelude::*;

/// The method's own parameters (the budget, schedule and storage are the shared ones).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Recent {
    /// Panic while building (tests the plugin boundary).
    pub panic: bool,
}

impl Scorer for Recent {
    fn score(&self, input: &ScoreInput<'_>) -> Result<Tensor> {
        Ok(input.positions.to_kind(Kind::Float)) // newer tokens score higher
    }
    fn validate(&self, _method: &str) -> std::result::Result<(), MethodError> {
        if self.panic {
            panic!("example-recent was asked to panic");
        }
        Ok(())
    }
}

register_scorer!(
    Recent,
    name = "example-recent",
    summary = "template external plugin: keep the newest tokens (a sliding window)",
    detail = "Keeps the newest floor(S/N) tokens per head after prefill and slides while decoding. Built as a cdylib and \
              loaded with --plugin; see plugins/README.md, \"Write your own method\".",
    decode_evict = true,
    params = [("panic", "false", "panic while building (tests the boundary)")],
);

#[cfg(feature = "export")]
kvcache::export_plugin!();
