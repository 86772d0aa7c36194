//! The method library: the machinery scoring methods share, so that a method is a scorer and a
//! registration line. No method is registered here; the families under `plugins/` register.
//!
//! * [`eviction`]: token eviction: a [`kvcache::scorer::Scorer`] (which tokens matter) composed
//!   with when to compress (after prefill, during decoding every N steps, streaming), how the
//!   budget is split (uniform, per layer, head-adaptive) and where the survivors live (dense or
//!   quantized), with exact byte accounting.
//! * [`quant`] and [`quantized`]: group quantization with packed codes, and the quantized caches
//!   (`kivi`, `flexgen`, `int8`, `int4`) that are also the quantized storage of eviction methods.
//! * [`scoring`]: [`register_scorer!`], which turns a `#[derive(Deserialize)]` struct that
//!   implements `Scorer` into a registered method with the shared budget, schedule and storage
//!   parameters.

pub mod eviction;
pub mod quant;
pub mod quant_attend;
pub mod quantized;
pub mod repeat_kv;
pub mod scoring;

pub use kvcache;

/// What a scoring method's file imports: the method API's prelude plus the registration macro.
pub mod prelude {
    pub use crate::register_scorer;
    pub use kvcache::prelude::*;
}
