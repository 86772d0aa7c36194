//! Token eviction, shared by every scoring method. A method is composed of orthogonal parts
//! ([`EvictionConfig`]): a [`Scorer`] (which tokens matter, and whether it needs attention
//! accumulated), a [`Budget`] split by an [`Allocation`] (uniform, per layer, head-adaptive), a
//! [`Schedule`] (after prefill, from the first decode step, streaming during prefill, block by
//! block during prefill with `block_size`, only while decoding with `target_size`; evicting every
//! N decode steps or not) and a [`Storage`] (dense or quantized). [`EvictionCache`] does the
//! rest: storage that really shrinks, attention over kept (non-contiguous) positions, GQA score
//! aggregation and per-head variable budgets, all with exact byte accounting.
//!
//! Budget semantics: `ratio = N` keeps `max(1, floor(S / N))` of the `S` context tokens per head
//! (the paper's N×; kvpress's `compression_ratio = 1 - 1/N`); `ratio = 1` never evicts, so the
//! cache computes exactly what the full cache computes. `tokens = K` keeps `min(K, S)`.

use crate::quantized::{QuantCache, QuantConfig};
use kvcache::buffer::KvBuffer;
use kvcache::cache::{
    attend_after_prefix, attend_at_positions, attend_contiguous, attend_sinks_local, attention_probs, tensor_bytes, AttentionStep, CacheFactory, CacheSpec,
    LayerCache, Visibility,
};
use kvcache::cache::{PooledScores, ReconstructionOutput, ReconstructionPass};
use kvcache::params::{Budget, GqaAgg};
use kvcache::rope::undo_rotary;
use kvcache::scorer::{QueryStats, Reconstruction, ScoreInput, Scorer};
use kvcache::{Error, Result};
use std::sync::Arc;
use tch::{Kind, Tensor};

pub use kvcache::scorer::Accumulate;

/// A StreamingLLM-style attention pattern during prefill: sinks plus a local window, sized from
/// the context length before the first chunk.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StreamingPrefill {
    /// Fraction of the budget given to sink tokens (the paper's `init_ratio = 0.021`).
    pub sink_ratio: f64,
    /// Absolute sink count (overrides `sink_ratio`).
    pub sinks: Option<usize>,
    /// Compress during prefill (sinks + local attention); false: full prefill, compress after.
    pub chunked: bool,
    /// InfLLM's re-indexed positions (the paper's StreamingLLM): a sink outside a query's local
    /// window is seen at distance `local + sinks - j` instead of its true distance
    /// ([`kvcache::cache::attend_sinks_local_reindexed`]). Needs `chunked` and the model's RoPE.
    pub reindex: bool,
}

/// Per-layer budget (PyramidKV): `(layer, num_layers, context_len, budget) -> tokens to keep`.
pub type LayerBudgetFn = Arc<dyn Fn(usize, usize, usize, &Budget) -> usize + Send + Sync>;

/// How the budget is split among layers and heads.
#[derive(Clone, Default)]
pub enum Allocation {
    /// Every layer and head keeps the same number of tokens.
    #[default]
    Uniform,
    /// A budget per layer, same total (PyramidKV).
    PerLayer(LayerBudgetFn),
    /// Per-head variable budgets (AdaKV): each head keeps at least `alpha · budget` of its best
    /// tokens, the rest of the layer's budget goes to the best tokens of any head; heads then
    /// store different numbers of tokens.
    HeadAdaptive { alpha: f64 },
    /// Whole chunks of `length` consecutive tokens (ChunkKV): the chunks with the best mean score
    /// summed over the layer's KV heads, the same chunks for every head. `ratio = N` keeps
    /// `max(1, floor(C/N))` of the `C` chunks (the last may be partial), `tokens = K` keeps
    /// `floor(K/length)`; a context shorter than one chunk, or a `tokens` budget under one chunk,
    /// is selected token by token.
    /// Decoding-time eviction re-selects whole chunks of consecutive stored tokens.
    Chunks { length: usize },
    /// One budget for all heads and layers of a sequence (KVzip; kvpress `layerwise = False`):
    /// the engine keeps the best scores of every layer together, as many as the layers would
    /// keep in all ([`LayerCache::pooled_scores`]), so layers and heads keep different numbers
    /// of tokens. With `layerwise` (or when the caller does not pool), each layer pools its own
    /// heads: the best `H·keep` of the layer. Every head keeps at least its best token.
    Pooled { layerwise: bool },
}

/// When the budget is first applied.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Start {
    /// At `end_prefill`, once the whole context is in.
    #[default]
    AfterPrefill,
    /// At the first decode step, from the length so far (the paper's H2O: full prefill).
    FirstDecode,
    /// During prefill (StreamingLLM): sinks + a local window, the budget sized from the context.
    Streaming(StreamingPrefill),
}

/// When a cache compresses.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    pub start: Start,
    /// Keep the cache at its budget while decoding.
    pub decode_evict: bool,
    /// With `decode_evict`: evict every N decode steps (the cache may exceed the budget by N-1).
    pub decode_interval: usize,
    /// Newest tokens always kept, as a fraction of the budget (H2O's recent window).
    pub recent_fraction: f64,
    /// Compress during prefill (`block_size`): with the budget sized from the context up front,
    /// the cache is cut back to it after every block of this many tokens (the first block ends
    /// at the budget), so it never holds more than budget + block. Attention of each block runs
    /// over what is kept: a true block-wise prefill, whatever the engine's chunk size.
    pub prefill_block: Option<usize>,
    /// Compress only while decoding (`target_size`, kvpress DecodingPress): no compression at
    /// `end_prefill`; the budget is the absolute `Budget::Tokens` target, applied every
    /// `decode_interval` decode steps.
    pub decode_only: bool,
}

impl Default for Schedule {
    /// Compress once after prefill; no eviction while decoding.
    fn default() -> Self {
        Schedule { start: Start::AfterPrefill, decode_evict: false, decode_interval: 1, recent_fraction: 0.0, prefill_block: None, decode_only: false }
    }
}

/// Where the surviving tokens live.
#[derive(Clone, Debug, Default)]
pub enum Storage {
    /// Dense K/V in the cache dtype.
    #[default]
    Dense,
    /// Quantized (`storage = {method = "kivi", ...}`): at `end_prefill`, after eviction, the kept
    /// tokens move into a [`QuantCache`] that also stores every later token.
    Quantized(QuantConfig),
}

/// Key-channel pruning after prefill (ThinK, arXiv 2407.21018): per KV head, channel `c` scores
/// `mean_window(q_c²) · mean_tokens(k_c²)` (the window's queries after RoPE, averaged over the
/// head's query heads; the kept keys), and the `floor(D · ratio)` lowest-scoring channels are
/// dropped from the stored keys (and from every later key and query), so the cache really holds
/// fewer key bytes. Values keep every channel; the softmax scale stays `1/√D`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KeyChannels {
    /// Fraction of key channels pruned (kvpress `key_channel_compression_ratio`).
    pub ratio: f64,
    /// Last prefill queries that score the channels (kvpress `window_size`).
    pub window: usize,
}

/// One eviction method: a scorer (which tokens matter; it also says whether it needs attention
/// accumulated) × a budget and its [`Allocation`] × a [`Schedule`] × a [`Storage`], optionally
/// with [`KeyChannels`] pruning.
#[derive(Clone)]
pub struct EvictionConfig {
    pub name: String,
    pub budget: Budget,
    pub scorer: Arc<dyn Scorer>,
    pub allocation: Allocation,
    pub schedule: Schedule,
    pub storage: Storage,
    /// How the scores of the query heads sharing a KV head are combined.
    pub gqa: GqaAgg,
    /// Prune key channels after prefill (`key_channel_ratio`).
    pub key_channels: Option<KeyChannels>,
}

