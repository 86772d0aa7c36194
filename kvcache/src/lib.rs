//! The kvbench method API: everything a compression method depends on, and nothing of the engine.
//!
//! A method is a factory of per-layer caches ([`cache::CacheFactory`], [`cache::LayerCache`]):
//! the engine computes Q/K/V for a layer and hands them to that layer's cache, which decides what
//! to store and how attention over it is computed ([`cache`]'s helpers do the attention). Caches
//! store tokens in the one growable K/V buffer ([`buffer::KvBuffer`]) and report the bytes they
//! really hold. A method's parameters arrive as a TOML table read with [`params::Params`]
//! (budgets: [`params::Budget`]); scoring methods implement [`scorer::Scorer`]. A method makes
//! itself known with a [`registration::MethodRegistration`], and a `cdylib` plugin exports its
//! registrations through the C interface with [`export_plugin!`] ([`ffi`]).
//!
//! Depends on tch, inventory, serde, toml and thiserror, plus libloading and rayon for
//! [`team`] (splitting a method's own CPU kernels across libtorch's threads). The engine (kvcore) depends on this
//! crate; the method library (`plugins/kvmethods`) and every method family build on it.

pub mod buffer;
pub mod cache;
pub mod dtype;
pub mod error;
pub mod ffi;
pub mod params;
pub mod registration;
pub mod rope;
pub mod scorer;
pub mod team;

pub use dtype::DType;
pub use error::{Error, MethodError, Result};
/// Re-exported so plugins name one crate for the registration macros.
pub use inventory;
pub use tch;
pub use toml;

/// What a method file usually imports.
pub mod prelude {
    pub use crate::buffer::KvBuffer;
    pub use crate::cache::{
        attend_at_positions, attend_contiguous, attention_probs, tensor_bytes, AttentionStep, CacheFactory, CacheSpec, LayerCache, Visibility,
    };
    pub use crate::error::{Error, MethodError, Result};
    pub use crate::params::{Budget, GqaAgg, ParamDoc, Params};
    pub use crate::registration::MethodRegistration;
    pub use crate::scorer::{in_window, protect_window, window_probs, ScoreInput, Scorer};
    pub use crate::DType;
    pub use serde::Deserialize;
    pub use std::sync::Arc;
    pub use tch::{Kind, Tensor};
}
