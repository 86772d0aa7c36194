//! The facade of the in-tree method families: the runner and the test suites depend on this one
//! crate, and every family re-exported here is linked, so its registrations are seen (a crate
//! nothing references is not linked, and its registrations would vanish). Adding a family: its
//! crate under `plugins/`, one dependency line in this crate's `Cargo.toml`, one line below.

pub use kvplugin_baseline as baseline;
pub use kvplugin_chunkkv as chunkkv;
pub use kvplugin_expected_attention as expected_attention;
pub use kvplugin_h2o as h2o;
pub use kvplugin_keydiff as keydiff;
pub use kvplugin_knorm as knorm;
pub use kvplugin_kvzip as kvzip;
pub use kvplugin_llmlingua as llmlingua;
pub use kvplugin_quant as quant;
pub use kvplugin_retrieval as retrieval;
pub use kvplugin_selective_context as selective_context;
pub use kvplugin_snapkv as snapkv;
pub use kvplugin_streamingllm as streamingllm;
pub use kvplugin_think as think;
pub use kvplugin_tova as tova;

/// Does nothing; calling it makes sure a binary links this crate (and so every family) even
/// when it names nothing else of it.
pub fn link() {}
