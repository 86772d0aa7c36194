//! Token eviction, shared by every scoring method: a method is a [`Scorer`] (which tokens matter)
//! plus an [`EvictionConfig`] (when to compress, how the budget is split), and [`EvictionCache`]
//! does the rest: storage that really shrinks, attention over kept (non-contiguous) positions,
//! the hooks (after prefill, after every decode step or every N steps), GQA score aggregation and
//! per-head variable budgets (AdaKV), all with exact byte accounting.
//!
//! Budget semantics: `ratio = N` keeps `max(1, floor(S / N))` of the `S` context tokens per head
//! (the paper's N×; kvpress's `compression_ratio = 1 - 1/N`); `ratio = 1` never evicts, so the
//! cache computes exactly what the full cache computes. `tokens = K` keeps `min(K, S)`.

use crate::cache::{attend_at_positions, attend_contiguous, attention_probs, contiguous_positions, tensor_bytes, AttentionStep, CacheFactory, CacheSpec, LayerCache, Visibility};
use crate::error::{Error, Result};
use crate::quantized::{QuantCache, QuantConfig};
use std::sync::Arc;
use tch::{Kind, Tensor};

/// How many tokens a method keeps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    /// Keep 1/N of the context (N ≥ 1; 1 = no compression).
    Ratio(f64),
    /// Keep this many tokens per head.
    Tokens(usize),
}

impl Budget {
    /// Whether the budget never evicts.
    pub fn is_unbounded(&self) -> bool {
        matches!(self, Budget::Ratio(r) if *r <= 1.0)
    }
    /// Tokens to keep out of `len`.
    pub fn keep(&self, len: usize) -> usize {
        match *self {
            Budget::Ratio(r) if r <= 1.0 => len,
            Budget::Ratio(r) => ((len as f64 / r).floor() as usize).max(1).min(len),
            Budget::Tokens(k) => k.min(len),
        }
    }
    /// The kept fraction as a float (`1/N`), or `None` for an absolute budget.
    pub fn fraction(&self) -> Option<f64> {
        match *self {
            Budget::Ratio(r) => Some(1.0 / r.max(1.0)),
            Budget::Tokens(_) => None,
        }
    }
}

/// How scores of the query heads sharing a KV head are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GqaAgg {
    Mean,
    Max,
}

impl GqaAgg {
    /// `[B, Hq, S]` → `[B, Hkv, S]`.
    pub fn reduce(&self, scores: &Tensor, kv_heads: i64) -> Tensor {
        let (b, hq, s) = scores.size3().expect("scores are [B, Hq, S]");
        let g = scores.view([b, kv_heads, hq / kv_heads, s]);
        match self {
            GqaAgg::Mean => g.mean_dim(2, false, Kind::Float),
            GqaAgg::Max => g.amax(2, false),
        }
    }
}

/// What a scorer sees: the stored tokens, the last queries, the layer.
pub struct ScoreInput<'a> {
    pub layer: usize,
    pub spec: &'a CacheSpec,
    /// `[B, Hkv, S, D]`.
    pub keys: &'a Tensor,
    pub values: &'a Tensor,
    /// Absolute positions `[B, Hkv, S]` (i64), ascending along S.
    pub positions: &'a Tensor,
    /// The last queries `[B, Hq, W, D]` (after RoPE), if the scorer asked for a window.
    pub queries: Option<&'a Tensor>,
    /// Position of the first of those queries.
    pub query_start: usize,
    pub scale: f64,
    pub sliding_window: Option<usize>,
    /// Attention accumulated over the steps so far `[B, Hkv, S]`, for methods that accumulate.
    pub accumulated: Option<&'a Tensor>,
    pub gqa: GqaAgg,
}

/// Ranks stored tokens: higher scores are kept. Scores are `[B, Hkv, S]`, f32.
pub trait Scorer: Send + Sync {
    /// Queries the scorer needs from the end of the context (0: none).
    fn query_window(&self) -> usize {
        0
    }
    /// Scores of the stored tokens.
    fn score(&self, input: &ScoreInput<'_>) -> Result<Tensor>;
}

/// When attention probabilities are accumulated into a per-token score (H2O).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accumulate {
    Never,
    /// From the first decode step on (the paper's H2O).
    Decode,
    /// Over the whole prefill and decoding (H2O with prefill eviction, kvpress ObservedAttention).
    Always,
}