impl EvictionConfig {
    /// A config with defaults: uniform budgets, compress after prefill, no decode eviction,
    /// dense storage.
    pub fn new(name: &str, budget: Budget, scorer: Arc<dyn Scorer>) -> Self {
        EvictionConfig {
            name: name.to_string(),
            budget,
            scorer,
            allocation: Allocation::Uniform,
            schedule: Schedule::default(),
            storage: Storage::Dense,
            gqa: GqaAgg::Mean,
            key_channels: None,
        }
    }
}

/// The factory of [`EvictionCache`]s for one config.
#[derive(Clone)]
pub struct EvictionFactory(pub Arc<EvictionConfig>);

impl CacheFactory for EvictionFactory {
    fn name(&self) -> &str {
        &self.0.name
    }
    fn layer_cache(&self, layer: usize, spec: &CacheSpec) -> Result<Box<dyn LayerCache>> {
        let cfg = &self.0;
        if let Storage::Quantized(st) = &cfg.storage {
            let bad = |why: &str| Error::InvalidArgument { what: "storage", value: format!("{} with {}", cfg.name, st.name), expected: why.into() };
            if cfg.schedule.decode_evict {
                return Err(bad("decode_evict = false: quantized storage keeps every token after prefill (it does not evict while decoding)"));
            }
            if matches!(cfg.allocation, Allocation::HeadAdaptive { .. }) {
                return Err(bad("a method with one budget for all heads (per-head budgets are not stored quantized)"));
            }
            QuantCache::new(st, *spec)?;
        }
        let sched = &cfg.schedule;
        if cfg.key_channels.is_some() {
            let why = if sched.decode_evict {
                Some("decode_evict = false (scorers read whole keys; channels are pruned once, after prefill)")
            } else if matches!(cfg.allocation, Allocation::HeadAdaptive { .. }) {
                Some("one budget for all heads (per-head budgets keep whole keys)")
            } else if matches!(cfg.storage, Storage::Quantized(_)) {
                Some("dense storage (quantized keys keep every channel)")
            } else if sched.start != Start::AfterPrefill {
                Some("a method that compresses after prefill")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(Error::InvalidArgument { what: "key_channel_ratio", value: cfg.name.clone(), expected: why.into() });
            }
        }
        let needs_whole_prompt = if matches!(cfg.allocation, Allocation::Pooled { .. }) {
            Some("a budget pooled over heads and layers")
        } else if cfg.scorer.reconstruction().is_some() {
            Some("context reconstruction (it repeats the whole prompt over an uncompressed cache)")
        } else {
            None
        };
        if let Some(what) = needs_whole_prompt {
            let clash = if sched.start != Start::AfterPrefill {
                Some("its own schedule")
            } else if sched.prefill_block.is_some() {
                Some("block_size")
            } else if sched.decode_only {
                Some("target_size")
            } else if sched.decode_evict && matches!(cfg.allocation, Allocation::Pooled { .. }) {
                Some("decode_evict")
            } else {
                None
            };
            if let Some(clash) = clash {
                return Err(Error::InvalidArgument {
                    what: "schedule",
                    value: format!("{} with {clash}", cfg.name),
                    expected: format!("{what} compresses once, after the whole prompt is prefilled: leave out {clash}"),
                });
            }
        }
        if sched.start != Start::AfterPrefill && (sched.prefill_block.is_some() || sched.decode_only) {
            let key = if sched.decode_only { "target_size" } else { "block_size" };
            return Err(Error::InvalidArgument {
                what: "schedule",
                value: format!("{} with {key}", cfg.name),
                expected: format!(
                    "a method that compresses after prefill (`{key}` replaces when it compresses; {} has its own schedule: {:?})",
                    cfg.name, sched.start
                ),
            });
        }
        Ok(Box::new(EvictionCache::new(self.0.clone(), layer, *spec)))
    }
    /// Every schedule but StreamingLLM's chunked prefill (which attends through sinks and a local
    /// window while prefilling) prefills with full attention and compresses afterwards.
    /// Compressing during prefill (`block_size`) changes prefill too.
    fn shared_prefill(&self) -> bool {
        !matches!(self.0.schedule.start, Start::Streaming(StreamingPrefill { chunked: true, .. })) && self.0.schedule.prefill_block.is_none()
    }
    fn reconstruction(&self) -> Option<Reconstruction> {
        self.0.scorer.reconstruction()
    }
}

/// The storage of an eviction cache: one dense block, or one block per (batch, KV head) once
/// per-head budgets differ (AdaKV), so that each head holds only its own kept tokens.
enum Store {
    Dense(KvBuffer),
    Ragged(Vec<KvBuffer>),
}

// ---------------------------------------------------------------------------------------------
// Selection

/// Slot indices to keep: per row of `scores` (`[R, S]`), the newest `recent` slots plus the best
/// `keep - recent` others, ascending. Rows are (batch, head) pairs.
pub fn select_uniform(scores: &Tensor, keep: usize, recent: usize) -> Tensor {
    let s = scores.size()[scores.dim() - 1] as usize;
    let keep = keep.min(s);
    let recent = recent.min(keep);
    let scores = scores.to_kind(Kind::Float).copy();
    if recent > 0 {
        let _ = scores.narrow(-1, (s - recent) as i64, recent as i64).fill_(f64::INFINITY);
    }
    let (_, idx) = scores.topk(keep as i64, -1, true, true);
    idx.sort(-1, false).0
}

/// Chunks ChunkKV keeps out of a `len`-token context cut into chunks of `length` (the last may
/// be partial): `max(1, floor(C/N))` at `ratio = N` (kvpress: `int(C · (1 - compression_ratio))`),
/// `floor(K/length)` at `tokens = K` (0 when K is under one chunk: the budget is then kept token
/// by token); never more than `C`.
pub fn chunks_kept(len: usize, length: usize, budget: &Budget) -> usize {
    let chunks = len.div_ceil(length.max(1));
    match *budget {
        Budget::Ratio(r) if r <= 1.0 => chunks,
        Budget::Ratio(r) => ((chunks as f64 / r).floor() as usize).clamp(1, chunks.max(1)),
        Budget::Tokens(k) => (k / length.max(1)).min(chunks),
        Budget::Fraction(f) if f >= 1.0 => chunks,
        Budget::Fraction(f) => ((chunks as f64 * f).floor() as usize).clamp(1, chunks.max(1)),
    }
}

