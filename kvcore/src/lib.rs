//! The kvbench engine: devices and dtypes, the Llama-family decoder on libtorch, weight loading
//! (safetensors, GGUF), tokenizer and chat template wiring, the per-layer KV-cache API that
//! compression methods implement, generation, memory accounting, and where models come from.
//!
//! Map: [`device`] (settings), [`config`] (model shapes), [`weights`] (files → tensors),
//! [`rope`], [`norm`] (RMS norm for every family), [`model`] (the decoder), [`cache`] (the cache contract and the full cache),
//! [`generate`], [`loader`] (files → ready model: a transformer or a linear-time [`ssm`] model),
//! [`lm_tokenizer`], [`sources`] (fetching), [`memory`],
//! [`random_init`] (random-weight models for tests and benchmarks), [`conformance`] (the named
//! trials every method runs), [`registry`] (methods by
//! name: the in-tree registrations linked into the binary and external plugins),
//! [`prompt`] (text-level prompt compressors), [`plugin_ffi`] (the host side of external plugins),
//! [`pipeline`] (context/question split), [`reconstruct`] (KVzip's context reconstruction stage).
//!
//! The method API (the cache contract, budgets, parameters, registration) is the `kvcache`
//! crate, re-exported here as [`cache`]; the methods themselves live under `plugins/`.

pub mod config;
pub mod conformance;
pub mod decode_matmul;
pub mod device;
pub mod error;
pub mod generate;
pub mod lm_tokenizer;
pub mod loader;
pub mod memory;
pub mod memory_guard;
pub mod model;
pub mod norm;
pub mod pipeline;
pub mod plugin_ffi;
pub mod prompt;
pub mod random_init;
pub mod reconstruct;
pub mod registry;
pub mod rope;
pub mod shared;
pub mod sources;
pub mod ssm;
pub mod weights;

pub use error::{Error, Result};
/// The method API: the per-layer cache contract, attention helpers and the full cache.
pub use kvcache::cache;
