//! The KV-cache API: a cache method is a factory of per-layer caches, and each layer's cache owns
//! what it stores and how attention over it is computed. This module defines that contract, the
//! attention helpers every cache can reuse (SDPA with the right mask, GQA without repeating K/V),
//! and `FullCache`, the uncompressed baseline every method is measured against.
//!
//! Keys are stored after RoPE, per KV head (`[batch, kv_heads, tokens, head_dim]`), never
//! repeated per query head. A cache reports the bytes it really holds.
//!
//! Hooks a cache receives, in order: `attend` for every prefill chunk of the context (it sees the
//! chunk's queries, so it can keep the last `window` of them or compute explicit attention weights
//! with [`attention_probs`]), then, for methods that ask, `reconstruct` for each context
//! reconstruction pass (KVzip) and `pooled_scores`/`keep_pooled` for a budget pooled over layers,
//! `end_prefill` once the whole context is in (where most methods compress), then `attend` for
//! appended question tokens and every decode step (where decode-time eviction runs, every step or
//! every N steps). Caches that evict hold non-contiguous positions;
//! [`attend_at_positions`] masks by the kept positions, not by slot index.

use crate::buffer::KvBuffer;
use crate::dtype::DType;
use crate::error::{Error, Result};
use tch::{Device, Kind, Tensor};

/// What a layer's cache receives for one forward step (a prefill chunk or one decoded token).
pub struct AttentionStep<'a> {
    /// Layer index.
    pub layer: usize,
    /// Queries after RoPE, `[B, Hq, L, D]` in the compute dtype.
    pub q: &'a Tensor,
    /// New keys after RoPE, `[B, Hkv, L, D]`.
    pub k: &'a Tensor,
    /// New values, `[B, Hkv, L, D]`.
    pub v: &'a Tensor,
    /// Absolute position of the first new token.
    pub start_pos: usize,
    /// Sliding attention window of this layer, if any.
    pub sliding_window: Option<usize>,
    /// Softmax scale (1/sqrt(D)).
    pub scale: f64,
}

/// Shape and storage settings a cache factory needs to build a layer's cache.
#[derive(Clone, Copy, Debug)]
pub struct CacheSpec {
    pub batch: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub kv_dtype: DType,
    pub device: Device,
    /// Tokens the caller expects to store (prompt + generation), to size the first allocation.
    pub expected_tokens: usize,
    /// Query heads of the model (a multiple of `kv_heads`).
    pub query_heads: usize,
    /// Decoder layers of the model (layer-wise budget schedules need it).
    pub num_layers: usize,
    /// Tokens of the context that will be prefilled before `end_prefill`, when the caller knows
    /// it up front (methods that compress during prefill size their budget from it).
    pub context_tokens: Option<usize>,
    /// The model's rotary embedding (keys and queries arrive rotated), when the engine knows it;
    /// `None` for caches built outside a model (an external plugin's caches through the C
    /// interface, synthetic tests). Methods that need it say so when it is missing.
    pub rope: Option<crate::rope::Rope>,
}

impl CacheSpec {
    /// Query heads per KV head.
    pub fn group(&self) -> usize {
        (self.query_heads / self.kv_heads.max(1)).max(1)
    }

    /// The model's rotary embedding when it turns all `head_dim` channels, which undoing or
    /// re-turning a key's or query's position needs; otherwise an error saying that `who` needs
    /// it and what this cache was given (no rotary embedding, or a partial one).
    pub fn full_rope(&self, who: &str) -> Result<crate::rope::Rope> {
        match self.rope {
            Some(rope) if rope.head_dim() == self.head_dim => Ok(rope),
            other => Err(Error::InvalidArgument {
                what: "CacheSpec::rope",
                value: other.map_or("none (this cache was built without the model's RoPE)".into(), |r| format!("{} rotated channels", r.head_dim())),
                expected: format!("a rotary embedding over all head_dim = {} channels, which {who} needs", self.head_dim),
            }),
        }
    }
}