/// ChunkKV selection over `scores` `[B, H, S]`: each chunk of `length` consecutive slots (the last
/// one may be shorter) is scored by the mean over its slots of the scores summed over heads, and
/// the best `n_chunks` are kept whole, the same slots for every head. Returns `[B, H, K]`
/// ascending slot indices. With B > 1 the partial last chunk is not a candidate, so that every
/// row keeps the same number of slots (kvpress applies the first row's chunks to every row).
pub fn select_chunks(scores: &Tensor, n_chunks: usize, length: usize) -> Tensor {
    let (b, h, s) = scores.size3().expect("scores are [B, H, S]");
    let (len, su) = (length as i64, s as usize);
    let full = s / len;
    let rem = s % len;
    let summed = scores.to_kind(Kind::Float).sum_dim_intlist(1, false, Kind::Float);
    let mut chunk_scores = summed.narrow(-1, 0, full * len).view([b, full, len]).mean_dim(-1, false, Kind::Float);
    if rem > 0 {
        let tail = if b > 1 {
            Tensor::full([b, 1], f64::NEG_INFINITY, (Kind::Float, scores.device()))
        } else {
            summed.narrow(-1, full * len, rem).mean_dim(-1, true, Kind::Float)
        };
        chunk_scores = Tensor::cat(&[chunk_scores, tail], -1);
    }
    let candidates = if b > 1 { full as usize } else { su.div_ceil(length) };
    let n = n_chunks.clamp(1, candidates.max(1)) as i64;
    let (_, top) = chunk_scores.topk(n, -1, true, true);
    let top = top.sort(-1, false).0;
    let mut rows = Vec::with_capacity(b as usize);
    for bi in 0..b {
        let chosen: Vec<i64> = Vec::<i64>::try_from(top.get(bi)).expect("chunk indices are i64");
        let slots: Vec<i64> = chosen.iter().flat_map(|&c| (c * len)..((c + 1) * len).min(s)).collect();
        rows.push(Tensor::from_slice(&slots));
    }
    let idx = Tensor::stack(&rows, 0).to_device(scores.device());
    let k = idx.size()[1];
    idx.unsqueeze(1).expand([b, h, k], true).contiguous()
}