/// A StreamingLLM-style attention pattern during prefill: sinks plus a local window, sized from
/// the context length before the first chunk.
#[derive(Clone, Copy, Debug)]
pub struct StreamingPrefill {
    /// Fraction of the budget given to sink tokens (the paper's `init_ratio = 0.021`).
    pub sink_ratio: f64,
    /// Absolute sink count (overrides `sink_ratio`).
    pub sinks: Option<usize>,
    /// Compress during prefill (sinks + local attention); false: full prefill, compress after.
    pub chunked: bool,
}

/// Per-layer budget (PyramidKV): `(layer, num_layers, context_len, budget) -> tokens to keep`.
pub type LayerBudgetFn = Arc<dyn Fn(usize, usize, usize, &Budget) -> usize + Send + Sync>;

/// Everything that makes one eviction method.
#[derive(Clone)]
pub struct EvictionConfig {
    pub name: String,
    pub budget: Budget,
    pub scorer: Arc<dyn Scorer>,
    /// Compress at `end_prefill` (false: only during decoding, like the paper's H2O).
    pub compress_after_prefill: bool,
    /// Keep the cache at its budget while decoding.
    pub decode_evict: bool,
    /// With `decode_evict`: evict every N decode steps (the cache may exceed the budget by N-1).
    pub decode_interval: usize,
    /// Newest tokens always kept, as a fraction of the budget (H2O's recent window).
    pub recent_fraction: f64,
    pub accumulate: Accumulate,
    /// AdaKV: per-head variable budgets with this safeguard (each head keeps at least
    /// `alpha · budget` tokens).
    pub head_adaptive: Option<f64>,
    /// StreamingLLM: sinks + local window attention during prefill, budget fixed from the context.
    pub streaming: Option<StreamingPrefill>,
    pub layer_budget: Option<LayerBudgetFn>,
    pub gqa: GqaAgg,
    /// Keep the survivors quantized (`storage = {method = "kivi", ...}`): at `end_prefill`, after
    /// eviction, the kept tokens move into a [`QuantCache`] that also stores every later token.
    pub storage: Option<QuantConfig>,
}

