//! Baselines every method is measured against: `full` (the uncompressed cache) and `random`
//! (evicts uniformly at random, a floor any scoring method must beat; kvpress `RandomPress`).
//!
//! `random` budget: `ratio = N` keeps `floor(S/N)` of the `S` context tokens per KV head, chosen by a
//! seeded hash of (seed, layer, head, position), so runs are deterministic and independent of chunking.

use kvcache::cache::FullCacheFactory;
use kvcache::scorer::hash_unit;
use kvmethods::prelude::*;

fn build_full(t: &toml::Table) -> std::result::Result<Arc<dyn CacheFactory>, MethodError> {
    Params::new("full", t).finish()?;
    Ok(Arc::new(FullCacheFactory))
}

/// Uniform random scores from a seeded hash of (seed, layer, head, position).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Random {
    pub seed: u64,
}

impl Scorer for Random {
    fn score(&self, input: &ScoreInput<'_>) -> Result<Tensor> {
        let (b, h, s) = input.positions.size3()?;
        let pos = Vec::<i64>::try_from(&input.positions.to_device(tch::Device::Cpu).contiguous().view([-1]))?;
        let mut out = Vec::with_capacity(pos.len());
        for (i, p) in pos.iter().enumerate() {
            let row = (i as i64 / s) as u64;
            out.push(hash_unit(self.seed, input.layer as u64, row, *p as u64) as f32);
        }
        Ok(Tensor::from_slice(&out).view([b, h, s]).to_device(input.positions.device()).to_kind(Kind::Float))
    }
}

kvcache::inventory::submit! {
    MethodRegistration {
        name: "full",
        family: "baseline",
        summary: "the uncompressed KV cache (the baseline every method is measured against)",
        detail: "Stores every token's keys and values; no parameters. Compression ratio 1 by definition.",
        params: &[],
        build: build_full,
        scorer: None,
    }
}

register_scorer!(
    Random,
    name = "random",
    summary = "evict uniformly at random after prefill (a floor for scoring methods)",
    detail = "Scores are a seeded hash of (seed, layer, head, position); keeps the top `floor(S/N)` per KV head \
              at the end of the context prefill (kvpress RandomPress). `ratio = N` keeps 1/N; `tokens = K` keeps K.",
    params = [("seed", "0", "hash seed")],
);