/// AdaKV selection over `scores` `[B, H, S]`: each head keeps its best `floor(alpha·keep)` (at
/// least 1), then the best `H·keep` tokens of the layer overall. Returns per-(b, h) ascending
/// slot indices (lengths differ).
pub fn select_adaptive(scores: &Tensor, keep: usize, recent: usize, alpha: f64) -> Vec<Tensor> {
    let (b, h, s) = scores.size3().expect("scores are [B, H, S]");
    let keep = keep.min(s as usize);
    let mut scores = scores.to_kind(Kind::Float).copy();
    if recent > 0 {
        let r = recent.min(keep) as i64;
        let _ = scores.narrow(-1, s - r, r).fill_(f64::INFINITY);
    }
    let mut n_safe = (keep as f64 * alpha).floor() as usize;
    if alpha > 0.0 && keep > 0 {
        n_safe = n_safe.max(1);
    }
    if n_safe > 0 {
        let (_, top) = scores.topk(n_safe as i64, -1, true, true);
        let _ = scores.scatter_value_(-1, &top, f32::MAX as f64);
    }
    let flat = scores.view([b, h * s]);
    let (_, top) = flat.topk(h * keep as i64, -1, true, true);
    let mut out = Vec::new();
    for bi in 0..b {
        let t = top.get(bi);
        for hi in 0..h {
            let sel = t.masked_select(&t.ge(hi * s).logical_and(&t.lt((hi + 1) * s))) - hi * s;
            out.push(sel.sort(-1, false).0);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The cache

/// One layer's cache of an eviction method.
pub struct EvictionCache {
    cfg: Arc<EvictionConfig>,
    layer: usize,
    spec: CacheSpec,
    store: Store,
    /// The last queries `[B, Hq, ≤W, D]` and the position of the first.
    queries: Option<Tensor>,
    query_start: usize,
    prefilling: bool,
    /// Per-head budget once fixed.
    budget: Option<usize>,
    /// Protected newest tokens (H2O's recent budget).
    recent: usize,
    /// StreamingLLM sinks and local window, once sized.
    sinks_local: Option<(usize, usize)>,
    steps_since_evict: usize,
    /// Tokens appended since the last eviction (the cache may exceed its budget by this much).
    since_evict: usize,
    seen: usize,
    /// The survivors once moved into quantized storage (`storage`).
    quantized: Option<QuantCache>,
    /// Statistics of the queries before RoPE, for scorers that ask (`Scorer::query_stats_from`).
    query_stats: Option<QueryStats>,
    /// Key channels kept per (batch, KV head) `[B, Hkv, D']` once pruned (`key_channels`).
    channels: Option<Tensor>,
    /// `[B, Hkv, S]`: the most attention each token received from context reconstruction passes
    /// (`Scorer::reconstruction`), until the compression they serve.
    recon: Option<Tensor>,
    /// The engine applied a budget pooled over layers (`keep_pooled`): `end_prefill` keeps it.
    pooled_kept: bool,
}

impl EvictionCache {
    pub fn new(cfg: Arc<EvictionConfig>, layer: usize, spec: CacheSpec) -> Self {
        let mut store = KvBuffer::new(spec);
        if cfg.scorer.accumulate() != Accumulate::Never {
            store.enable_aux();
        }
        let mut c = EvictionCache {
            cfg,
            layer,
            spec,
            store: Store::Dense(store),
            queries: None,
            query_start: 0,
            prefilling: true,
            budget: None,
            recent: 0,
            sinks_local: None,
            steps_since_evict: 0,
            since_evict: 0,
            seen: 0,
            quantized: None,
            query_stats: None,
            channels: None,
            recon: None,
            pooled_kept: false,
        };
        c.size_streaming();
        c.size_blocks();
        c
    }

    /// Block-wise prefill: fixes the budget from the context length before the first block.
    fn size_blocks(&mut self) {
        let (Some(_), Some(ctx)) = (self.cfg.schedule.prefill_block, self.spec.context_tokens) else { return };
        if self.cfg.budget.is_unbounded() || self.cfg.schedule.decode_only {
            return;
        }
        self.fix_budget(self.layer_keep(ctx));
    }

    /// Fixes the per-head budget, with its protected recent share.
    fn fix_budget(&mut self, keep: usize) {
        self.recent = (keep as f64 * self.cfg.schedule.recent_fraction).floor() as usize;
        self.budget = Some(keep);
    }

    /// The block size and budget while a block-wise prefill is under way.
    fn block_schedule(&self) -> Option<(usize, usize)> {
        match (self.prefilling, self.cfg.schedule.prefill_block, self.budget) {
            (true, Some(bs), Some(b)) => Some((bs.max(1), b)),
            _ => None,
        }
    }

    /// Tokens to keep out of `len` for this layer.
    fn layer_keep(&self, len: usize) -> usize {
        match &self.cfg.allocation {
            Allocation::PerLayer(f) if !self.cfg.budget.is_unbounded() => f(self.layer, self.spec.num_layers, len, &self.cfg.budget).min(len),
            Allocation::Chunks { length } if len >= *length => match chunks_kept(len, *length, &self.cfg.budget) {
                0 => self.cfg.budget.keep(len),
                n => (n * length).min(len),
            },
            _ => self.cfg.budget.keep(len),
        }
    }

    fn size_streaming(&mut self) {
        let (Start::Streaming(st), Some(ctx)) = (self.cfg.schedule.start, self.spec.context_tokens) else { return };
        if self.cfg.budget.is_unbounded() || !st.chunked {
            return;
        }
        let budget = self.cfg.budget.keep(ctx).max(1);
        let sinks = st.sinks.unwrap_or((budget as f64 * st.sink_ratio) as usize).min(budget.saturating_sub(1));
        self.sinks_local = Some((sinks, budget - sinks));
        self.budget = Some(budget);
    }

    fn needs_queries(&self) -> usize {
        let w = self.cfg.scorer.query_window();
        if self.prefilling {
            w.max(self.cfg.key_channels.map_or(0, |kc| kc.window))
        } else if self.cfg.schedule.decode_evict {
            w
        } else {
            0
        }
    }

    /// ThinK: chooses the key channels to keep from the window queries and the stored keys, and
    /// drops the others from storage.
    fn prune_channels(&mut self, kc: KeyChannels) -> Result<()> {
        let d = self.spec.head_dim as i64;
        let n_pruned = (self.spec.head_dim as f64 * kc.ratio).floor() as i64;
        let Store::Dense(store) = &mut self.store else { return Err(Error::Other("key_channel_ratio: per-head stores are not pruned".into())) };
        let (Some((k, _)), Some(q)) = (store.views(), &self.queries) else { return Ok(()) };
        if n_pruned == 0 || n_pruned >= d {
            return Ok(());
        }
        let (b, hq, wq, _) = q.size4()?;
        let hkv = self.spec.kv_heads as i64;
        let w = (kc.window as i64).min(wq);
        let qw = q.narrow(2, wq - w, w).to_kind(Kind::Float);
        let q_norm =
            qw.pow_tensor_scalar(2).mean_dim([2i64].as_slice(), false, Kind::Float).view([b, hkv, hq / hkv, d]).mean_dim([2i64].as_slice(), false, Kind::Float);
        let k_norm = k.to_kind(Kind::Float).pow_tensor_scalar(2).mean_dim([2i64].as_slice(), false, Kind::Float);
        let (_, keep) = (q_norm * k_norm).topk(d - n_pruned, -1, true, true);
        let keep = keep.sort(-1, false).0;
        store.prune_key_channels(&keep);
        self.channels = Some(keep);
        Ok(())
    }

    /// The step's queries and keys cut to the kept channels (ThinK), once channels are pruned.
    fn cut_channels(&self, step: &AttentionStep<'_>) -> Option<(Tensor, Tensor)> {
        let ch = self.channels.as_ref()?;
        let (l, kd) = (step.k.size()[2], ch.size()[2]);
        let group = self.spec.group() as i64;
        let ck = ch.unsqueeze(2).expand([-1, -1, l, kd], false);
        let cq = ch.repeat_interleave_self_int(group, Some(1), None::<i64>).unsqueeze(2).expand([-1, -1, l, kd], false);
        Some((step.q.gather(3, &cq, false), step.k.gather(3, &ck, false)))
    }

    fn remember_queries(&mut self, q: &Tensor, start: usize) {
        let w = self.needs_queries();
        if w == 0 {
            self.queries = None;
            return;
        }
        let l = q.size()[2] as usize;
        let take = l.min(w);
        let (q, start) = (q.narrow(2, (l - take) as i64, take as i64), start + l - take);
        let (all, first) = match &self.queries {
            Some(old) if self.query_start + old.size()[2] as usize == start => (Tensor::cat(&[old, &q.to_kind(old.kind())], 2), self.query_start),
            _ => (q.shallow_clone(), start),
        };
        let n = all.size()[2] as usize;
        let drop = n.saturating_sub(w);
        self.queries = Some(all.narrow(2, drop as i64, (n - drop) as i64).copy());
        self.query_start = first + drop;
    }

    /// Adds the step's queries (from the scorer's first position on, RoPE undone) to the query
    /// statistics, while a later eviction can still read them.
    fn observe_queries(&mut self, step: &AttentionStep<'_>) -> Result<()> {
        let Some(from) = self.cfg.scorer.query_stats_from() else { return Ok(()) };
        if !(self.prefilling || self.cfg.schedule.decode_evict) {
            self.query_stats = None;
            return Ok(());
        }
        let l = step.q.size()[2] as usize;
        let (first, end) = (step.start_pos.max(from), step.start_pos + l);
        if first >= end {
            return Ok(());
        }
        let rope = self.spec.full_rope(&format!("`{}` (its query statistics undo the queries' rotation)", self.cfg.name))?;
        let q = step.q.narrow(2, (first - step.start_pos) as i64, (end - first) as i64).to_kind(Kind::Float);
        let (cos, sin) = rope.cos_sin_range(first, end - first, q.device());
        let chunk = QueryStats::of(&undo_rotary(&q, &cos, &sin), first);
        match &mut self.query_stats {
            Some(st) => st.merge(chunk),
            None => self.query_stats = Some(chunk),
        }
        Ok(())
    }

    /// The model's RoPE when StreamingLLM re-indexes its sink positions (`positions =
    /// "reindexed"`), checked against the heads; None otherwise.
    fn reindex_rope(&self) -> Result<Option<kvcache::rope::Rope>> {
        let Start::Streaming(StreamingPrefill { reindex: true, .. }) = self.cfg.schedule.start else { return Ok(None) };
        self.spec.full_rope(&format!("`{}` with positions = \"reindexed\" (it turns the queries' rotation)", self.cfg.name)).map(Some)
    }

    /// Attention of one dense block, over contiguous or kept positions.
    fn attend_dense(store: &KvBuffer, step: &AttentionStep<'_>, sinks_local: Option<(usize, usize)>, reindex: Option<kvcache::rope::Rope>) -> Result<Tensor> {
        let (k, v) = store.views().ok_or_else(|| Error::Other("eviction cache: attention over an empty store".into()))?;
        if let (Some((sinks, local)), Some(rope)) = (sinks_local, reindex) {
            // The paper's StreamingLLM: sinks outside the window at InfLLM's re-indexed distance.
            return kvcache::cache::attend_sinks_local_reindexed(step, &k, &v, &store.positions(), sinks, local, rope);
        }
        if store.is_contiguous() && sinks_local.is_none() {
            return Ok(attend_contiguous(step, &k, &v, store.first_pos()));
        }
        let vis = Visibility { window: None, sinks_local };
        if sinks_local.is_some() {
            // StreamingLLM's prefill: block by block, each block over the keys its window reaches.
            return Ok(attend_sinks_local(step, &k, &v, &store.positions(), vis));
        }
        Ok(attend_at_positions(step, &k, &v, &store.positions(), vis))
    }

    /// Accumulates the step's attention probabilities (summed over its queries) per token.
    fn accumulate(&mut self, step: &AttentionStep<'_>) {
        let active = match self.cfg.scorer.accumulate() {
            Accumulate::Never => false,
            Accumulate::Decode => !self.prefilling,
            Accumulate::Always => true,
        };
        let Store::Dense(store) = &mut self.store else { return };
        if !active {
            return;
        }
        let Some((k, _)) = store.views() else { return };
        let kpos = store.positions();
        let l = step.q.size()[2];
        // Query blocks bound the size of the explicit weights during a long prefill.
        let block = 256i64;
        let mut total: Option<Tensor> = None;
        let mut i = 0;
        while i < l {
            let n = block.min(l - i);
            let p = attention_probs(&step.q.narrow(2, i, n), step.start_pos + i as usize, &k, &kpos, step.scale, step.sliding_window);
            let s = p.sum_dim_intlist(2, false, Kind::Float);
            total = Some(match total {
                Some(t) => t + s,
                None => s,
            });
            i += n;
        }
        if let Some(t) = total {
            store.aux_add(&self.cfg.gqa.reduce(&t, self.spec.kv_heads as i64));
        }
    }

    fn score(&self, store: &KvBuffer, queries: Option<&Tensor>, qstart: usize, query_stats: Option<&QueryStats>) -> Result<Tensor> {
        let (k, v) = store.views().ok_or_else(|| Error::Other("eviction cache: scoring an empty store".into()))?;
        let pos = store.positions();
        let acc = store.aux();
        let input = ScoreInput {
            layer: self.layer,
            spec: store.spec(),
            keys: &k,
            values: &v,
            positions: &pos,
            queries,
            query_start: qstart,
            scale: 1.0 / (self.spec.head_dim as f64).sqrt(),
            sliding_window: None,
            accumulated: acc.as_ref(),
            query_stats,
            reconstruction: self.recon.as_ref(),
            gqa: self.cfg.gqa,
        };
        let s = self.cfg.scorer.score(&input)?;
        if s.size() != pos.size() {
            return Err(Error::Other(format!("method `{}`: scorer returned shape {:?}, expected {:?}", self.cfg.name, s.size(), pos.size())));
        }
        Ok(s)
    }

    /// The share of a head's budget reserved for its own best tokens when heads compete: AdaKV's
    /// `alpha`; a pooled budget reserves only each head's best token (the smallest positive share
    /// floors to 0 and is raised to 1); 0 otherwise.
    fn head_floor(&self) -> f64 {
        match self.cfg.allocation {
            Allocation::HeadAdaptive { alpha } => alpha,
            Allocation::Pooled { .. } => f64::MIN_POSITIVE,
            _ => 0.0,
        }
    }

    /// Whether this layer's budget is pooled with the other layers' at `end_prefill`.
    fn pools_across_layers(&self) -> bool {
        matches!(self.cfg.allocation, Allocation::Pooled { layerwise: false })
            && self.prefilling
            && !self.pooled_kept
            && !self.cfg.budget.is_unbounded()
            && self.cfg.schedule.start == Start::AfterPrefill
    }

    /// Evicts down to `keep` tokens per head (on average, for per-head budgets).
    fn evict_to(&mut self, keep: usize, headroom: usize) -> Result<()> {
        self.since_evict = 0;
        let recent = self.recent;
        match &self.store {
            Store::Dense(store) => {
                if store.len() <= keep {
                    return Ok(());
                }
                let scores = match self.sinks_local {
                    // StreamingLLM: keep the sinks and the newest tokens, by position.
                    Some((sinks, _)) => {
                        let pos = store.positions().to_kind(Kind::Float);
                        let newest = pos.amax(-1, true);
                        pos.lt(sinks as f64).to_kind(Kind::Float) * 1e12 + (pos - newest)
                    }
                    None => self.score(store, self.queries.as_ref(), self.query_start, self.query_stats.as_ref())?,
                };
                match self.cfg.allocation {
                    // `keep` is a whole number of chunks (`layer_keep`); a budget under one chunk
                    // is kept token by token.
                    Allocation::Chunks { length } if keep >= length => {
                        let idx = select_chunks(&scores, keep / length, length);
                        if let Store::Dense(store) = &mut self.store {
                            store.keep(&idx, headroom);
                        }
                    }
                    Allocation::Uniform | Allocation::PerLayer(_) | Allocation::Chunks { .. } => {
                        let idx = select_uniform(&scores, keep, recent);
                        if let Store::Dense(store) = &mut self.store {
                            store.keep(&idx, headroom);
                        }
                    }
                    Allocation::HeadAdaptive { .. } | Allocation::Pooled { .. } => {
                        let idx = select_adaptive(&scores, keep, recent, self.head_floor());
                        let heads = split_heads(store, &idx, self.spec.group(), headroom);
                        self.store = Store::Ragged(heads);
                    }
                }
            }
            Store::Ragged(heads) => {
                let total: usize = heads.iter().map(|h| h.len()).sum();
                if total <= keep * heads.len() {
                    return Ok(());
                }
                // Score each head alone (with its own query heads), then choose across heads.
                let alpha = self.head_floor();
                let hkv = self.spec.kv_heads;
                let group = self.spec.group() as i64;
                let mut scores = Vec::new();
                for (i, hs) in heads.iter().enumerate() {
                    let (bi, hi) = ((i / hkv) as i64, (i % hkv) as i64);
                    let q = self.queries.as_ref().map(|q| q.narrow(0, bi, 1).narrow(1, hi * group, group));
                    let st = self.query_stats.as_ref().map(|st| st.narrow(bi, hi * group, group));
                    scores.push(self.score(hs, q.as_ref(), self.query_start, st.as_ref())?.view([-1]));
                }
                let lens: Vec<usize> = heads.iter().map(|h| h.len()).collect();
                let idx = select_ragged(&scores, &lens, keep, recent, alpha);
                if let Store::Ragged(heads) = &mut self.store {
                    for (hs, sel) in heads.iter_mut().zip(idx) {
                        hs.keep(&sel.view([1, 1, -1]), headroom);
                    }
                }
            }
        }
        Ok(())
    }
}

/// KVzip's scores of one reconstruction pass: per (batch, KV head), the most attention any of
/// the pass's queries (any query head of the group) pays each stored token of `target`, the
/// softmax taken over the first `sinks` stored tokens (fewer when `target` starts earlier), the
/// target and the pass's own tokens (causal among them), as kvpress `KVzipPress`.
/// `[B, Hkv, target.len()]`, f32.
///
/// Since `max_q exp(x_qj - lse_q) = exp(max_q (x_qj - lse_q))`, only the normaliser `lse_q` of
/// each query and the maximum of `x_qj - lse_q` over queries are needed: on CPU the normaliser
/// comes from two flash-attention calls (over sinks and target; over the pass, causal), and the
/// differences from one matmul with `-lse` folded in as an extra channel, 512 query rows at a
/// time, so no softmax is materialised. Elsewhere, an explicit softmax per block of 512 rows.
pub fn reconstruction_scores(step: &AttentionStep<'_>, stored_k: &Tensor, stored_v: &Tensor, target: std::ops::Range<usize>, sinks: usize) -> Tensor {
    let p = PassParts::of(step, stored_k, &target, sinks);
    if p.q.device() != tch::Device::Cpu || stored_v.size()[3] != p.d {
        return reconstruction_scores_softmax(step, stored_k, target, sinks);
    }
    let (b, hq, hkv, g, l, d) = (p.b, p.hq, p.hkv, p.g, p.l, p.d);
    let f = |t: &Tensor| t.to_kind(Kind::Float);
    let v_st = f(&Tensor::cat(&[stored_v.narrow(2, 0, p.sink), stored_v.narrow(2, target.start as i64, p.n_t)], 2));
    let flash = |q: &Tensor, k: &Tensor, v: &Tensor, causal: bool| {
        Tensor::internal_scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, None::<&Tensor>, step.scale).1
    };
    let lse_st = flash(&p.q.reshape([b, hkv, g * l, d]), &p.k_st, &v_st, false).reshape([b, hq, l]);
    let rep = |t: &Tensor| t.unsqueeze(2).expand([b, hkv, g, l, d], false).reshape([b, hq, l, d]);
    let lse_pass = flash(&p.q, &rep(&f(step.k)), &rep(&f(step.v)), true);
    let lse = lse_st.logaddexp(&lse_pass); // [B, Hq, L]
                                           // scale·q·k - lse as one product: q' = [scale·q, -lse], k' = [k, 1].
    let q_aug = Tensor::cat(&[&p.q * step.scale, -lse.unsqueeze(-1)], -1).view([b, hkv, g, l, d + 1]);
    let k_t = p.k_st.narrow(2, p.sink, p.n_t);
    let ones = Tensor::ones([b, hkv, p.n_t, 1], (Kind::Float, p.q.device()));
    let k_aug = Tensor::cat(&[k_t, ones], -1).unsqueeze(2).transpose(-1, -2);
    let mut best: Option<Tensor> = None;
    let mut a = 0i64;
    while a < l {
        let m = PASS_ROWS.min(l - a);
        let top = q_aug.narrow(3, a, m).matmul(&k_aug).amax([2i64, 3].as_slice(), false);
        best = Some(match best {
            Some(x) => x.maximum(&top),
            None => top,
        });
        a += m;
    }
    best.expect("a pass has at least one token").exp()
}

/// Query rows scored at a time in a reconstruction pass.
const PASS_ROWS: i64 = 512;

/// What both ways of scoring a reconstruction pass start from: the shapes, the sinks and target
/// keys (`[B, Hkv, sink + n_t, D]`, f32) and the pass's queries (f32).
struct PassParts {
    b: i64,
    hq: i64,
    hkv: i64,
    g: i64,
    l: i64,
    d: i64,
    sink: i64,
    n_t: i64,
    q: Tensor,
    k_st: Tensor,
}

impl PassParts {
    fn of(step: &AttentionStep<'_>, stored_k: &Tensor, target: &std::ops::Range<usize>, sinks: usize) -> PassParts {
        let (b, hq, l, d) = step.q.size4().expect("queries are [B, H, L, D]");
        let hkv = stored_k.size()[1];
        let sink = sinks.min(target.start) as i64;
        let n_t = target.len() as i64;
        let k_st = Tensor::cat(&[stored_k.narrow(2, 0, sink), stored_k.narrow(2, target.start as i64, n_t)], 2).to_kind(Kind::Float);
        PassParts { b, hq, hkv, g: hq / hkv, l, d, sink, n_t, q: step.q.to_kind(Kind::Float), k_st }
    }
}

/// [`reconstruction_scores`] by an explicit softmax per block of 512 query rows (any device).
pub fn reconstruction_scores_softmax(step: &AttentionStep<'_>, stored_k: &Tensor, target: std::ops::Range<usize>, sinks: usize) -> Tensor {
    let p = PassParts::of(step, stored_k, &target, sinks);
    let (b, hkv, g, l, d, sink, n_t) = (p.b, p.hkv, p.g, p.l, p.d, p.sink, p.n_t);
    let (q, k_st) = (p.q, p.k_st);
    let device = q.device();
    let rows = PASS_ROWS;
    let keys = Tensor::cat(&[k_st, step.k.to_kind(Kind::Float)], 2).unsqueeze(2); // [B, Hkv, 1, n, D]
    let n = keys.size()[3];
    let qg = q.view([b, hkv, g, l, d]);
    let mut best: Option<Tensor> = None;
    let mut a = 0i64;
    while a < l {
        let m = rows.min(l - a);
        // [B, Hkv, G, m, n]; query a+i sees the pass's own tokens up to itself.
        let logits = qg.narrow(3, a, m).matmul(&keys.transpose(-1, -2)) * step.scale;
        let qi = Tensor::arange_start(a, a + m, (Kind::Int64, device)).unsqueeze(1);
        let kj = Tensor::arange(l, (Kind::Int64, device)).unsqueeze(0);
        let future = Tensor::cat(&[Tensor::zeros([m, n - l], (Kind::Bool, device)), kj.gt_tensor(&qi)], 1);
        let probs = logits.masked_fill(&future, f64::NEG_INFINITY).softmax(-1, Kind::Float);
        let top = probs.narrow(-1, sink, n_t).amax([2i64, 3].as_slice(), false); // [B, Hkv, n_t]
        best = Some(match best {
            Some(x) => x.maximum(&top),
            None => top,
        });
        a += m;
    }
    best.expect("a pass has at least one token")
}

/// Splits a dense block into one block per (batch, KV head) holding that head's selected slots.
fn split_heads(store: &KvBuffer, idx: &[Tensor], group: usize, headroom: usize) -> Vec<KvBuffer> {
    let (b, h) = (store.spec().batch as i64, store.spec().kv_heads as i64);
    let mut heads = Vec::new();
    for bi in 0..b {
        for hi in 0..h {
            let sel = idx[(bi * h + hi) as usize].view([1, 1, -1]);
            heads.push(store.head(bi, hi, group, &sel, headroom));
        }
    }
    heads
}

/// AdaKV across heads of different lengths: each keeps its best `floor(alpha·keep)` (≥ 1) and
/// its newest `recent`, then the best `keep·heads` overall.
fn select_ragged(scores: &[Tensor], lens: &[usize], keep: usize, recent: usize, alpha: f64) -> Vec<Tensor> {
    let mut adj = Vec::new();
    for (s, &n) in scores.iter().zip(lens) {
        let mut s = s.to_kind(Kind::Float).copy();
        let r = recent.min(n);
        if r > 0 {
            let _ = s.narrow(0, (n - r) as i64, r as i64).fill_(f64::INFINITY);
        }
        let mut n_safe = (keep as f64 * alpha).floor() as usize;
        if alpha > 0.0 && keep > 0 {
            n_safe = n_safe.max(1);
        }
        let n_safe = n_safe.min(n);
        if n_safe > 0 {
            let (_, top) = s.topk(n_safe as i64, 0, true, true);
            let _ = s.index_fill_(0, &top, f32::MAX as f64);
        }
        adj.push(s);
    }
    let flat = Tensor::cat(&adj, 0);
    let total = (keep * lens.len()).min(flat.size()[0] as usize);
    let (_, top) = flat.topk(total as i64, 0, true, true);
    let mut out = Vec::new();
    let mut off = 0i64;
    for &n in lens {
        let sel = top.masked_select(&top.ge(off).logical_and(&top.lt(off + n as i64))) - off;
        out.push(sel.sort(0, false).0);
        off += n as i64;
    }
    out
}

impl EvictionCache {
    /// One step: store, attend (unless `!want_output`, a shared prefill's observation, which
    /// changes nothing else), keep the statistics the scorer needs, evict when due.
    fn step(&mut self, step: &AttentionStep<'_>, want_output: bool) -> Result<Option<Tensor>> {
        if let Some((q, k)) = self.cut_channels(step) {
            return self.step_one(&AttentionStep { q: &q, k: &k, ..*step }, want_output);
        }
        let Some((bs, budget)) = self.block_schedule() else { return self.step_one(step, want_output) };
        // Block-wise prefill: split the step where blocks end (at budget + i·block), cutting the
        // cache back to its budget after each, so later queries attend over what is kept.
        let l = step.q.size()[2] as usize;
        let mut outs = Vec::new();
        let mut a = 0;
        while a < l {
            let pos = step.start_pos + a;
            let block_end = if pos < budget { budget } else { budget + (pos - budget) / bs * bs + bs };
            let n = (block_end - pos).min(l - a);
            let (q, k, v) = (step.q.narrow(2, a as i64, n as i64), step.k.narrow(2, a as i64, n as i64), step.v.narrow(2, a as i64, n as i64));
            let sub = AttentionStep { q: &q, k: &k, v: &v, start_pos: pos, ..*step };
            if let Some(o) = self.step_one(&sub, want_output)? {
                outs.push(o);
            }
            if pos + n == block_end && self.stored_tokens() > budget {
                let remaining = self.spec.expected_tokens.saturating_sub(self.seen);
                self.evict_to(budget, bs.min(remaining.max(1)))?;
            }
            a += n;
        }
        Ok(if want_output { Some(Tensor::cat(&outs, 2)) } else { None })
    }

    /// One step (or one block of a block-wise prefill).
    fn step_one(&mut self, step: &AttentionStep<'_>, want_output: bool) -> Result<Option<Tensor>> {
        let l = step.q.size()[2] as usize;
        self.seen = step.start_pos + l;
        if let Some(qc) = &mut self.quantized {
            self.since_evict += l;
            return qc.attend(step).map(Some);
        }
        // Store the new tokens, then attend over everything kept.
        let reindex = if self.sinks_local.is_some() && want_output { self.reindex_rope()? } else { None };
        let out = match &mut self.store {
            Store::Dense(store) => {
                store.append(step.k, step.v, step.start_pos);
                if want_output {
                    Some(Self::attend_dense(store, step, self.sinks_local, reindex)?)
                } else {
                    None
                }
            }
            Store::Ragged(heads) => {
                let (b, hkv) = (self.spec.batch as i64, self.spec.kv_heads as i64);
                let g = self.spec.group() as i64;
                let mut outs = Vec::new();
                for bi in 0..b {
                    for hi in 0..hkv {
                        let hs = &mut heads[(bi * hkv + hi) as usize];
                        let k = step.k.narrow(0, bi, 1).narrow(1, hi, 1);
                        let v = step.v.narrow(0, bi, 1).narrow(1, hi, 1);
                        hs.append(&k, &v, step.start_pos);
                        let q = step.q.narrow(0, bi, 1).narrow(1, hi * g, g);
                        let sub = AttentionStep { q: &q, k: &k, v: &v, ..*step };
                        outs.push(Self::attend_dense(hs, &sub, None, None)?);
                    }
                }
                let rows: Vec<Tensor> = (0..b as usize).map(|bi| Tensor::cat(&outs[bi * hkv as usize..(bi + 1) * hkv as usize], 1)).collect();
                Some(Tensor::cat(&rows, 0))
            }
        };
        self.since_evict += l;
        self.accumulate(step);
        self.remember_queries(step.q, step.start_pos);
        self.observe_queries(step)?;

        if self.cfg.budget.is_unbounded() {
            return Ok(out);
        }
        let remaining = self.spec.expected_tokens.saturating_sub(self.seen);
        if self.prefilling {
            // StreamingLLM drops what its window no longer sees after every prefill chunk.
            if let Some((sinks, local)) = self.sinks_local {
                self.evict_to(sinks + local, remaining.min(self.cfg.schedule.decode_interval.max(l)))?;
            }
            return Ok(out);
        }
        // Decoding (and appended question tokens).
        if self.budget.is_none() && self.cfg.schedule.start == Start::FirstDecode && self.cfg.schedule.decode_evict {
            // The paper's H2O: budgets fixed at the first decode step from the length so far.
            let len = self.stored_tokens();
            let keep = self.layer_keep(len);
            self.recent = match self.cfg.budget {
                Budget::Ratio(r) => ((len as f64 * self.cfg.schedule.recent_fraction / r).floor() as usize).min(keep),
                Budget::Tokens(_) => ((keep as f64 * self.cfg.schedule.recent_fraction).floor() as usize).min(keep),
                Budget::Fraction(f) => ((len as f64 * self.cfg.schedule.recent_fraction * f).floor() as usize).min(keep),
            };
            let heavy = match self.cfg.budget {
                Budget::Ratio(r) => (len as f64 * (1.0 - self.cfg.schedule.recent_fraction) / r).floor() as usize,
                Budget::Tokens(_) => keep - self.recent,
                Budget::Fraction(f) => (len as f64 * (1.0 - self.cfg.schedule.recent_fraction) * f).floor() as usize,
            };
            self.budget = Some((heavy + self.recent).max(1));
        }
        if self.cfg.schedule.decode_evict {
            if let Some(b) = self.budget {
                self.steps_since_evict += 1;
                let over = match &self.store {
                    Store::Dense(s) => s.len() > b,
                    Store::Ragged(h) => h.iter().map(|x| x.len()).sum::<usize>() > b * h.len(),
                };
                if over && self.steps_since_evict >= self.cfg.schedule.decode_interval.max(1) {
                    self.steps_since_evict = 0;
                    let headroom = self.cfg.schedule.decode_interval.max(1).min(remaining.max(1));
                    self.evict_to(b, headroom)?;
                }
            }
        }
        Ok(out)
    }
}

impl LayerCache for EvictionCache {
    fn attend(&mut self, step: &AttentionStep<'_>) -> Result<Tensor> {
        self.step(step, true)?.ok_or_else(|| Error::Other("eviction cache: no attention output".into()))
    }

    fn observe(&mut self, step: &AttentionStep<'_>) -> Result<()> {
        self.step(step, false).map(drop)
    }

    fn end_prefill(&mut self) -> Result<()> {
        if !self.prefilling {
            return Ok(());
        }
        self.prefilling = false;
        let after_prefill = !self.cfg.budget.is_unbounded() && self.cfg.schedule.start == Start::AfterPrefill;
        if after_prefill && self.cfg.schedule.decode_only {
            // DecodingPress: the prompt stays whole; decoding cuts the cache to the target.
            let Budget::Tokens(target) = self.cfg.budget else { unreachable!("target_size sets a token budget") };
            self.budget = Some(target);
            self.steps_since_evict = 0;
        } else if after_prefill {
            let len = match &self.store {
                Store::Dense(s) => s.len(),
                Store::Ragged(h) => h.iter().map(|x| x.len()).max().unwrap_or(0),
            };
            // A block-wise prefill sized its budget from the context before the first block.
            let keep = match (self.cfg.schedule.prefill_block, self.budget) {
                (Some(_), Some(b)) => b,
                _ => self.layer_keep(len),
            };
            if !self.pooled_kept {
                self.fix_budget(keep);
                let remaining = self.spec.expected_tokens.saturating_sub(self.seen);
                let headroom = if self.cfg.schedule.decode_evict { self.cfg.schedule.decode_interval.max(1) } else { remaining };
                self.evict_to(keep, headroom)?;
            }
        } else if matches!(self.cfg.schedule.start, Start::Streaming(_)) && self.sinks_local.is_none() && !self.cfg.budget.is_unbounded() {
            // Context length was unknown: compress now to sinks + recent (the full-prefill variant).
            let len = self.stored_tokens();
            let budget = self.cfg.budget.keep(len).max(1);
            let Start::Streaming(st) = self.cfg.schedule.start else { unreachable!("checked above") };
            let sinks = st.sinks.unwrap_or((budget as f64 * st.sink_ratio) as usize).min(budget.saturating_sub(1));
            self.sinks_local = Some((sinks, budget - sinks));
            self.budget = Some(budget);
            let remaining = self.spec.expected_tokens.saturating_sub(self.seen);
            self.evict_to(budget, if self.cfg.schedule.decode_evict { 1 } else { remaining })?;
            if !self.cfg.schedule.decode_evict {
                self.sinks_local = None;
            }
        }
        if let Some(kc) = self.cfg.key_channels {
            self.prune_channels(kc)?;
        }
        if self.needs_queries() == 0 {
            self.queries = None;
        }
        if !self.cfg.schedule.decode_evict {
            self.query_stats = None;
        }
        self.recon = None;
        if let (Storage::Quantized(st), Store::Dense(store)) = (&self.cfg.storage, &mut self.store) {
            if let Some((k, v)) = store.views() {
                self.quantized = Some(QuantCache::from_kept(st, self.spec, &k, &v, store.positions().copy())?);
                store.clear();
                self.queries = None;
                self.query_stats = None;
            }
        }
        Ok(())
    }

    fn reconstruct(&mut self, pass: &ReconstructionPass<'_>) -> Result<ReconstructionOutput> {
        let (step, target) = (pass.step, pass.target.clone());
        let refuse = |why: &str| Error::Unsupported(format!("method `{}`: context reconstruction {why}", self.cfg.name));
        let Store::Dense(store) = &self.store else { return Err(refuse("needs the prompt uncompressed (it was compressed already)")) };
        if !self.prefilling || self.quantized.is_some() || !store.is_contiguous() || store.first_pos() != 0 {
            return Err(refuse("runs on the whole prompt, uncompressed, before end_prefill"));
        }
        let (k, v) = store.views().ok_or_else(|| refuse("needs a prompt"))?;
        let s = store.len();
        if step.start_pos != s || target.end > s || target.start > target.end {
            return Err(refuse(&format!(
                "pass at position {} repeating {target:?}: expected a pass right after the {s} stored tokens, repeating some of them",
                step.start_pos
            )));
        }
        let output = if pass.want_output { Some(attend_after_prefix(step, &k, &v)) } else { None };
        let mut recorded = None;
        if let Some(rec) = self.cfg.scorer.reconstruction() {
            if !target.is_empty() {
                let scores = match pass.scores {
                    Some(sc) => sc.shallow_clone(),
                    None => reconstruction_scores(step, &k, &v, target.clone(), rec.sinks),
                };
                let (b, h) = (self.spec.batch as i64, self.spec.kv_heads as i64);
                let buf = self.recon.get_or_insert_with(|| Tensor::zeros([b, h, s as i64], (Kind::Float, k.device())));
                buf.narrow(2, target.start as i64, target.len() as i64).copy_(&scores);
                recorded = Some(scores);
            }
        }
        Ok(ReconstructionOutput { output, scores: recorded })
    }

    fn pooled_scores(&mut self) -> Result<Option<PooledScores>> {
        let Store::Dense(store) = &self.store else { return Ok(None) };
        if !self.pools_across_layers() || store.is_empty() {
            return Ok(None);
        }
        let scores = self.score(store, self.queries.as_ref(), self.query_start, self.query_stats.as_ref())?;
        Ok(Some(PooledScores { scores, keep: self.layer_keep(store.len()) }))
    }

    fn keep_pooled(&mut self, per_head: &[usize]) -> Result<()> {
        let Store::Dense(store) = &self.store else { return Err(Error::Other(format!("method `{}`: a pooled budget applied twice", self.cfg.name))) };
        let rows = self.spec.batch * self.spec.kv_heads;
        if !self.pools_across_layers() || per_head.len() != rows {
            return Err(Error::Other(format!("method `{}`: a pooled budget of {} heads for a layer of {rows} that pools", self.cfg.name, per_head.len())));
        }
        let scores = self.score(store, self.queries.as_ref(), self.query_start, self.query_stats.as_ref())?;
        let flat = scores.to_kind(Kind::Float).view([rows as i64, -1]);
        let idx: Vec<Tensor> =
            per_head.iter().enumerate().map(|(r, &n)| flat.get(r as i64).topk(n.min(store.len()) as i64, -1, true, true).1.sort(-1, false).0).collect();
        let remaining = self.spec.expected_tokens.saturating_sub(self.seen);
        let heads = split_heads(store, &idx, self.spec.group(), remaining);
        self.store = Store::Ragged(heads);
        self.fix_budget(per_head.iter().copied().max().unwrap_or(0));
        self.since_evict = 0;
        self.pooled_kept = true;
        Ok(())
    }

    fn stored_tokens(&self) -> usize {
        if let Some(q) = &self.quantized {
            return q.stored_tokens();
        }
        match &self.store {
            Store::Dense(s) => s.len(),
            Store::Ragged(h) => h.iter().map(|x| x.len()).max().unwrap_or(0),
        }
    }

    fn bytes_held(&self) -> u64 {
        self.held_tensors().iter().map(|(_, t)| tensor_bytes(t)).sum()
    }

    fn bytes_allocated(&self) -> u64 {
        if let Some(q) = &self.quantized {
            return q.bytes_allocated();
        }
        let q = self.queries.as_ref().map_or(0, tensor_bytes)
            + self.query_stats.as_ref().map_or(0, |st| tensor_bytes(&st.mean) + tensor_bytes(&st.m2))
            + self.channels.as_ref().map_or(0, tensor_bytes)
            + self.recon.as_ref().map_or(0, tensor_bytes);
        q + match &self.store {
            Store::Dense(s) => s.bytes_allocated(),
            Store::Ragged(h) => h.iter().map(|x| x.bytes_allocated()).sum(),
        }
    }

    fn reset(&mut self) {
        *self = EvictionCache::new(self.cfg.clone(), self.layer, self.spec);
    }

    fn budget_tokens(&self) -> Option<usize> {
        if self.prefilling && self.sinks_local.is_none() && self.block_schedule().is_none() {
            return None;
        }
        // Between evictions (decoding without decode_evict, or every N steps, or appended question
        // tokens) the cache holds its budget plus what was appended since the last eviction.
        self.budget.map(|b| b + self.since_evict)
    }

    fn kept_positions(&self) -> Vec<Vec<i64>> {
        if let Some(q) = &self.quantized {
            return q.kept_positions();
        }
        match &self.store {
            Store::Dense(s) => s.kept_positions(),
            Store::Ragged(h) => h.iter().flat_map(|x| x.kept_positions()).collect(),
        }
    }

    fn held_tensors(&self) -> Vec<(&'static str, Tensor)> {
        if let Some(q) = &self.quantized {
            return q.held_tensors();
        }
        let mut out = match &self.store {
            Store::Dense(s) => s.held_tensors(),
            Store::Ragged(h) => h.iter().flat_map(|x| x.held_tensors()).collect(),
        };
        if let Some(q) = &self.queries {
            out.push(("window_queries", q.shallow_clone()));
        }
        if let Some(st) = &self.query_stats {
            out.push(("query_mean", st.mean.shallow_clone()));
            out.push(("query_m2", st.m2.shallow_clone()));
        }
        if let Some(ch) = &self.channels {
            out.push(("key_channels", ch.shallow_clone()));
        }
        if let Some(r) = &self.recon {
            out.push(("reconstruction_scores", r.shallow_clone()));
        }
        out
    }

    fn fork(&self) -> Option<Box<dyn LayerCache>> {
        let store = match &self.store {
            Store::Dense(s) => Store::Dense(s.deep_copy()),
            Store::Ragged(h) => Store::Ragged(h.iter().map(|x| x.deep_copy()).collect()),
        };
        Some(Box::new(EvictionCache {
            cfg: self.cfg.clone(),
            layer: self.layer,
            spec: self.spec,
            store,
            queries: self.queries.as_ref().map(|q| q.copy()),
            query_start: self.query_start,
            prefilling: self.prefilling,
            budget: self.budget,
            recent: self.recent,
            sinks_local: self.sinks_local,
            steps_since_evict: self.steps_since_evict,
            since_evict: self.since_evict,
            seen: self.seen,
            quantized: self.quantized.as_ref().map(|q| q.fork_quant()),
            query_stats: self.query_stats.as_ref().map(|st| st.copy()),
            channels: self.channels.as_ref().map(|c| c.copy()),
            recon: self.recon.as_ref().map(|r| r.copy()),
            pooled_kept: self.pooled_kept,
        }))
    }
}
