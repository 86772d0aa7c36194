//! The method API's error type: what a cache or a method's parameters can get wrong. The engine's
//! own error wraps it (pointing downward), so a method never depends on the engine.

use std::path::PathBuf;

/// Result alias of the method API.
pub type Result<T> = std::result::Result<T, Error>;

/// Why a cache operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid {what}: `{value}` (expected {expected})")]
    InvalidArgument { what: &'static str, value: String, expected: String },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error(transparent)]
    Method(#[from] MethodError),
    #[error("not supported: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Other(String),
}

/// Why a method could not be found, configured or loaded.
#[derive(Debug, thiserror::Error)]
pub enum MethodError {
    #[error("unknown method `{name}` (known: {known})")]
    UnknownMethod { name: String, known: String },
    #[error("method `{method}`: unknown parameter `{key}` (accepted: {accepted})")]
    UnknownParam { method: String, key: String, accepted: String },
    #[error("method `{method}`: parameter `{key}` = {value}: expected {expected}")]
    BadParam { method: String, key: String, value: String, expected: String },
    #[error("method `{name}` is registered twice ({first} and {second})")]
    Duplicate { name: String, first: String, second: String },
    #[error("method `{method}` cannot wrap `{inner}`: it is not a scoring method (scorers: {known})")]
    NotAScorer { method: String, inner: String, known: String },
    #[error("--set {0}: expected key=value")]
    BadSetting(String),
    #[error("plugin {path}: {problem}")]
    Plugin { path: PathBuf, problem: String },
    #[error("plugin {path} was built for {field} {plugin}, but this kvbench has {host}; rebuild the plugin against this kvbench (same kvcache and libtorch)")]
    Incompatible { path: PathBuf, field: &'static str, plugin: String, host: String },
}