/// One layer's KV cache.
pub trait LayerCache: Send {
    /// Stores the step's new K/V (or what the method keeps of them) and returns the attention
    /// output `[B, Hq, L, D]` of the step's queries over everything the cache attends to.
    fn attend(&mut self, step: &AttentionStep<'_>) -> Result<Tensor>;
    /// Tokens currently stored (the largest count over heads, for per-head caches).
    fn stored_tokens(&self) -> usize;
    /// Bytes of cache content really held on the device (codes, scales, indices included).
    fn bytes_held(&self) -> u64;
    /// KV bytes the latest attention step read. Retrieval caches (InfLLM, Quest) hold more than
    /// they attend to (blocks kept in a separate store, pages not selected); for every other
    /// cache this is `bytes_held`.
    fn bytes_attended(&self) -> u64 {
        self.bytes_held()
    }
    /// Bytes allocated, including spare capacity; never less than `bytes_held`.
    fn bytes_allocated(&self) -> u64 {
        self.bytes_held()
    }
    /// Forgets everything.
    fn reset(&mut self);
    /// Hook: the whole context has been prefilled (all chunks); compress now if the method does.
    fn end_prefill(&mut self) -> Result<()> {
        Ok(())
    }
    /// The most tokens per head this cache promises to hold after the current step, or `None`
    /// while it is unbounded (e.g. before a budget is fixed, or for the full cache).
    fn budget_tokens(&self) -> Option<usize> {
        None
    }
    /// Bytes offloaded to host memory (reported apart from `bytes_held`).
    fn bytes_offloaded(&self) -> u64 {
        0
    }
    /// Absolute positions held, one sorted list per (batch, KV head) in `b * kv_heads + h` order.
    fn kept_positions(&self) -> Vec<Vec<i64>>;
    /// Views of every tensor the cache holds (live regions only, no spare capacity), named;
    /// `bytes_held` must equal the sum of their sizes (the conformance suite checks it).
    fn held_tensors(&self) -> Vec<(&'static str, Tensor)>;
    /// A deep copy that evolves independently ("compress once, ask many"); `None` if unsupported.
    fn fork(&self) -> Option<Box<dyn LayerCache>> {
        None
    }
    /// Shared prefill: the step of a prefill chunk whose attention output the engine computes
    /// once for every method of a group (plain causal attention over the same prompt, which is
    /// what a method declaring [`CacheFactory::shared_prefill`] computes). The cache must end in
    /// exactly the state [`LayerCache::attend`] would leave (same K/V stored, same queries and
    /// attention statistics kept); it may skip computing the output. The default calls `attend`
    /// and drops the output, which is always exact.
    fn observe(&mut self, step: &AttentionStep<'_>) -> Result<()> {
        self.attend(step).map(drop)
    }
    /// Context reconstruction ([`CacheFactory::reconstruction`], KVzip): after the prompt and
    /// before `end_prefill`, the engine runs a prompt repeating the context positions
    /// `pass.target` (`pass.step`, at the positions right after the prompt). The cache stores
    /// none of the pass's tokens and records the scores its method needs; it returns the
    /// attention output of the pass's queries over what it holds and the pass's own tokens
    /// (causal) when `pass.want_output`, and the scores it recorded. The default refuses.
    fn reconstruct(&mut self, _pass: &ReconstructionPass<'_>) -> Result<ReconstructionOutput> {
        Err(Error::Unsupported("this cache takes no context reconstruction passes (CacheFactory::reconstruction)".into()))
    }
    /// A budget pooled over the layers of a sequence (KVzip, kvpress `layerwise = False`): at the
    /// end of prefill the engine asks every layer for the scores of its stored tokens
    /// (`[B, Hkv, S]`, comparable across layers) and how many tokens per head it would keep
    /// alone; it keeps the best of all layers together, as many as the layers would keep in all,
    /// and tells each layer how many of each head's tokens survive ([`LayerCache::keep_pooled`]),
    /// then calls `end_prefill`. `None` (the default): this layer budgets alone.
    fn pooled_scores(&mut self) -> Result<Option<PooledScores>> {
        Ok(None)
    }
    /// Keeps the best `per_head[b * kv_heads + h]` stored tokens of each (batch, KV head), as the
    /// pooled budget decided ([`LayerCache::pooled_scores`]).
    fn keep_pooled(&mut self, _per_head: &[usize]) -> Result<()> {
        Err(Error::Unsupported("this cache does not pool its budget over layers".into()))
    }
}

/// One layer's step of a context reconstruction pass ([`LayerCache::reconstruct`]).
pub struct ReconstructionPass<'a> {
    /// The pass's tokens at this layer, at the positions right after the prompt.
    pub step: &'a AttentionStep<'a>,
    /// The context positions this pass repeats.
    pub target: std::ops::Range<usize>,
    /// Whether the engine needs the attention output (one cache of a shared group computes it).
    pub want_output: bool,
    /// Scores another cache recorded for this same pass over the same uncompressed prompt, with
    /// the same [`crate::scorer::Reconstruction`]: record these instead of computing them again.
    pub scores: Option<&'a Tensor>,
}

/// What a reconstruction pass returns ([`LayerCache::reconstruct`]).
pub struct ReconstructionOutput {
    /// `[B, Hq, L, D]`, when asked for.
    pub output: Option<Tensor>,
    /// `[B, Hkv, target.len()]`, the scores recorded for the target, if any.
    pub scores: Option<Tensor>,
}

/// A layer's part of a budget pooled over layers ([`LayerCache::pooled_scores`]).
pub struct PooledScores {
    /// `[B, Hkv, S]` f32 scores of the stored tokens (higher is kept).
    pub scores: Tensor,
    /// Tokens per head this layer would keep alone.
    pub keep: usize,
}

/// Bytes of a tensor's elements.
pub fn tensor_bytes(t: &Tensor) -> u64 {
    (t.numel() * t.kind().elt_size_in_bytes()) as u64
}

/// Builds the per-layer caches of one method.
pub trait CacheFactory: Send + Sync {
    /// Registered method name (e.g. `full`).
    fn name(&self) -> &str;
    /// A fresh cache for `layer`.
    fn layer_cache(&self, layer: usize, spec: &CacheSpec) -> Result<Box<dyn LayerCache>>;
    /// Whether this method's prefill is plain full causal attention over the exact K/V (it only
    /// compresses at `end_prefill` or later), so one prefill of a prompt can serve it and every
    /// other such method: the engine runs the prompt once and each method's caches
    /// [`LayerCache::observe`] the same steps. Methods that change prefill itself (chunked
    /// StreamingLLM, InfLLM, quantized prefill attention) keep the default, `false`.
    fn shared_prefill(&self) -> bool {
        false
    }
    /// Context reconstruction passes the engine must run before `end_prefill`
    /// ([`LayerCache::reconstruct`]; KVzip). Their cost is part of the method's prefill time.
    fn reconstruction(&self) -> Option<crate::scorer::Reconstruction> {
        None
    }
}

/// The uncompressed cache.
#[derive(Clone, Copy, Debug, Default)]
pub struct FullCacheFactory;

impl CacheFactory for FullCacheFactory {
    fn name(&self) -> &str {
        "full"
    }
    fn layer_cache(&self, _layer: usize, spec: &CacheSpec) -> Result<Box<dyn LayerCache>> {
        Ok(Box::new(FullCache::new(*spec)))
    }
    fn shared_prefill(&self) -> bool {
        true
    }
}

/// The uncompressed cache: every token in one [`KvBuffer`], keys for the contiguous absolute
/// positions `first_pos..first_pos+len`.
///
/// Appending a token writes one slot (the buffer grows geometrically); attention reads views.
/// Sliding-window layers drop tokens that fall out of the window (compacting at most once per
/// window length), so their memory is bounded.
pub struct FullCache {
    buf: KvBuffer,
}

impl FullCache {
    /// An empty cache.
    pub fn new(spec: CacheSpec) -> Self {
        FullCache { buf: KvBuffer::new(spec) }
    }