impl EvictionConfig {
    /// A config with defaults: compress after prefill, no decode eviction.
    pub fn new(name: &str, budget: Budget, scorer: Arc<dyn Scorer>) -> Self {
        EvictionConfig {
            name: name.to_string(),
            budget,
            scorer,
            compress_after_prefill: true,
            decode_evict: false,
            decode_interval: 1,
            recent_fraction: 0.0,
            accumulate: Accumulate::Never,
            head_adaptive: None,
            streaming: None,
            layer_budget: None,
            gqa: GqaAgg::Mean,
            storage: None,
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
        if let Some(st) = &cfg.storage {
            let bad = |why: &str| Error::InvalidArgument { what: "storage", value: format!("{} with {}", cfg.name, st.name), expected: why.into() };
            if cfg.decode_evict {
                return Err(bad("decode_evict = false: quantized storage keeps every token after prefill (it does not evict while decoding)"));
            }
            if cfg.head_adaptive.is_some() {
                return Err(bad("a method with one budget for all heads (per-head budgets are not stored quantized)"));
            }
            QuantCache::new(st, *spec)?;
        }
        Ok(Box::new(EvictionCache::new(self.0.clone(), layer, *spec)))
    }
}

// ---------------------------------------------------------------------------------------------
// Storage

/// Tokens of `[B, H, ·, D]` K/V kept in position order, with spare capacity for appends; positions
/// are materialised only once the kept set stops being contiguous, and an optional per-token
/// score travels with its token.
pub struct DenseStore {
    spec: CacheSpec,
    k: Option<Tensor>,
    v: Option<Tensor>,
    pos: Option<Tensor>,
    aux: Option<Tensor>,
    cap: usize,
    len: usize,
    first_pos: usize,
}

impl DenseStore {
    pub fn new(spec: CacheSpec) -> Self {
        DenseStore { spec, k: None, v: None, pos: None, aux: None, cap: 0, len: 0, first_pos: 0 }
    }
    fn dims(&self) -> (i64, i64, i64) {
        (self.spec.batch as i64, self.spec.kv_heads as i64, self.spec.head_dim as i64)
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn is_contiguous(&self) -> bool {
        self.pos.is_none()
    }
    pub fn first_pos(&self) -> usize {
        self.first_pos
    }

    fn realloc(&mut self, cap: usize) {
        let (b, h, d) = self.dims();
        let kind = self.spec.kv_dtype.kind();
        let dev = self.spec.device;
        let n = self.len as i64;
        let grow = |old: &Option<Tensor>, shape: Vec<i64>, kind: Kind| -> Tensor {
            let t = Tensor::empty(shape.as_slice(), (kind, dev));
            if let Some(o) = old {
                if n > 0 {
                    t.narrow(2, 0, n).copy_(&o.narrow(2, 0, n));
                }
            }
            t
        };
        let c = cap as i64;
        self.k = Some(grow(&self.k, vec![b, h, c, d], kind));
        self.v = Some(grow(&self.v, vec![b, h, c, d], kind));
        if self.pos.is_some() {
            self.pos = Some(grow(&self.pos, vec![b, h, c], Kind::Int64));
        }
        if self.aux.is_some() {
            self.aux = Some(grow(&self.aux, vec![b, h, c], Kind::Float));
        }
        self.cap = cap;
    }

    /// Appends `[B, H, L, D]` new keys/values at positions `start..start+L`.
    pub fn append(&mut self, k: &Tensor, v: &Tensor, start: usize) {
        let l = k.size()[2] as usize;
        if self.len == 0 {
            self.first_pos = start;
        }
        if self.pos.is_none() && self.len > 0 && self.first_pos + self.len != start {
            self.materialise_positions();
        }
        if self.len + l > self.cap {
            let want = (self.len + l).max(self.cap * 2).max(self.spec.expected_tokens.min((self.len + l) * 4));
            self.realloc(want);
        }
        let kind = self.spec.kv_dtype.kind();
        let (n, l64) = (self.len as i64, l as i64);
        if let (Some(sk), Some(sv)) = (&self.k, &self.v) {
            sk.narrow(2, n, l64).copy_(&k.to_kind(kind));
            sv.narrow(2, n, l64).copy_(&v.to_kind(kind));
        }
        if let Some(p) = &self.pos {
            let (b, h, _) = self.dims();
            let new = Tensor::arange_start(start as i64, (start + l) as i64, (Kind::Int64, self.spec.device)).view([1, 1, -1]).expand([b, h, l64], false);
            p.narrow(2, n, l64).copy_(&new);
        }
        if let Some(a) = &self.aux {
            let _ = a.narrow(2, n, l64).fill_(0.0);
        }
        self.len += l;
    }

    fn materialise_positions(&mut self) {
        let (b, h, _) = self.dims();
        let p = Tensor::empty([b, h, self.cap.max(1) as i64], (Kind::Int64, self.spec.device));
        if self.len > 0 {
            p.narrow(2, 0, self.len as i64).copy_(&contiguous_positions(&self.spec, self.first_pos, self.len));
        }
        self.pos = Some(p);
    }

    /// Starts tracking a per-token score (zero for the tokens already held).
    pub fn enable_aux(&mut self) {
        if self.aux.is_none() {
            let (b, h, _) = self.dims();
            self.aux = Some(Tensor::zeros([b, h, self.cap.max(1) as i64], (Kind::Float, self.spec.device)));
        }
    }

    /// Adds `delta` (`[B, H, len]`) to the per-token score.
    pub fn aux_add(&mut self, delta: &Tensor) {
        if let Some(a) = &self.aux {
            let mut live = a.narrow(2, 0, self.len as i64);
            let _ = live.g_add_(delta);
        }
    }

    pub fn aux(&self) -> Option<Tensor> {
        self.aux.as_ref().map(|a| a.narrow(2, 0, self.len as i64))
    }

    /// Live keys and values `[B, H, len, D]`.
    pub fn views(&self) -> Option<(Tensor, Tensor)> {
        match (&self.k, &self.v) {
            (Some(k), Some(v)) => Some((k.narrow(2, 0, self.len as i64), v.narrow(2, 0, self.len as i64))),
            _ => None,
        }
    }

    /// Absolute positions `[B, H, len]`.
    pub fn positions(&self) -> Tensor {
        match &self.pos {
            Some(p) => p.narrow(2, 0, self.len as i64),
            None => contiguous_positions(&self.spec, self.first_pos, self.len),
        }
    }

    /// Keeps the tokens at slot indices `idx` (`[B, H, n]`, ascending), reallocating to `n +
    /// headroom` slots so the memory of evicted tokens is returned.
    pub fn keep(&mut self, idx: &Tensor, headroom: usize) {
        let n = idx.size()[2] as usize;
        let (_, _, d) = self.dims();
        let Some((k, v)) = self.views() else { return };
        let positions = self.positions();
        let idx4 = idx.unsqueeze(-1).expand([-1, -1, -1, d], false);
        let nk = k.gather(2, &idx4, false);
        let nv = v.gather(2, &idx4, false);
        let np = positions.gather(2, idx, false);
        let na = self.aux().map(|a| a.gather(2, idx, false));
        let cap = n + headroom.max(1);
        let (b, h, _) = self.dims();
        let kind = self.spec.kv_dtype.kind();
        let dev = self.spec.device;
        let fresh = |src: &Tensor, shape: &[i64], kind: Kind| {
            let t = Tensor::empty(shape, (kind, dev));
            if n > 0 {
                t.narrow(2, 0, n as i64).copy_(src);
            }
            t
        };
        self.k = Some(fresh(&nk, &[b, h, cap as i64, d], kind));
        self.v = Some(fresh(&nv, &[b, h, cap as i64, d], kind));
        self.pos = Some(fresh(&np, &[b, h, cap as i64], Kind::Int64));
        self.aux = na.map(|a| fresh(&a, &[b, h, cap as i64], Kind::Float));
        self.cap = cap;
        self.len = n;
        if n > 0 {
            self.first_pos = np.min().int64_value(&[]) as usize;
        }
    }

    pub fn bytes_held(&self) -> u64 {
        self.held_tensors().iter().map(|(_, t)| tensor_bytes(t)).sum()
    }

    pub fn bytes_allocated(&self) -> u64 {
        let (b, h, d) = self.dims();
        let per = (b * h) as u64 * self.cap as u64;
        let mut bytes = 2 * per * d as u64 * self.spec.kv_dtype.size_in_bytes() as u64;
        if self.pos.is_some() {
            bytes += per * 8;
        }
        if self.aux.is_some() {
            bytes += per * 4;
        }
        bytes.max(self.bytes_held())
    }

    pub fn held_tensors(&self) -> Vec<(&'static str, Tensor)> {
        let mut out = Vec::new();
        if let Some((k, v)) = self.views() {
            out.push(("k", k));
            out.push(("v", v));
        }
        let n = self.len as i64;
        if let Some(p) = &self.pos {
            out.push(("positions", p.narrow(2, 0, n)));
        }
        if let Some(a) = &self.aux {
            out.push(("scores", a.narrow(2, 0, n)));
        }
        out
    }

    /// Positions per (batch, head), sorted.
    pub fn kept_positions(&self) -> Vec<Vec<i64>> {
        let (b, h, _) = self.dims();
        let p = self.positions().to_device(tch::Device::Cpu).contiguous().view([b * h, -1]);
        (0..b * h).map(|i| Vec::<i64>::try_from(&p.get(i)).unwrap_or_default()).collect()
    }

    pub fn deep_copy(&self) -> Self {
        let c = |t: &Option<Tensor>| t.as_ref().map(|t| t.copy());
        DenseStore { spec: self.spec, k: c(&self.k), v: c(&self.v), pos: c(&self.pos), aux: c(&self.aux), cap: self.cap, len: self.len, first_pos: self.first_pos }
    }

    pub fn clear(&mut self) {
        *self = DenseStore::new(self.spec);
    }
}

/// The storage of an eviction cache: one dense block, or one block per (batch, KV head) once
/// per-head budgets differ (AdaKV), so that each head holds only its own kept tokens.
enum Store {
    Dense(DenseStore),
    Ragged(Vec<DenseStore>),
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
}

impl EvictionCache {
    pub fn new(cfg: Arc<EvictionConfig>, layer: usize, spec: CacheSpec) -> Self {
        let mut store = DenseStore::new(spec);
        if cfg.accumulate != Accumulate::Never {
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
        };
        c.size_streaming();
        c
    }

