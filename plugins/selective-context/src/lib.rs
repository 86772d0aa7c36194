//! Selective-Context style prompt compression that runs offline: a small causal LM (SmolLM2 by
//! default) scores each word's self-information, and the least informative words are dropped.