    /// Stored keys and values as views `[B, Hkv, len, D]`.
    pub fn views(&self) -> Option<(Tensor, Tensor)> {
        self.buf.views()
    }

    /// Absolute position of the first stored token.
    pub fn first_pos(&self) -> usize {
        self.buf.first_pos()
    }
}

impl FullCache {
    /// Stores the step's K/V (a sliding layer first drops what its window no longer needs).
    fn store(&mut self, step: &AttentionStep<'_>) {
        // A sliding layer only ever needs the last `window - 1` old tokens: compact lazily.
        if let (Some(w), false) = (step.sliding_window, self.buf.is_empty()) {
            let oldest_needed = step.start_pos.saturating_sub(w.saturating_sub(1));
            let droppable = oldest_needed.saturating_sub(self.buf.first_pos()).min(self.buf.len());
            if droppable >= w.max(1) {
                self.buf.drop_front(droppable);
            }
        }
        self.buf.append(step.k, step.v, step.start_pos);
    }
}

impl LayerCache for FullCache {
    fn attend(&mut self, step: &AttentionStep<'_>) -> Result<Tensor> {
        self.store(step);
        let (k, v) = self.buf.views().expect("storage allocated by append");
        Ok(attend_contiguous(step, &k, &v, self.buf.first_pos()))
    }

    fn observe(&mut self, step: &AttentionStep<'_>) -> Result<()> {
        self.store(step);
        Ok(())
    }

    fn stored_tokens(&self) -> usize {
        self.buf.len()
    }

    fn bytes_held(&self) -> u64 {
        self.buf.bytes_held()
    }

    fn bytes_allocated(&self) -> u64 {
        self.buf.bytes_allocated()
    }

    fn reset(&mut self) {
        self.buf.clear_keep_capacity();
    }

    fn kept_positions(&self) -> Vec<Vec<i64>> {
        self.buf.kept_positions()
    }

    fn held_tensors(&self) -> Vec<(&'static str, Tensor)> {
        self.buf.held_tensors()
    }