    /// Tokens to keep out of `len` for this layer.
    fn layer_keep(&self, len: usize) -> usize {
        match &self.cfg.layer_budget {
            Some(f) if !self.cfg.budget.is_unbounded() => f(self.layer, self.spec.num_layers, len, &self.cfg.budget).min(len),
            _ => self.cfg.budget.keep(len),
        }
    }

    fn size_streaming(&mut self) {
        let (Some(st), Some(ctx)) = (self.cfg.streaming, self.spec.context_tokens) else { return };
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
        if self.prefilling || self.cfg.decode_evict { w } else { 0 }
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

    /// Attention of one dense block, over contiguous or kept positions.
    fn attend_dense(store: &DenseStore, step: &AttentionStep<'_>, sinks_local: Option<(usize, usize)>) -> Result<Tensor> {
        let (k, v) = store.views().ok_or_else(|| Error::Other("eviction cache: attention over an empty store".into()))?;
        if store.is_contiguous() && sinks_local.is_none() {
            return Ok(attend_contiguous(step, &k, &v, store.first_pos()));
        }
        let vis = Visibility { window: None, sinks_local };
        Ok(attend_at_positions(step, &k, &v, &store.positions(), vis))
    }

    /// Accumulates the step's attention probabilities (summed over its queries) per token.
    fn accumulate(&mut self, step: &AttentionStep<'_>) {
        let active = match self.cfg.accumulate {
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

    fn score(&self, store: &DenseStore, queries: Option<&Tensor>, qstart: usize) -> Result<Tensor> {
        let (k, v) = store.views().ok_or_else(|| Error::Other("eviction cache: scoring an empty store".into()))?;
        let pos = store.positions();
        let acc = store.aux();
        let input = ScoreInput {
            layer: self.layer,
            spec: &store.spec,
            keys: &k,
            values: &v,
            positions: &pos,
            queries,
            query_start: qstart,
            scale: 1.0 / (self.spec.head_dim as f64).sqrt(),
            sliding_window: None,
            accumulated: acc.as_ref(),
            gqa: self.cfg.gqa,
        };
        let s = self.cfg.scorer.score(&input)?;
        if s.size() != pos.size() {
            return Err(Error::Other(format!("method `{}`: scorer returned shape {:?}, expected {:?}", self.cfg.name, s.size(), pos.size())));
        }
        Ok(s)
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
                    None => self.score(store, self.queries.as_ref(), self.query_start)?,
                };
                match self.cfg.head_adaptive {
                    None => {
                        let idx = select_uniform(&scores, keep, recent);
                        if let Store::Dense(store) = &mut self.store {
                            store.keep(&idx, headroom);
                        }
                    }
                    Some(alpha) => {
                        let idx = select_adaptive(&scores, keep, recent, alpha);
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
                let alpha = self.cfg.head_adaptive.unwrap_or(0.0);
                let hkv = self.spec.kv_heads;
                let group = self.spec.group() as i64;
                let mut scores = Vec::new();
                for (i, hs) in heads.iter().enumerate() {
                    let (bi, hi) = ((i / hkv) as i64, (i % hkv) as i64);
                    let q = self.queries.as_ref().map(|q| q.narrow(0, bi, 1).narrow(1, hi * group, group));
                    scores.push(self.score(hs, q.as_ref(), self.query_start)?.view([-1]));
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

/// Splits a dense block into one block per (batch, KV head) holding that head's selected slots.
fn split_heads(store: &DenseStore, idx: &[Tensor], group: usize, headroom: usize) -> Vec<DenseStore> {
    let spec = store.spec;
    let one = CacheSpec { batch: 1, kv_heads: 1, query_heads: group, ..spec };
    let (b, h) = (spec.batch as i64, spec.kv_heads as i64);
    let mut heads = Vec::new();
    for bi in 0..b {
        for hi in 0..h {
            let sel = idx[(bi * h + hi) as usize].view([1, 1, -1]);
            let mut hs = DenseStore {
                spec: one,
                k: store.k.as_ref().map(|t| t.narrow(0, bi, 1).narrow(1, hi, 1)),
                v: store.v.as_ref().map(|t| t.narrow(0, bi, 1).narrow(1, hi, 1)),
                pos: Some(store.positions().narrow(0, bi, 1).narrow(1, hi, 1)),
                aux: store.aux.as_ref().map(|t| t.narrow(0, bi, 1).narrow(1, hi, 1)),
                cap: store.len,
                len: store.len,
                first_pos: store.first_pos,
            };
            // `keep` gathers into fresh storage, so nothing of the shared block stays referenced.
            hs.keep(&sel, headroom);
            heads.push(hs);
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

impl LayerCache for EvictionCache {
    fn attend(&mut self, step: &AttentionStep<'_>) -> Result<Tensor> {
        let l = step.q.size()[2] as usize;
        self.seen = step.start_pos + l;
        if let Some(qc) = &mut self.quantized {
            self.since_evict += l;
            return qc.attend(step);
        }
        // Store the new tokens, then attend over everything kept.
        let out = match &mut self.store {
            Store::Dense(store) => {
                store.append(step.k, step.v, step.start_pos);
                Self::attend_dense(store, step, self.sinks_local)?
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
                        outs.push(Self::attend_dense(hs, &sub, None)?);
                    }
                }
                let rows: Vec<Tensor> = (0..b as usize).map(|bi| Tensor::cat(&outs[bi * hkv as usize..(bi + 1) * hkv as usize], 1)).collect();
                Tensor::cat(&rows, 0)
            }
        };
        self.since_evict += l;
        self.accumulate(step);
        self.remember_queries(step.q, step.start_pos);

        if self.cfg.budget.is_unbounded() {
            return Ok(out);
        }
        let remaining = self.spec.expected_tokens.saturating_sub(self.seen);
        if self.prefilling {
            // StreamingLLM drops what its window no longer sees after every prefill chunk.
            if let Some((sinks, local)) = self.sinks_local {
                self.evict_to(sinks + local, remaining.min(self.cfg.decode_interval.max(l)))?;
            }
            return Ok(out);
        }
        // Decoding (and appended question tokens).
        if self.budget.is_none() && !self.cfg.compress_after_prefill && self.cfg.decode_evict {
            // The paper's H2O: budgets fixed at the first decode step from the length so far.
            let len = self.stored_tokens();
            let keep = self.layer_keep(len);
            self.recent = match self.cfg.budget {
                Budget::Ratio(r) => ((len as f64 * self.cfg.recent_fraction / r).floor() as usize).min(keep),
                Budget::Tokens(_) => ((keep as f64 * self.cfg.recent_fraction).floor() as usize).min(keep),
            };
            let heavy = match self.cfg.budget {
                Budget::Ratio(r) => (len as f64 * (1.0 - self.cfg.recent_fraction) / r).floor() as usize,
                Budget::Tokens(_) => keep - self.recent,
            };
            self.budget = Some((heavy + self.recent).max(1));
        }
        if self.cfg.decode_evict {
            if let Some(b) = self.budget {
                self.steps_since_evict += 1;
                let over = match &self.store {
                    Store::Dense(s) => s.len() > b,
                    Store::Ragged(h) => h.iter().map(|x| x.len()).sum::<usize>() > b * h.len(),
                };
                if over && self.steps_since_evict >= self.cfg.decode_interval.max(1) {
                    self.steps_since_evict = 0;
                    let headroom = self.cfg.decode_interval.max(1).min(remaining.max(1));
                    self.evict_to(b, headroom)?;
                }
            }
        }
        Ok(out)
    }

    fn end_prefill(&mut self) -> Result<()> {
        if !self.prefilling {
            return Ok(());
        }
        self.prefilling = false;
        if !self.cfg.budget.is_unbounded() && self.cfg.compress_after_prefill && self.cfg.streaming.is_none() {
            let len = match &self.store {
                Store::Dense(s) => s.len(),
                Store::Ragged(h) => h.iter().map(|x| x.len()).max().unwrap_or(0),
            };
            let keep = self.layer_keep(len);
            self.recent = (keep as f64 * self.cfg.recent_fraction).floor() as usize;
            self.budget = Some(keep);
            let remaining = self.spec.expected_tokens.saturating_sub(self.seen);
            let headroom = if self.cfg.decode_evict { self.cfg.decode_interval.max(1) } else { remaining };
            self.evict_to(keep, headroom)?;
        } else if self.cfg.streaming.is_some() && self.sinks_local.is_none() && !self.cfg.budget.is_unbounded() {
            // Context length was unknown: compress now to sinks + recent (the full-prefill variant).
            let len = self.stored_tokens();
            let budget = self.cfg.budget.keep(len).max(1);
            let st = self.cfg.streaming.expect("checked");
            let sinks = st.sinks.unwrap_or((budget as f64 * st.sink_ratio) as usize).min(budget.saturating_sub(1));
            self.sinks_local = Some((sinks, budget - sinks));
            self.budget = Some(budget);
            let remaining = self.spec.expected_tokens.saturating_sub(self.seen);
            self.evict_to(budget, if self.cfg.decode_evict { 1 } else { remaining })?;
            if !self.cfg.decode_evict {
                self.sinks_local = None;
            }
        }
        if self.needs_queries() == 0 {
            self.queries = None;
        }
        if let (Some(st), Store::Dense(store)) = (&self.cfg.storage, &mut self.store) {
            if let Some((k, v)) = store.views() {
                self.quantized = Some(QuantCache::from_kept(st, self.spec, &k, &v, store.positions().copy())?);
                store.clear();
                self.queries = None;
            }
        }
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
        let q = self.queries.as_ref().map_or(0, tensor_bytes);
        q + match &self.store {
            Store::Dense(s) => s.bytes_allocated(),
            Store::Ragged(h) => h.iter().map(|x| x.bytes_allocated()).sum(),
        }
    }

    fn reset(&mut self) {
        *self = EvictionCache::new(self.cfg.clone(), self.layer, self.spec);
    }

    fn budget_tokens(&self) -> Option<usize> {
        if self.prefilling && self.sinks_local.is_none() {
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
            quantized: match &self.quantized {
                Some(q) => Some(q.fork_quant()),
                None => None,
            },
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// Scoring helpers shared by the scorers of several families

/// Attention probabilities `[B, Hq, W, S]` of the input's window queries over its keys.
pub fn window_probs(input: &ScoreInput<'_>) -> Result<Tensor> {
    let q = input.queries.ok_or_else(|| Error::Other("scorer needs window queries but none were kept".into()))?;
    Ok(attention_probs(q, input.query_start, input.keys, input.positions, input.scale, input.sliding_window))
}

/// Boolean `[B, Hkv, S]`: tokens inside the query window (their positions are ≥ its first query).
pub fn in_window(input: &ScoreInput<'_>) -> Tensor {
    input.positions.ge(input.query_start as i64)
}

/// Sets scores of the window's own tokens above every other score (they are always kept).
pub fn protect_window(scores: &Tensor, input: &ScoreInput<'_>) -> Tensor {
    let top = scores.max().double_value(&[]) + 1.0;
    scores.masked_fill(&in_window(input), top)
}

/// A deterministic hash of (seed, layer, batch·head, position) to `[0, 1)`, for the random scorer.
pub fn hash_unit(seed: u64, layer: u64, row: u64, pos: u64) -> f64 {
    let mut x = seed ^ 0x9E37_79B9_7F4A_7C15;
    for v in [layer, row, pos] {
        x = x.wrapping_add(v.wrapping_mul(0xBF58_476D_1CE4_E5B9)).wrapping_add(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
    }
    (x >> 11) as f64 / (1u64 << 53) as f64
}
