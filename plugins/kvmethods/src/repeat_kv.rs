//! Per-query-head caches for grouped-query models, as the paper's code builds them: each KV head
//! is repeated once per query head of its group before the cache sees it, so a method scores,
//! keeps and evicts tokens per query head (the paper's H2O on Llama-3 and Mistral) instead of
//! per KV head. The cache then really holds `query_heads / kv_heads` times the keys and values,
//! and reports those bytes: that is the memory the paper's implementation spends.

use kvcache::cache::{AttentionStep, CacheFactory, CacheSpec, LayerCache, PooledScores, ReconstructionOutput, ReconstructionPass};
use kvcache::Result;
use std::sync::Arc;
use tch::Tensor;

/// Builds `inner`'s caches over the repeated heads (`kv_heads = query_heads`).
pub struct RepeatKvFactory {
    pub inner: Arc<dyn CacheFactory>,
}

impl CacheFactory for RepeatKvFactory {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn layer_cache(&self, layer: usize, spec: &CacheSpec) -> Result<Box<dyn LayerCache>> {
        let group = spec.group();
        let repeated = CacheSpec { kv_heads: spec.query_heads.max(spec.kv_heads), ..*spec };
        Ok(Box::new(RepeatKvCache { inner: self.inner.layer_cache(layer, &repeated)?, group }))
    }
    fn shared_prefill(&self) -> bool {
        self.inner.shared_prefill()
    }
    fn reconstruction(&self) -> Option<kvcache::scorer::Reconstruction> {
        self.inner.reconstruction()
    }
}

/// One layer's cache over repeated KV heads. [`LayerCache::kept_positions`] has one list per
/// (batch, query head).
pub struct RepeatKvCache {
    inner: Box<dyn LayerCache>,
    /// Query heads per KV head.
    group: usize,
}

impl RepeatKvCache {
    /// `[B, Hkv, L, D]` → `[B, Hkv·group, L, D]`, each KV head repeated for its query heads
    /// (query head `h` reads KV head `h / group`, as grouped-query attention does).
    fn repeat(&self, t: &Tensor) -> Tensor {
        if self.group == 1 {
            t.shallow_clone()
        } else {
            t.repeat_interleave_self_int(self.group as i64, 1, None)
        }
    }
}

impl LayerCache for RepeatKvCache {
    fn attend(&mut self, step: &AttentionStep<'_>) -> Result<Tensor> {
        let (k, v) = (self.repeat(step.k), self.repeat(step.v));
        self.inner.attend(&AttentionStep { k: &k, v: &v, ..*step })
    }
    fn observe(&mut self, step: &AttentionStep<'_>) -> Result<()> {
        let (k, v) = (self.repeat(step.k), self.repeat(step.v));
        self.inner.observe(&AttentionStep { k: &k, v: &v, ..*step })
    }
    fn reconstruct(&mut self, pass: &ReconstructionPass<'_>) -> Result<ReconstructionOutput> {
        let (k, v) = (self.repeat(pass.step.k), self.repeat(pass.step.v));
        let step = AttentionStep { k: &k, v: &v, ..*pass.step };
        self.inner.reconstruct(&ReconstructionPass { step: &step, target: pass.target.clone(), want_output: pass.want_output, scores: pass.scores })
    }
    fn stored_tokens(&self) -> usize {
        self.inner.stored_tokens()
    }
    fn bytes_held(&self) -> u64 {
        self.inner.bytes_held()
    }
    fn bytes_attended(&self) -> u64 {
        self.inner.bytes_attended()
    }
    fn bytes_allocated(&self) -> u64 {
        self.inner.bytes_allocated()
    }
    fn reset(&mut self) {
        self.inner.reset()
    }
    fn end_prefill(&mut self) -> Result<()> {
        self.inner.end_prefill()
    }
    fn budget_tokens(&self) -> Option<usize> {
        self.inner.budget_tokens()
    }
    fn bytes_offloaded(&self) -> u64 {
        self.inner.bytes_offloaded()
    }
    fn kept_positions(&self) -> Vec<Vec<i64>> {
        self.inner.kept_positions()
    }
    fn held_tensors(&self) -> Vec<(&'static str, Tensor)> {
        self.inner.held_tensors()
    }
    fn fork(&self) -> Option<Box<dyn LayerCache>> {
        Some(Box::new(RepeatKvCache { inner: self.inner.fork()?, group: self.group }))
    }
    fn pooled_scores(&mut self) -> Result<Option<PooledScores>> {
        self.inner.pooled_scores()
    }
    fn keep_pooled(&mut self, per_head: &[usize]) -> Result<()> {
        self.inner.keep_pooled(per_head)
    }
}