    fn fork(&self) -> Option<Box<dyn LayerCache>> {
        Some(Box::new(FullCache { buf: self.buf.deep_copy() }))
    }
}

/// Attention of `step.q` over keys/values `[B, Hkv, S, D]` holding the contiguous absolute
/// positions `k_start..k_start+S` (the step's own tokens included), causal and windowed.
///
/// GQA is handled without repeating K/V: plain prefill and decoding use libtorch's `enable_gqa`
/// kernels (the ones transformers uses, so results match it bit for bit); masked chunks fold the
/// `G = Hq/Hkv` query heads that share a KV head into the query axis (`[B, Hkv, G*L, D]`).
/// When the cache dtype differs from the compute dtype, attention runs in the cache dtype (the
/// queries are cast, not the whole cache), so no step allocates a cache-sized copy.
pub fn attend_contiguous(step: &AttentionStep<'_>, k: &Tensor, v: &Tensor, k_start: usize) -> Tensor {
    let q = step.q;
    let (b, hq, l, d) = q.size4().expect("queries are [B, H, L, D]");
    let hkv = k.size()[1];
    let s = k.size()[2] as usize;
    let group = hq / hkv;
    let out_kind = q.kind();
    let kv_kind = k.kind();
    let q = if kv_kind != out_kind { q.to_kind(kv_kind) } else { q.shallow_clone() };
    let q_start = step.start_pos;
    let window = step.sliding_window;

    // Fast paths: a plain causal prefill from an empty cache, and single-token decoding.
    let no_prefix = k_start == q_start && s == l as usize;
    let window_inactive = window.is_none_or(|w| w >= s);
    let out = if no_prefix && window_inactive && l > 1 {
        Tensor::scaled_dot_product_attention(&q, k, v, None::<&Tensor>, 0.0, true, step.scale, group > 1)
    } else if l == 1 && window_inactive {
        // libtorch's own GQA path: no K/V copy, and the same kernel (hence the same bits) as
        // transformers' SDPA decoding, so greedy continuations match token for token.
        Tensor::scaled_dot_product_attention(&q, k, v, None::<&Tensor>, 0.0, false, step.scale, group > 1)
    } else {
        let mask = causal_window_mask(q_start, l as usize, k_start, s, window, k.device());
        let qg = q.reshape([b, hkv, group * l, d]);
        let mask = mask.repeat([group, 1]);
        Tensor::scaled_dot_product_attention(&qg, k, v, Some(&mask), 0.0, false, step.scale, false).reshape([b, hq, l, v.size()[3]])
    };
    if out.kind() != out_kind {
        out.to_kind(out_kind)
    } else {
        out
    }
}

/// Boolean mask `[L, S]`: query at absolute position `q_start+i` may see key `k_start+j` when the
/// key is not in its future and, with a window `w`, is less than `w` positions behind.
pub fn causal_window_mask(q_start: usize, l: usize, k_start: usize, s: usize, window: Option<usize>, device: Device) -> Tensor {
    let qpos = Tensor::arange_start(q_start as i64, (q_start + l) as i64, (Kind::Int64, device)).unsqueeze(1);
    let kpos = Tensor::arange_start(k_start as i64, (k_start + s) as i64, (Kind::Int64, device)).unsqueeze(0);
    let causal = kpos.le_tensor(&qpos);
    match window {
        Some(w) => causal.logical_and(&(&qpos - &kpos).lt(w as i64)),
        None => causal,
    }
}

/// Which keys a query may see besides causality: the layer's sliding window and, for
/// StreamingLLM-style attention, sink tokens plus a local window.
#[derive(Clone, Copy, Debug, Default)]
pub struct Visibility {
    /// The layer's own sliding window (`q - k < w`).
    pub window: Option<usize>,
    /// Sinks and local window: a key is visible if `k < sinks` or `q - k < local`.
    pub sinks_local: Option<(usize, usize)>,
}

/// Boolean mask for queries at `q_start..q_start+L` (folded `G` times, the GQA group) against
/// keys at the absolute positions `kpos` (`[B, Hkv, S]`, any order); it broadcasts to
/// `[B, Hkv, G*L, S]`.
///
/// When every (batch, KV head) row holds the same positions (StreamingLLM, contiguous stores) the
/// mask is built once as `[G*L, S]`; otherwise `[B, Hkv, G*L, S]`. Distances are computed per
/// query position (`[L, S]`, not per folded query) in 32 bits and the result is boolean, so a long
/// masked prefill chunk costs a few bytes per (query, key) pair, not 8·G·B·Hkv.
pub fn position_mask(q_start: usize, l: usize, group: usize, kpos: &Tensor, vis: Visibility) -> Tensor {
    let device = kpos.device();
    let flat = kpos.flatten(0, -2); // [B·Hkv, S]
    let first = flat.narrow(0, 0, 1); // [1, S]
    let shared = flat.size()[0] <= 1 || flat.eq_tensor(&first).all().int64_value(&[]) == 1;
    // Keys `[1, S]` (shared) or `[B, Hkv, 1, S]`; queries `[L, 1]`.
    let kpos = if shared { first } else { kpos.unsqueeze(-2) }.to_kind(Kind::Int);
    let qpos = Tensor::arange_start(q_start as i64, (q_start + l) as i64, (Kind::Int, device)).unsqueeze(1);
    let dist = &qpos - &kpos;
    let mut mask = dist.ge(0);
    if let Some(w) = vis.window {
        mask = mask.logical_and(&dist.lt(w as i64));
    }
    if let Some((sinks, local)) = vis.sinks_local {
        mask = mask.logical_and(&kpos.lt(sinks as i64).logical_or(&dist.lt(local as i64)));
    }
    drop(dist);
    // Fold the group: query row `g*L + i` of the folded axis is query `i`.
    if group <= 1 {
        mask
    } else if shared {
        mask.repeat([group as i64, 1])
    } else {
        mask.repeat([1, 1, group as i64, 1])
    }
}

/// Attention of `step.q` over keys/values `[B, Hkv, S, D]` held at the absolute positions `kpos`
/// (`[B, Hkv, S]`; evicting caches hold non-contiguous positions, possibly different per head),
/// with GQA folded as in [`attend_contiguous`] and the mask built from the positions.
pub fn attend_at_positions(step: &AttentionStep<'_>, k: &Tensor, v: &Tensor, kpos: &Tensor, vis: Visibility) -> Tensor {
    let q = step.q;
    let (b, hq, l, d) = q.size4().expect("queries are [B, H, L, D]");
    let hkv = k.size()[1];
    let group = hq / hkv;
    let out_kind = q.kind();
    let kv_kind = k.kind();
    let q = if kv_kind != out_kind { q.to_kind(kv_kind) } else { q.shallow_clone() };
    let vis = Visibility { window: vis.window.or(step.sliding_window), ..vis };
    let mask = position_mask(step.start_pos, l as usize, group as usize, kpos, vis);
    let qg = q.reshape([b, hkv, group * l, d]);
    let out = Tensor::scaled_dot_product_attention(&qg, k, v, Some(&mask), 0.0, false, step.scale, false).reshape([b, hq, l, v.size()[3]]);
    if out.kind() != out_kind {
        out.to_kind(out_kind)
    } else {
        out
    }
}

/// Query rows per block in [`attend_sinks_local`] (at most the local window).
pub const SINKS_LOCAL_BLOCK: usize = 256;

/// StreamingLLM's attention (sinks plus a local window, [`Visibility::sinks_local`]) for a long
/// run of queries, one block of at most [`SINKS_LOCAL_BLOCK`] queries at a time, each block over
/// only the sinks and the keys its window can reach: a prefill of `L` tokens costs about
/// `L · (sinks + local)` score entries instead of `L · S`, and no mask is larger than a block.
///
/// On CPU, when the cache holds the sinks and then one contiguous run of positions (StreamingLLM's
/// store during prefill), each block is three flash-attention calls merged by their log-sum-exps:
/// the keys every query of the block sees (no mask), the block's own keys (causal), and the
/// window's trailing edge (a `block × block` mask). Otherwise (another layout, another device, a
/// layer with its own sliding window) each block is one masked call. Either way the visibility is
/// exactly [`attend_at_positions`]'s; only how the sums are blocked differs (outputs agree to
/// float rounding, ~1e-6).
pub fn attend_sinks_local(step: &AttentionStep<'_>, k: &Tensor, v: &Tensor, kpos: &Tensor, vis: Visibility) -> Tensor {
    let l = step.q.size()[2] as usize;
    let Some((sinks, local)) = vis.sinks_local else { return attend_at_positions(step, k, v, kpos, vis) };
    if l <= 1 || local == 0 {
        return attend_at_positions(step, k, v, kpos, vis);
    }
    let flat = kpos.flatten(0, -2);
    let shared = flat.size()[0] <= 1 || flat.eq_tensor(&flat.narrow(0, 0, 1)).all().int64_value(&[]) == 1;
    let row: Vec<i64> = match Vec::<i64>::try_from(flat.get(0).to_kind(Kind::Int64).to_device(Device::Cpu)) {
        Ok(r) if shared && r.windows(2).all(|w| w[0] < w[1]) => r,
        _ => return attend_at_positions(step, k, v, kpos, vis),
    };
    // Slots `[0, ns)` hold the sinks (positions are ascending).
    let ns = row.partition_point(|&p| p < sinks as i64);
    let sinks_then_run = row[..ns].iter().enumerate().all(|(i, &p)| p == i as i64) && row[ns..].windows(2).all(|w| w[1] == w[0] + 1);
    let window_free = vis.window.or(step.sliding_window).is_none();
    if k.device() == Device::Cpu && window_free && sinks_then_run && local >= 16 {
        let run_start = row.get(ns).map_or(ns as i64, |&p| p) as usize;
        if let Some(out) = sinks_local_flash(step, k, v, ns, run_start, local) {
            return out;
        }
    }
    // The sink slots and slots `[lo, hi)` along the sequence axis (a view when they touch).
    let slots = |t: &Tensor, lo: usize, hi: usize| -> Tensor {
        if ns == 0 {
            t.narrow(2, lo as i64, (hi - lo) as i64)
        } else if lo == ns {
            t.narrow(2, 0, hi as i64)
        } else {
            Tensor::cat(&[t.narrow(2, 0, ns as i64), t.narrow(2, lo as i64, (hi - lo) as i64)], 2)
        }
    };
    let mut outs = Vec::with_capacity(l.div_ceil(SINKS_LOCAL_BLOCK));
    let mut a = 0;
    while a < l {
        let n = SINKS_LOCAL_BLOCK.min(l - a);
        let (first, end) = ((step.start_pos + a) as i64, (step.start_pos + a + n) as i64);
        // Keys some query of the block may see besides the sinks: positions in (first - local, end).
        let lo = row.partition_point(|&p| p <= first - local as i64).max(ns);
        let hi = row.partition_point(|&p| p < end).max(lo);
        let q = step.q.narrow(2, a as i64, n as i64);
        let sub = AttentionStep { q: &q, start_pos: step.start_pos + a, ..*step };
        outs.push(attend_at_positions(&sub, &slots(k, lo, hi), &slots(v, lo, hi), &slots(kpos, lo, hi), vis));
        a += n;
    }
    Tensor::cat(&outs, 2)
}

/// StreamingLLM's attention with the sink positions that InfLLM's `stream-llm` (the paper's
/// StreamingLLM) assigns: the keys a query sees are [`attend_sinks_local`]'s (sinks, and keys less
/// than `local` positions behind it), and a key inside the local window keeps its distance to the
/// query, but a sink `j` outside the window (`P - j >= local` for the query at `P`) is seen at
/// distance `local + sinks - j`, as if the sinks sat just before a full window, however far behind
/// they are. So no query is ever farther than `local + sinks` positions from a key it attends.
///
/// The keys are held rotated at their absolute positions `kpos` (`[B, Hkv, S]`, the same for every
/// head, any order; sinks are the positions `< sinks`), and so are the queries; for their scores
/// against the far sinks, each query's rotation is turned from its own position `P` to
/// `local + sinks` (RoPE is relative: `R(a)q · R(b)k` depends on `a - b` only), which is InfLLM's
/// `apply_rotary_pos_emb_one_angle(q, n_local + n_init)` against sinks at `0..n_init`. One explicit
/// softmax in f32 over both parts, one block of at most [`SINKS_LOCAL_BLOCK`] queries at a time,
/// each over the sinks and the keys its window reaches.
pub fn attend_sinks_local_reindexed(
    step: &AttentionStep<'_>,
    k: &Tensor,
    v: &Tensor,
    kpos: &Tensor,
    sinks: usize,
    local: usize,
    rope: crate::rope::Rope,
) -> Result<Tensor> {
    let (b, hq, l, d) = step.q.size4()?;
    let hkv = k.size()[1];
    let group = hq / hkv;
    let dv = v.size()[3];
    let device = k.device();
    if rope.head_dim() != d as usize {
        return Err(Error::InvalidArgument {
            what: "re-indexed sink positions",
            value: format!("{} rotated channels", rope.head_dim()),
            expected: format!("head_dim = {d} (partial rotary embeddings are not supported)"),
        });
    }
    if let Some(w) = step.sliding_window {
        // InfLLM's stream-llm has no model window to combine with its own; say so, not guess.
        return Err(Error::Unsupported(format!("re-indexed sink positions on a layer with its own sliding window ({w} tokens)")));
    }
    let flat = kpos.flatten(0, -2);
    if flat.size()[0] > 1 && flat.eq_tensor(&flat.narrow(0, 0, 1)).all().int64_value(&[]) != 1 {
        return Err(Error::Unsupported("re-indexed sink positions need every head to hold the same positions".into()));
    }
    let row = Vec::<i64>::try_from(flat.get(0).to_kind(Kind::Int64).to_device(Device::Cpu))?;
    let sink_slots: Vec<i64> = (0..row.len() as i64).filter(|&i| row[i as usize] < sinks as i64).collect();
    let slot_positions = |slots: &[i64]| -> Tensor {
        let p: Vec<i64> = slots.iter().map(|&i| row[i as usize]).collect();
        Tensor::from_slice(&p).to_device(device).unsqueeze(0)
    };
    let pick = |t: &Tensor, slots: &[i64]| t.index_select(2, &Tensor::from_slice(slots).to_device(device)).to_kind(Kind::Float);
    let (ks, vs, sink_pos) = (pick(k, &sink_slots), pick(v, &sink_slots), slot_positions(&sink_slots));
    let mut outs = Vec::with_capacity((l as usize).div_ceil(SINKS_LOCAL_BLOCK));
    let mut a = 0usize;
    while a < l as usize {
        let n = SINKS_LOCAL_BLOCK.min(l as usize - a);
        let (first, end) = ((step.start_pos + a) as i64, (step.start_pos + a + n) as i64);
        let qpos: Vec<i64> = (first..end).collect();
        let qp = Tensor::from_slice(&qpos).to_device(device).unsqueeze(1);
        let q = step.q.narrow(2, a as i64, n as i64).to_kind(Kind::Float);
        // Sinks and the keys some query of the block may reach: positions in (first - local, end).
        let near: Vec<i64> = (0..row.len() as i64)
            .filter(|&i| {
                let p = row[i as usize];
                p < sinks as i64 || (p > first - local as i64 && p < end)
            })
            .collect();
        let dist = &qp - &slot_positions(&near);
        let visible = dist.ge(0).logical_and(&dist.lt(local as i64)).repeat([group, 1]);
        let qg = q.reshape([b, hkv, group * n as i64, d]);
        let near_logits = (qg.matmul(&pick(k, &near).transpose(-1, -2)) * step.scale).masked_fill(&visible.logical_not(), f64::NEG_INFINITY);
        let near_values = pick(v, &near);
        let far = (&qp - &sink_pos).ge(local as i64).repeat([group, 1]);
        let (logits, values) = if sink_slots.is_empty() || !bool::try_from(far.any())? {
            (near_logits, near_values)
        } else {
            let turn: Vec<i64> = qpos.iter().map(|&p| (local + sinks) as i64 - p).collect();
            let (cos, sin) = rope.cos_sin(&turn, device);
            let qf = crate::rope::apply_rotary(&q, &cos, &sin).reshape([b, hkv, group * n as i64, d]);
            let far_logits = (qf.matmul(&ks.transpose(-1, -2)) * step.scale).masked_fill(&far.logical_not(), f64::NEG_INFINITY);
            (Tensor::cat(&[near_logits, far_logits], -1), Tensor::cat(&[&near_values, &vs], 2))
        };
        let probs = logits.softmax(-1, Kind::Float);
        outs.push(probs.matmul(&values).reshape([b, hq, n as i64, dv]));
        a += n;
    }
    Ok(Tensor::cat(&outs, 2).to_kind(step.q.kind()))
}

/// The CPU flash path of [`attend_sinks_local`]: keys in slots `[0, ns)` are the sinks (position =
/// slot) and slot `ns + i` holds position `run_start + i`. Per query block `[qa, qb)`
/// (`qb - qa ≤ local`), a key at position `j` is visible to query `p` when `j ≤ p` and
/// (`j` is a sink or `p - j < local`), so the block's keys split into three parts:
/// - *every query sees*: the sinks before `qa`, and positions `[mid, qa)` with `mid = qb - local`;
/// - *causal*: the block's own positions `[qa, qb)` (all within the window, as `qb - qa ≤ local`);
/// - *edge*: positions `[qa + 1 - local, mid)`, visible while `p - j < local` (a mask).
///
/// Each part is one `_scaled_dot_product_flash_attention_for_cpu` call, which also returns the
/// log-sum-exp of each query's scores, and the parts merge exactly:
/// `out = Σ_i exp(lse_i - m) · out_i / Σ_i exp(lse_i - m)`. Returns `None` for a layout it does not
/// cover (a block starting inside the sinks of a trimmed store).
fn sinks_local_flash(step: &AttentionStep<'_>, k: &Tensor, v: &Tensor, ns: usize, run_start: usize, local: usize) -> Option<Tensor> {
    let (b, hq, l, d) = step.q.size4().ok()?;
    let hkv = k.size()[1];
    let group = hq / hkv;
    let out_kind = step.q.kind();
    let q_all = if k.kind() != out_kind { step.q.to_kind(k.kind()) } else { step.q.shallow_clone() };
    let base = ns.max(run_start); // first non-sink position held
    if step.start_pos < ns && run_start != ns {
        return None;
    }
    let slot = |p: usize| if p < ns { p } else { ns + p - run_start };
    let block = SINKS_LOCAL_BLOCK.min(local);
    // Folds a query block's GQA group into the query axis: `[B, Hkv, G·n, D]`, row `g·n + i`.
    let fold = |q: &Tensor, n: i64| q.reshape([b, hkv, group * n, d]);
    let unfold = |(o, lse): (Tensor, Tensor), n: i64| (o.reshape([b, hq, n, d]), lse.reshape([b, hq, n]));
    let flash = |q: &Tensor, k: &Tensor, v: &Tensor, causal: bool, mask: Option<&Tensor>| {
        Tensor::internal_scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, mask, step.scale)
    };
    let mut outs = Vec::with_capacity(l as usize / block + 1);
    let mut a = 0usize;
    while a < l as usize {
        let n = block.min(l as usize - a);
        let (qa, qb) = (step.start_pos + a, step.start_pos + a + n);
        let q = q_all.narrow(2, a as i64, n as i64);
        let ni = n as i64;
        let mut parts: Vec<(Tensor, Tensor)> = Vec::with_capacity(3);
        // Causal: the block's own keys, K/V repeated per query head (libtorch's CPU flash kernel
        // has no GQA).
        let (kb, vb) = (k.narrow(2, slot(qa) as i64, ni), v.narrow(2, slot(qa) as i64, ni));
        let rep = |t: &Tensor| t.unsqueeze(2).expand([b, hkv, group, ni, d], false).reshape([b, hq, ni, d]);
        parts.push(flash(&q, &rep(&kb), &rep(&vb), true, None));
        let lo = base.max((qa + 1).saturating_sub(local)).min(qa);
        let mid = lo.max(qa.min(qb.saturating_sub(local)));
        // Every query sees: the sinks before the block and positions [mid, qa).
        let n_sinks = ns.min(qa);
        let (ka, va) = match (n_sinks, mid < qa) {
            (0, false) => (None, None),
            (_, false) => (Some(k.narrow(2, 0, n_sinks as i64)), Some(v.narrow(2, 0, n_sinks as i64))),
            (0, true) => (Some(k.narrow(2, slot(mid) as i64, (qa - mid) as i64)), Some(v.narrow(2, slot(mid) as i64, (qa - mid) as i64))),
            (_, true) if slot(mid) == n_sinks => (Some(k.narrow(2, 0, slot(qa) as i64)), Some(v.narrow(2, 0, slot(qa) as i64))),
            (_, true) => {
                let part = |t: &Tensor| Tensor::cat(&[t.narrow(2, 0, n_sinks as i64), t.narrow(2, slot(mid) as i64, (qa - mid) as i64)], 2);
                (Some(part(k)), Some(part(v)))
            }
        };
        if let (Some(ka), Some(va)) = (ka, va) {
            parts.push(unfold(flash(&fold(&q, ni), &ka, &va, false, None), ni));
        }
        // The edge: positions [lo, mid), query p sees j when p - j < local.
        if mid > lo {
            let e = (mid - lo) as i64;
            let qpos = Tensor::arange_start(qa as i64, qb as i64, (Kind::Int64, k.device())).unsqueeze(1);
            let kpos = Tensor::arange_start(lo as i64, mid as i64, (Kind::Int64, k.device())).unsqueeze(0);
            let seen = (&qpos - &kpos).lt(local as i64); // [n, e]
            let mask = Tensor::zeros([ni, e], (q.kind(), k.device())).masked_fill(&seen.logical_not(), f64::NEG_INFINITY).repeat([group, 1]);
            let (o, lse) = unfold(flash(&fold(&q, ni), &k.narrow(2, slot(lo) as i64, e), &v.narrow(2, slot(lo) as i64, e), false, Some(&mask)), ni);
            // Queries that see none of the edge get weight 0 (the kernel's output there is not
            // meaningful).
            let any = seen.any_dim(1, false).view([1, 1, ni]);
            parts.push((o.masked_fill(&any.logical_not().unsqueeze(-1), 0.0), lse.masked_fill(&any.logical_not(), f64::NEG_INFINITY)));
        }
        outs.push(merge_by_lse(parts));
        a += n;
    }
    let out = Tensor::cat(&outs, 2);
    Some(if out.kind() != out_kind { out.to_kind(out_kind) } else { out })
}

