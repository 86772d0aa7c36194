//! Linear-time (state-space / recurrent) language models, whose per-sequence memory is a fixed-size
//! recurrent state instead of a KV cache that grows with the context: the baselines that KV-cache
//! compression is measured against (issue 9). First member: [`mamba`] (Mamba v1).

pub mod mamba;
