//! One error type for the engine, with structured variants so a message names the file, key or
//! tensor at fault and what was expected.

use std::path::PathBuf;

/// Result alias used across kvcore.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // === user input ===
    #[error("invalid {what}: `{value}` (expected {expected})")]
    InvalidArgument { what: &'static str, value: String, expected: String },
    #[error("model `{name}` not found: it is neither a known model name ({known}), an existing path, nor `hf:org/name[@revision]`")]
    ModelNotFound { name: String, known: String },
    #[error("model `{name}` is not in the cache ({path}); run `kvbench model fetch {name}`")]
    ModelNotFetched { name: String, path: PathBuf },
    #[error("{file}: key `{key}`: {problem}")]
    Config { file: PathBuf, key: String, problem: String },
    #[error("unsupported architecture `{arch}` in {file} (supported: llama, mistral, qwen2; SmolLM2 is llama)")]
    UnknownArchitecture { arch: String, file: PathBuf },
    #[error("prompt has {prompt_tokens} tokens but the model's context is {context} tokens (with {reserved} reserved for generation); pass --truncate to cut the middle of the prompt")]
    PromptTooLong { prompt_tokens: usize, context: usize, reserved: usize },

    // === model files ===
    #[error("{file}: tensor `{tensor}`: {problem}")]
    Tensor { file: PathBuf, tensor: String, problem: String },
    #[error("{file}: missing tensor `{tensor}`")]
    MissingTensor { file: PathBuf, tensor: String },
    #[error(transparent)]
    Gguf(#[from] kvformats::gguf::GgufError),
    #[error("{file}: {problem}")]
    File { file: PathBuf, problem: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Chat(String),

    // === downloads ===
    #[error("download of {what} failed: {problem}")]
    Download { what: String, problem: String },
    #[error("{file}: sha256 is {actual}, expected {expected}; the file was not used")]
    HashMismatch { file: PathBuf, expected: String, actual: String },

    // === runtime ===
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Method(#[from] kvcache::MethodError),
    #[error(transparent)]
    Cache(#[from] kvcache::Error),
    #[error("not supported: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