/// Attention of a chunk's queries (`step`, at positions `P..P+L`) over `P` earlier keys at
/// positions `0..P`, all visible, and the chunk's own keys, causal: a chunk after a prefix, with
/// no `[L, P + L]` mask. On CPU it is two flash-attention calls (the prefix with the GQA group
/// folded into the query axis; the chunk causal) merged by their log-sum-exps, agreeing with
/// [`attend_contiguous`] over the concatenated keys to float rounding (~1e-6); elsewhere (or with
/// a sliding window) it is that call.
pub fn attend_after_prefix(step: &AttentionStep<'_>, k_prefix: &Tensor, v_prefix: &Tensor) -> Tensor {
    let (b, hq, l, d) = step.q.size4().expect("queries are [B, H, L, D]");
    let (hkv, p) = (k_prefix.size()[1], k_prefix.size()[2]);
    let kind = k_prefix.kind();
    let (k_new, v_new) = (step.k.to_kind(kind), step.v.to_kind(kind));
    let same_dims = k_prefix.size()[3] == d && v_prefix.size()[3] == d;
    if k_prefix.device() != Device::Cpu || step.sliding_window.is_some() || p == 0 || !same_dims || step.start_pos < p as usize {
        let k = Tensor::cat(&[k_prefix, &k_new], 2);
        let v = Tensor::cat(&[v_prefix, &v_new], 2);
        return attend_contiguous(step, &k, &v, step.start_pos - p as usize);
    }
    let group = hq / hkv;
    let out_kind = step.q.kind();
    let q = step.q.to_kind(kind);
    let flash = |q: &Tensor, k: &Tensor, v: &Tensor, causal: bool| {
        Tensor::internal_scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, None::<&Tensor>, step.scale)
    };
    let (o, lse) = flash(&q.reshape([b, hkv, group * l, d]), k_prefix, v_prefix, false);
    let before = (o.reshape([b, hq, l, d]), lse.reshape([b, hq, l]));
    let rep = |t: &Tensor| t.unsqueeze(2).expand([b, hkv, group, l, d], false).reshape([b, hq, l, d]);
    let own = flash(&q, &rep(&k_new), &rep(&v_new), true);
    let out = merge_by_lse(vec![before, own]);
    if out.kind() != out_kind {
        out.to_kind(out_kind)
    } else {
        out
    }
}

