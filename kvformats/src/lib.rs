//! Readers for the files a model comes in (GGUF, safetensors headers), the tokenizer and the chat
//! template, kept free of libtorch so they build in seconds, are tested against the Python
//! reference packages, and can be fuzzed without linking a 1 GB native library.
//!
//! `kvcore` turns what these readers return into tensors; nothing here allocates model-sized
//! memory before checking sizes against the file.

pub mod chat;
pub mod gguf;
pub mod home;
pub mod plugin_header;
pub mod safetensors_header;
pub mod tokenizer;
pub mod torch_pickle;
pub mod world_tokenizer;
