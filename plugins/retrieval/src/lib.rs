//! Retrieval caches: InfLLM (block memory with representative keys, top-k block retrieval) and
//! Quest (query-aware page selection by per-page min/max keys). They hold every token but attend
//! to a budget of them, so they report held and attended bytes apart.

pub mod infllm;
pub mod quest;
mod store;