/// Combines attention outputs over disjoint key sets from their log-sum-exps (`[B, H, L]`, one
/// part at least finite per query): the softmax over the union of the key sets.
fn merge_by_lse(parts: Vec<(Tensor, Tensor)>) -> Tensor {
    if parts.len() == 1 {
        return parts.into_iter().next().expect("one part").0;
    }
    let kind = parts[0].0.kind();
    let lses: Vec<Tensor> = parts.iter().map(|(_, l)| l.to_kind(Kind::Float)).collect();
    let m = Tensor::stack(&lses, 0).amax(0, false);
    let mut num: Option<Tensor> = None;
    let mut den: Option<Tensor> = None;
    for ((o, _), lse) in parts.iter().zip(&lses) {
        let w = (lse - &m).exp();
        let t = o.to_kind(Kind::Float) * w.unsqueeze(-1);
        num = Some(match num {
            Some(x) => x + t,
            None => t,
        });
        den = Some(match den {
            Some(x) => x + w,
            None => w,
        });
    }
    (num.expect("parts") / den.expect("parts").unsqueeze(-1)).to_kind(kind)
}

/// Explicit attention probabilities `softmax(q kᵀ · scale)` in f32, `[B, Hq, W, S]`, of queries
/// `q` (`[B, Hq, W, D]`, at positions `q_start..q_start+W`) over keys `k` (`[B, Hkv, S, D]`, at
/// positions `kpos`), causal by position. SDPA returns no weights; methods that score tokens by
/// attention (SnapKV, H2O, TOVA) call this on the few queries they need.
pub fn attention_probs(q: &Tensor, q_start: usize, k: &Tensor, kpos: &Tensor, scale: f64, window: Option<usize>) -> Tensor {
    let (b, hq, w, d) = q.size4().expect("queries are [B, H, W, D]");
    let hkv = k.size()[1];
    let s = k.size()[2];
    let group = hq / hkv;
    let qg = q.to_kind(Kind::Float).reshape([b, hkv, group * w, d]);
    let logits = qg.matmul(&k.to_kind(Kind::Float).transpose(-1, -2)) * scale;
    let mask = position_mask(q_start, w as usize, group as usize, kpos, Visibility { window, sinks_local: None });
    let logits = logits.masked_fill(&mask.logical_not(), f64::NEG_INFINITY);
    logits.softmax(-1, Kind::Float).reshape([b, hq, w, s])
}

/// Positions `start..start+len` as a `[B, Hkv, len]` tensor.
pub fn contiguous_positions(spec: &CacheSpec, start: usize, len: usize) -> Tensor {
    Tensor::arange_start(start as i64, (start + len) as i64, (Kind::Int64, spec.device))
        .view([1, 1, -1])
        .expand([spec.batch as i64, spec.kv_heads as i64, len as i64], false)
        .contiguous()
}
