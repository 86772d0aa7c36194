//! The tasks kvbench scores methods on and the metrics that score them: LongBench v1 with the
//! official prompts and metric semantics, needle-in-a-haystack (the paper's passkey and Kamradt's),
//! a RULER-style synthetic suite, and real-text tasks built offline from public-domain packages.
//! Nothing here touches libtorch: a task turns data into prompts, a metric turns text into a score.

pub mod data;
pub mod longbench;
pub mod needle;
pub mod pyrandom;
pub mod realtext;
pub mod ruler;
pub mod sample;
pub mod spec;
