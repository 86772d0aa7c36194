//! InfLLM (`infllm`): initial tokens + a local window stay resident, tokens leaving the window are
//! grouped into blocks kept in a block memory (in host memory on GPU runs) with a few
//! representative keys each, and every chunk of queries attends to the initial tokens, the top-k
//! blocks most similar to it and the resident window. Xiao et al., "InfLLM: Training-Free
//! Long-Context Extrapolation for LLMs with an Efficient Context Memory", NeurIPS 2024
//! (arXiv 2402.04617), with the budget split of the paper's benchmark (longctx_bench).

use crate::store::KvBuf;
use kvcache::cache::{position_mask, AttentionStep, CacheFactory, CacheSpec, FullCache, LayerCache, Visibility};
use kvcache::params::Budget;
use kvcache::params::{ParamDoc, Params};
use kvcache::registration::MethodRegistration;
use kvcache::MethodError;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// InfLLM's settings; the budget knobs are resolved per context by [`InfLlmConfig::knobs`].
#[derive(Clone, Debug)]
pub struct InfLlmConfig {
    pub budget: Budget,
    /// Caps the context length the budget is computed from (the paper's `model_max_len`).
    pub max_len: Option<usize>,
    pub block_size: usize,
    pub repr_topk: usize,
    pub exc_block_size: usize,
    pub init_ratio: f64,
    pub topk_ratio: f64,
    pub min_local: usize,
    pub n_init: Option<usize>,
    pub topk: Option<usize>,
    pub n_local: Option<usize>,
    /// Retrieve the same blocks for every head of a layer (InfLLM) instead of per KV head.
    pub shared_blocks: bool,
    /// The model's RoPE base: when set, retrieval scores are position-free as in InfLLM
    /// (representative keys un-rotated to position 0, queries rotated to distance `n_local`);
    /// when unset, keys and queries are compared with their absolute positions.
    pub rope_theta: Option<f64>,
    /// Position-free retrieval scores with the model's own rotary frequencies
    /// ([`CacheSpec::rope`]: its base and any scaling, as the paper's InfLLM takes them from the
    /// model), instead of a `rope_theta` given by hand.
    pub model_rope: bool,
    /// InfLLM's positions in attention (`positions = "reindexed"`): a key within `n_local` of the
    /// query at its true distance, every other key (init tokens, retrieved blocks, the remainder
    /// not yet in a block) at the one distance `n_local` (its key un-rotated to position 0, the
    /// query turned to `n_local`, InfLLM's `apply_rotary_pos_emb_one_angle`). Needs the model's
    /// RoPE ([`CacheSpec::rope`]). False: every key at its absolute position.
    pub reindex: bool,
}

/// The resolved budget split for one context length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Knobs {
    /// Total token budget.
    pub budget: usize,
    /// Initial (sink) tokens kept resident.
    pub n_init: usize,
    /// Blocks retrieved per query chunk.
    pub topk: usize,
    /// Local window (tokens).
    pub n_local: usize,
}

/// The fraction of the context a `ratio = N` budget keeps (0.17 at 6x, as the paper's configs).
pub use kvcache::params::paper_fraction;

impl InfLlmConfig {
    /// Defaults of the paper's benchmark with `ratio = N`.
    pub fn new(budget: Budget) -> Self {
        InfLlmConfig {
            budget,
            max_len: None,
            block_size: 128,
            repr_topk: 4,
            exc_block_size: 512,
            init_ratio: 0.021,
            topk_ratio: 0.324,
            min_local: 512,
            n_init: None,
            topk: None,
            n_local: None,
            shared_blocks: true,
            rope_theta: None,
            model_rope: false,
            reindex: false,
        }
    }

    /// The token budget for a `context`-token prompt:
    /// `int(fraction * min(context, max_len))` (or the absolute `tokens`).
    pub fn budget_tokens(&self, context: usize) -> usize {
        let len = self.max_len.map_or(context, |m| m.min(context));
        match self.budget {
            Budget::Ratio(r) => (paper_fraction(r) * len as f64).floor() as usize,
            Budget::Tokens(k) => k,
            Budget::Fraction(f) => (f.min(1.0) * len as f64).floor() as usize,
        }
    }

    /// The paper's split: `n_init = int(budget * 0.021)`, `topk = int(budget * 0.324) // block`,
    /// `n_local = max(512, budget - n_init - topk * block)`; explicit settings override each.
    pub fn knobs(&self, context: usize) -> Knobs {
        let budget = self.budget_tokens(context);
        let n_init = self.n_init.unwrap_or((budget as f64 * self.init_ratio).floor() as usize);
        let topk = self.topk.unwrap_or((budget as f64 * self.topk_ratio).floor() as usize / self.block_size);
        let n_local = self.n_local.unwrap_or_else(|| self.min_local.max(budget.saturating_sub(n_init + topk * self.block_size)));
        Knobs { budget, n_init, topk, n_local: n_local.max(1) }
    }

    /// Whether the budget covers a whole `context` (then the cache is the full cache).
    pub fn covers(&self, context: usize) -> bool {
        match self.budget {
            Budget::Ratio(r) if r <= 1.0 => self.max_len.is_none_or(|m| m >= context),
            _ => self.budget_tokens(context) >= context && self.n_local.is_none() && self.topk.is_none(),
        }
    }
}

/// Rotates `x` (`[..., n, D]`, f32, Hugging Face `rotate_half` layout) by RoPE angles for the
/// position shifts `shift` (`[n]`): un-rotates keys with `-pos`, moves queries by any offset.
pub fn rotate(x: &Tensor, shift: &Tensor, theta: f64) -> Tensor {
    let d = *x.size().last().expect("a last dimension");
    let half = d / 2;
    let dev = x.device();
    let inv = (Tensor::arange(half, (Kind::Double, dev)) * (-2.0 * theta.ln() / d as f64)).exp();
    let ang = shift.to_kind(Kind::Double).unsqueeze(1) * inv.unsqueeze(0); // [n, D/2]
    let ang = Tensor::cat(&[&ang, &ang], 1);
    let (cos, sin) = (ang.cos().to_kind(Kind::Float), ang.sin().to_kind(Kind::Float));
    let rot_half = Tensor::cat(&[&x.narrow(-1, half, half).neg(), &x.narrow(-1, 0, half)], -1);
    x * cos + rot_half * sin
}

/// Builds [`InfLlmCache`]s.
pub struct InfLlmFactory(pub Arc<InfLlmConfig>);

impl CacheFactory for InfLlmFactory {
    fn name(&self) -> &str {
        "infllm"
    }
    fn layer_cache(&self, _layer: usize, spec: &CacheSpec) -> kvcache::Result<Box<dyn LayerCache>> {
        if self.0.reindex {
            spec.full_rope("infllm with positions = \"reindexed\" (it un-rotates far keys)")?;
        }
        if self.0.model_rope && spec.rope.is_none() {
            return Err(kvcache::Error::Unsupported(
                "infllm: model_rope = true needs the model's rotary frequencies (CacheSpec::rope), and this model gives none; set rope_theta instead".into(),
            ));
        }
        Ok(Box::new(InfLlmCache::new(self.0.clone(), *spec)))
    }
}

/// One layer's InfLLM memory.
pub struct InfLlmCache {
    cfg: Arc<InfLlmConfig>,
    spec: CacheSpec,
    /// The budget covers the whole context: plain full attention.
    full: Option<FullCache>,
    knobs: Knobs,
    /// Absolute position of the first token seen.
    first_pos: Option<usize>,
    /// Initial tokens (resident).
    init: KvBuf,
    /// Block memory: `n_blocks * block_size` tokens from `first_pos + n_init` on, on the host for
    /// GPU runs.
    blocks: KvBuf,
    /// Representative key per block and query head (mean of its `repr_topk` representative
    /// tokens), `[B, Hq, n_blocks, D]`, on the device.
    repr: Option<Tensor>,
    /// Resident tokens after the init tokens that are not in blocks yet (local window + the
    /// partial next block).
    local: KvBuf,
    /// Position of the first resident token of `local`.
    local_start: usize,
    /// Attention each resident token received from queries within `n_local` of it, per query
    /// head, `[B, Hq, local.len()]` f32 (picks the representative tokens).
    local_score: Option<Tensor>,
    /// KV tokens read by the latest attention step.
    attended_tokens: usize,
}

impl InfLlmCache {
    /// Whether retrieval scores are position-free (`rope_theta` or `model_rope`).
    fn position_free(&self) -> bool {
        self.cfg.rope_theta.is_some() || (self.cfg.model_rope && self.spec.rope.is_some())
    }

    /// `x` (`[..., n, D]`, f32) rotated by the RoPE angles of the position shifts `shift` (`n`),
    /// with the model's frequencies (`model_rope`) or `rope_theta`'s.
    fn shift(&self, x: &Tensor, shift: &[i64]) -> Tensor {
        match (self.cfg.model_rope, self.spec.rope, self.cfg.rope_theta) {
            (true, Some(rope), _) => {
                let (cos, sin) = rope.cos_sin(shift, x.device());
                kvcache::rope::apply_rotary(x, &cos, &sin)
            }
            (_, _, Some(theta)) => rotate(x, &Tensor::from_slice(shift).to_device(x.device()), theta),
            _ => x.shallow_clone(),
        }
    }

    pub fn new(cfg: Arc<InfLlmConfig>, spec: CacheSpec) -> Self {
        let context = spec.context_tokens.unwrap_or(spec.expected_tokens);
        let knobs = cfg.knobs(context);
        let full = cfg.covers(context).then(|| FullCache::new(spec));
        let host = if spec.device.is_cuda() { Device::Cpu } else { spec.device };
        InfLlmCache {
            full,
            knobs,
            first_pos: None,
            init: KvBuf::new(&spec, spec.device),
            blocks: KvBuf::new(&spec, host),
            repr: None,
            local: KvBuf::new(&spec, spec.device),
            local_start: 0,
            local_score: None,
            attended_tokens: 0,
            cfg,
            spec,
        }
    }

    /// The budget split in use.
    pub fn knobs(&self) -> Knobs {
        self.knobs
    }

    /// Number of blocks in the block memory.
    pub fn num_blocks(&self) -> usize {
        self.blocks.len() / self.cfg.block_size
    }

    fn blocks_start(&self) -> usize {
        self.first_pos.unwrap_or(0) + self.init.len()
    }

    /// Blocks most similar to the chunk queries `q` (`[B, Hq, L, D]`, at positions from
    /// `pos0`): the mean query per head dotted with each block's representative key, averaged
    /// over all heads (`shared_blocks`) or over each KV head's query group; returns block ids
    /// `[B, Hkv, k]`, ascending.
    pub fn select_blocks(&self, q: &Tensor, pos0: usize) -> Option<Tensor> {
        let nb = self.num_blocks() as i64;
        let topk = self.knobs.topk as i64;
        if nb == 0 || topk == 0 {
            return None;
        }
        let (b, hkv) = (self.spec.batch as i64, self.spec.kv_heads as i64);
        let dev = self.spec.device;
        if nb <= topk {
            return Some(Tensor::arange(nb, (Kind::Int64, dev)).view([1, 1, nb]).expand([b, hkv, nb], false));
        }
        let repr = self.repr.as_ref()?.to_kind(Kind::Float);
        let mut qf = q.to_kind(Kind::Float);
        if self.position_free() {
            // Move every query to distance n_local from the position-0 representative keys.
            let l = q.size()[2];
            let shift: Vec<i64> = (pos0 as i64..pos0 as i64 + l).map(|p| self.knobs.n_local as i64 - p).collect();
            qf = self.shift(&qf, &shift);
        }
        let qm = qf.mean_dim(2, false, Kind::Float); // [B, Hq, D]
        let scores = repr.matmul(&qm.unsqueeze(-1)).squeeze_dim(-1); // [B, Hq, nb]
        let ids = if self.cfg.shared_blocks {
            let s = scores.mean_dim(1, false, Kind::Float); // [B, nb]
            s.topk(topk, -1, true, false).1.unsqueeze(1).expand([b, hkv, topk], false)
        } else {
            let hq = scores.size()[1];
            let s = scores.view([b, hkv, hq / hkv, nb]).mean_dim(2, false, Kind::Float);
            s.topk(topk, -1, true, false).1
        };
        Some(ids.sort(-1, false).0)
    }

    /// Attention of one query chunk (at most `exc_block_size` queries) at `pos0`.
    fn attend_chunk(&mut self, q: &Tensor, k: &Tensor, v: &Tensor, pos0: usize, scale: f64, window: Option<usize>) -> Tensor {
        let (b, hq, n, d) = q.size4().expect("queries are [B, H, L, D]");
        let hkv = self.spec.kv_heads as i64;
        let group = hq / hkv;
        let first = *self.first_pos.get_or_insert(pos0);
        let kind = self.spec.kv_dtype.kind();
        let dev = self.spec.device;
        let (k, v) = (k.to_kind(kind), v.to_kind(kind));

        // 1. Store the new tokens: the first `n_init` ever seen become init tokens.
        let mut taken = 0;
        if self.local.len() == 0 && self.blocks.len() == 0 && self.init.len() < self.knobs.n_init {
            taken = (self.knobs.n_init - self.init.len()).min(n as usize) as i64;
            self.init.append(&k.narrow(2, 0, taken), &v.narrow(2, 0, taken));
        }
        if self.local.len() == 0 && self.blocks.len() == 0 {
            self.local_start = first + self.init.len();
        }
        if taken < n {
            self.local.append(&k.narrow(2, taken, n - taken), &v.narrow(2, taken, n - taken));
            let zeros = Tensor::zeros([b, hq, n - taken], (Kind::Float, dev));
            self.local_score = Some(match &self.local_score {
                Some(s) => Tensor::cat(&[s, &zeros], 2),
                None => zeros,
            });
        }

        // 2. Retrieve blocks for this chunk (from blocks formed before it).
        let selected = self.select_blocks(q, pos0);

        // 3. Gather init + retrieved + resident keys with their positions.
        let mut ks = Vec::new();
        let mut vs = Vec::new();
        let mut ps = Vec::new();
        let pos_range = |start: usize, len: usize| {
            Tensor::arange_start(start as i64, (start + len) as i64, (Kind::Int64, dev)).view([1, 1, -1]).expand([b, hkv, len as i64], false)
        };
        if let Some((ik, iv)) = self.init.views() {
            ps.push(pos_range(first, self.init.len()));
            ks.push(ik);
            vs.push(iv);
        }
        if let Some(ids) = &selected {
            let bs = self.cfg.block_size as i64;
            let tok = (ids.unsqueeze(-1) * bs + Tensor::arange(bs, (Kind::Int64, dev))).flatten(2, 3); // [B, Hkv, k*bs]
            let (bk, bv) = self.blocks.views().expect("blocks exist when selected");
            let host_idx = tok.to_device(self.blocks.device()).unsqueeze(-1).expand([b, hkv, tok.size()[2], d], false);
            ks.push(bk.gather(2, &host_idx, false).to_device(dev));
            vs.push(bv.gather(2, &host_idx, false).to_device(dev));
            ps.push(tok + self.blocks_start() as i64);
        }
        let local_len = self.local.len();
        if let Some((lk, lv)) = self.local.views() {
            ps.push(pos_range(self.local_start, local_len));
            ks.push(lk);
            vs.push(lv);
        }
        let keys = Tensor::cat(&ks, 2).to_kind(Kind::Float);
        let vals = Tensor::cat(&vs, 2).to_kind(Kind::Float);
        let kpos = Tensor::cat(&ps, 2);
        let s = keys.size()[2];
        self.attended_tokens = s as usize;

        // 4. Attention (explicit, so the local scores come with it).
        let mask = position_mask(pos0, n as usize, group as usize, &kpos, Visibility { window, sinks_local: None });
        let qg = q.to_kind(Kind::Float).reshape([b, hkv, group * n, d]);
        // Scaled and masked in place: the same values as out-of-place operations, without two more
        // `[B, Hkv, G·L, S]` buffers per chunk (tens of MB each at 4K tokens, every one of them
        // freshly mapped and faulted in).
        let mut logits = qg.matmul(&keys.transpose(-1, -2));
        if let (true, Some(rope)) = (self.cfg.reindex, self.spec.rope) {
            logits = self.reindexed_logits(logits, &qg, &keys, &kpos, pos0, n, group, rope);
        }
        let _ = logits.g_mul_scalar_(scale);
        let _ = logits.masked_fill_(&mask.logical_not(), f64::NEG_INFINITY);
        let probs = logits.softmax(-1, Kind::Float);
        drop(logits);
        let out = probs.matmul(&vals).reshape([b, hq, n, d]).to_kind(q.kind());

        // 5. Local scores: attention the resident tokens got from queries within n_local of them.
        if local_len > 0 {
            let lp = probs.narrow(-1, s - local_len as i64, local_len as i64).view([b, hq, n, local_len as i64]);
            let qpos = Tensor::arange_start(pos0 as i64, pos0 as i64 + n, (Kind::Int64, dev)).unsqueeze(1);
            let kp = Tensor::arange_start(self.local_start as i64, (self.local_start + local_len) as i64, (Kind::Int64, dev)).unsqueeze(0);
            let near = (qpos - kp).lt(self.knobs.n_local as i64).to_kind(Kind::Float); // [L, R]
            let add = (lp * near).sum_dim_intlist(2, false, Kind::Float);
            if let Some(sc) = &mut self.local_score {
                let _ = sc.g_add_(&add);
            }
        }

        // 6. Tokens leaving the local window form blocks.
        self.form_blocks();
        out
    }

    /// InfLLM's positions (`positions = "reindexed"`): `near` holds the scores of the folded
    /// queries `qg` (`[B, Hkv, G·L, D]`, rotated at `pos0..pos0+L`) against `keys` rotated at
    /// their absolute positions `kpos` (`[B, Hkv, S]`), right for keys within `n_local` of the
    /// query; every farther key is scored at distance `n_local` instead: the key un-rotated to
    /// position 0, the query turned to `n_local`.
    #[allow(clippy::too_many_arguments)]
    fn reindexed_logits(&self, near: Tensor, qg: &Tensor, keys: &Tensor, kpos: &Tensor, pos0: usize, l: i64, group: i64, rope: kvcache::rope::Rope) -> Tensor {
        let dev = keys.device();
        let (b, hkv, s, d) = keys.size4().expect("keys are [B, Hkv, S, D]");
        let minus: Vec<i64> = Vec::<i64>::try_from(kpos.flatten(0, -1).neg().to_device(Device::Cpu)).expect("key positions");
        let (cos, sin) = rope.cos_sin(&minus, dev);
        let raw = kvcache::rope::apply_rotary(keys, &cos.view([b, hkv, s, d]), &sin.view([b, hkv, s, d]));
        let turn: Vec<i64> = (pos0 as i64..pos0 as i64 + l).map(|p| self.knobs.n_local as i64 - p).collect();
        let (cos, sin) = rope.cos_sin(&turn, dev);
        // Folded row `g·L + i` is query `i`: the same turn for every `g`.
        let (cos, sin) = (cos.repeat([group, 1]), sin.repeat([group, 1]));
        let far_scores = kvcache::rope::apply_rotary(qg, &cos, &sin).matmul(&raw.transpose(-1, -2));
        let qpos = Tensor::arange_start(pos0 as i64, pos0 as i64 + l, (Kind::Int, dev)).repeat([group]).view([1, 1, group * l, 1]);
        let far = (qpos - kpos.to_kind(Kind::Int).unsqueeze(2)).ge(self.knobs.n_local as i64);
        far_scores.where_self(&far, &near)
    }

    /// Moves whole blocks out of the resident window while it holds `n_local + block_size`
    /// tokens or more, picking each block's representative tokens by local score.
    fn form_blocks(&mut self) {
        let bs = self.cfg.block_size;
        let len = self.local.len();
        if len < self.knobs.n_local + bs {
            return;
        }
        let nb = ((len - self.knobs.n_local) / bs) as i64;
        let m = nb * bs as i64;
        let (lk, lv) = self.local.views().expect("resident tokens exist");
        let (b, hkv, _, d) = lk.size4().expect("[B, H, S, D]");
        let score = self.local_score.as_ref().expect("scores follow the resident tokens");
        let hq = score.size()[1];
        let group = hq / hkv;
        let bk = lk.narrow(2, 0, m);
        let bv = lv.narrow(2, 0, m);
        let r = self.cfg.repr_topk.min(bs) as i64;
        let top = score.narrow(2, 0, m).view([b, hq, nb, bs as i64]).topk(r, -1, true, false).1; // [B, Hq, nb, r]
        let mut bkf = bk.to_kind(Kind::Float);
        if self.position_free() {
            let shift: Vec<i64> = (self.local_start as i64..self.local_start as i64 + m).map(|p| -p).collect();
            bkf = self.shift(&bkf, &shift);
        }
        let kq = bkf.view([b, hkv, 1, nb, bs as i64, d]).expand([b, hkv, group, nb, bs as i64, d], false).reshape([b, hq, nb, bs as i64, d]);
        let rep = kq.gather(3, &top.unsqueeze(-1).expand([b, hq, nb, r, d], false), false).mean_dim(3, false, Kind::Float).to_kind(self.spec.kv_dtype.kind());
        self.repr = Some(match &self.repr {
            Some(old) => Tensor::cat(&[old, &rep], 2),
            None => rep,
        });
        let host = self.blocks.device();
        self.blocks.append(&bk.to_device(host), &bv.to_device(host));
        let rest = len as i64 - m;
        self.local_score = Some(score.narrow(2, m, rest).copy());
        self.local.drop_front(m as usize);
        self.local_start += m as usize;
    }

    fn repr_bytes(&self) -> u64 {
        self.repr.as_ref().map_or(0, kvcache::cache::tensor_bytes)
    }

    fn score_bytes(&self) -> u64 {
        self.local_score.as_ref().map_or(0, kvcache::cache::tensor_bytes)
    }

    fn token_bytes(&self) -> u64 {
        let s = &self.spec;
        (2 * s.batch * s.kv_heads * s.head_dim * s.kv_dtype.size_in_bytes()) as u64
    }
}

impl LayerCache for InfLlmCache {
    fn attend(&mut self, step: &AttentionStep<'_>) -> kvcache::Result<Tensor> {
        if let Some(full) = &mut self.full {
            return full.attend(step);
        }
        let l = step.q.size()[2];
        let chunk = self.cfg.exc_block_size.max(1) as i64;
        let mut outs = Vec::new();
        let mut s = 0;
        while s < l {
            let n = chunk.min(l - s);
            outs.push(self.attend_chunk(
                &step.q.narrow(2, s, n),
                &step.k.narrow(2, s, n),
                &step.v.narrow(2, s, n),
                step.start_pos + s as usize,
                step.scale,
                step.sliding_window,
            ));
            s += n;
        }
        Ok(if outs.len() == 1 { outs.pop().expect("one output") } else { Tensor::cat(&outs, 2) })
    }

    fn stored_tokens(&self) -> usize {
        match &self.full {
            Some(f) => f.stored_tokens(),
            None => self.init.len() + self.blocks.len() + self.local.len(),
        }
    }

    fn bytes_held(&self) -> u64 {
        match &self.full {
            Some(f) => f.bytes_held(),
            None => self.init.bytes() + self.blocks.bytes() + self.local.bytes() + self.repr_bytes() + self.score_bytes(),
        }
    }

    fn bytes_attended(&self) -> u64 {
        match &self.full {
            Some(f) => f.bytes_held(),
            None => self.attended_tokens as u64 * self.token_bytes(),
        }
    }

    fn bytes_allocated(&self) -> u64 {
        match &self.full {
            Some(f) => f.bytes_allocated(),
            None => self.init.bytes_allocated() + self.blocks.bytes_allocated() + self.local.bytes_allocated() + self.repr_bytes() + self.score_bytes(),
        }
    }

    fn bytes_offloaded(&self) -> u64 {
        match &self.full {
            Some(_) => 0,
            None if self.blocks.device() != self.spec.device => self.blocks.bytes(),
            None => 0,
        }
    }

    fn reset(&mut self) {
        if let Some(f) = &mut self.full {
            f.reset();
        }
        self.first_pos = None;
        self.init.clear();
        self.blocks.clear();
        self.local.clear();
        self.repr = None;
        self.local_score = None;
        self.local_start = 0;
        self.attended_tokens = 0;
    }

    fn kept_positions(&self) -> Vec<Vec<i64>> {
        if let Some(f) = &self.full {
            return f.kept_positions();
        }
        let first = self.first_pos.unwrap_or(0) as i64;
        let row: Vec<i64> = (first..first + self.stored_tokens() as i64).collect();
        vec![row; self.spec.batch * self.spec.kv_heads]
    }

    fn held_tensors(&self) -> Vec<(&'static str, Tensor)> {
        if let Some(f) = &self.full {
            return f.held_tensors();
        }
        let mut out = Vec::new();
        for buf in [&self.init, &self.blocks, &self.local] {
            if let Some((k, v)) = buf.views() {
                out.push(("k", k));
                out.push(("v", v));
            }
        }
        if let Some(r) = &self.repr {
            out.push(("repr_k", r.shallow_clone()));
        }
        if let Some(s) = &self.local_score {
            out.push(("local_score", s.shallow_clone()));
        }
        out
    }

    fn fork(&self) -> Option<Box<dyn LayerCache>> {
        let full = match &self.full {
            Some(f) => {
                return f.fork();
            }
            None => None,
        };
        Some(Box::new(InfLlmCache {
            cfg: self.cfg.clone(),
            spec: self.spec,
            full,
            knobs: self.knobs,
            first_pos: self.first_pos,
            init: self.init.deep_copy(),
            blocks: self.blocks.deep_copy(),
            repr: self.repr.as_ref().map(|t| t.copy()),
            local: self.local.deep_copy(),
            local_start: self.local_start,
            local_score: self.local_score.as_ref().map(|t| t.copy()),
            attended_tokens: self.attended_tokens,
        }))
    }
}

fn build(t: &toml::Table) -> Result<Arc<dyn CacheFactory>, MethodError> {
    let mut p = Params::new("infllm", t);
    let budget = p.budget(4.0)?;
    let mut cfg = InfLlmConfig::new(budget);
    cfg.max_len = p.opt_int("max_len", 1, usize::MAX >> 1)?;
    cfg.block_size = p.int("block_size", 128, 1, 1 << 16)?;
    cfg.repr_topk = p.int("repr_topk", 4, 1, 1 << 16)?;
    cfg.exc_block_size = p.int("exc_block_size", 512, 1, 1 << 20)?;
    cfg.init_ratio = p.float("init_ratio", 0.021, 0.0, 1.0)?;
    cfg.topk_ratio = p.float("topk_ratio", 0.324, 0.0, 1.0)?;
    cfg.min_local = p.int("min_local", 512, 0, usize::MAX >> 1)?;
    cfg.n_init = p.opt_int("n_init", 0, usize::MAX >> 1)?;
    cfg.topk = p.opt_int("topk", 0, usize::MAX >> 1)?;
    cfg.n_local = p.opt_int("n_local", 1, usize::MAX >> 1)?;
    cfg.shared_blocks = p.bool("shared_blocks", true)?;
    let theta = p.float("rope_theta", 0.0, 0.0, 1e12)?;
    cfg.rope_theta = (theta > 0.0).then_some(theta);
    cfg.model_rope = p.bool("model_rope", false)?;
    cfg.reindex = p.choice("positions", "absolute", &["absolute", "reindexed"])? == "reindexed";
    if cfg.model_rope && cfg.rope_theta.is_some() {
        return Err(p.refuse("model_rope", "true (with rope_theta)", "either model_rope = true (the model's own RoPE) or rope_theta, not both"));
    }
    p.finish()?;
    Ok(Arc::new(InfLlmFactory(Arc::new(cfg))))
}

const PARAMS: &[ParamDoc] = &[
    ParamDoc { name: "ratio", default: "4", help: "budget = int(fraction * min(prompt, max_len)) with fraction 1/N (ratio = 6: 0.17, as the paper's configs); 1 = full cache" },
    ParamDoc { name: "tokens", default: "(unset)", help: "absolute token budget instead of ratio" },
    ParamDoc { name: "max_len", default: "(unset)", help: "the model's max length the budget fraction applies to (the paper's model_max_len)" },
    ParamDoc { name: "block_size", default: "128", help: "tokens per memory block" },
    ParamDoc { name: "repr_topk", default: "4", help: "representative tokens per block (highest attention from local-window queries)" },
    ParamDoc { name: "exc_block_size", default: "512", help: "queries per retrieval chunk (prefill is processed in chunks of this size)" },
    ParamDoc { name: "init_ratio", default: "0.021", help: "n_init = int(budget * init_ratio)" },
    ParamDoc { name: "topk_ratio", default: "0.324", help: "topk = int(budget * topk_ratio) // block_size" },
    ParamDoc { name: "min_local", default: "512", help: "n_local = max(min_local, budget - n_init - topk * block_size)" },
    ParamDoc { name: "n_init", default: "(from budget)", help: "override: initial tokens kept resident" },
    ParamDoc { name: "topk", default: "(from budget)", help: "override: blocks retrieved per chunk" },
    ParamDoc { name: "n_local", default: "(from budget)", help: "override: local window in tokens" },
    ParamDoc { name: "shared_blocks", default: "true", help: "retrieve the same blocks for all heads of a layer (InfLLM); false: per KV head" },
    ParamDoc { name: "model_rope", default: "false", help: "position-free retrieval scores with the model's own rotary frequencies (its base and scaling), as the paper's InfLLM; overrides the need for rope_theta" },
    ParamDoc { name: "positions", default: "absolute", help: "absolute: attention sees every key at its RoPE position; reindexed: as InfLLM, keys within n_local at their true distance, all others (init, retrieved blocks, remainder) at distance n_local (needs the model's RoPE)" },
    ParamDoc { name: "rope_theta", default: "0 (unset)", help: "the model's RoPE base (e.g. 100000 for SmolLM2): retrieval compares un-rotated keys with queries at distance n_local, position-free as InfLLM; unset: absolute-position scores (favour recent blocks)" },
];

kvcache::inventory::submit! {
    MethodRegistration {
        name: "infllm",
        family: "retrieval",
        summary: "block memory with representative keys; each query chunk attends to init + top-k blocks + local window (Xiao et al. 2024)",
        detail: "InfLLM (arXiv 2402.04617) with the budget split of the paper's benchmark: budget = int(f * min(prompt, max_len)), \
                 f = 1/N (0.17 for ratio = 6, as the paper's configs), n_init = int(budget * 0.021), topk = int(budget * 0.324) // \
                 block_size, n_local = max(512, budget - n_init - topk * block_size). The prompt length comes from the caller \
                 (CacheSpec::context_tokens), else the expected prompt + generation length. Every attend call is processed in \
                 chunks of exc_block_size queries; each chunk retrieves the top-k blocks by the dot product of its mean query \
                 with each block's representative key (mean of the repr_topk tokens that got the most attention from \
                 local-window queries), averaged over all heads (shared_blocks) and attends to init + retrieved blocks + every \
                 resident token before it (the local window plus the not-yet-blocked remainder, as InfLLM's complement \
                 window). Decoding retrieves per step (each step is a one-query chunk, as in InfLLM). Blocks live in host \
                 memory on GPU runs (bytes_offloaded); bytes_held counts everything (tokens, representative keys, scores), \
                 bytes_attended the KV of the latest chunk. positions = \"reindexed\" re-indexes attention as InfLLM does (keys \
                 within n_local at their true distance, all others at distance n_local). Deviations: by default keys keep \
                 their absolute RoPE positions in attention, and retrieval scores \
                 compare post-RoPE keys and queries and favour recent blocks unless rope_theta or model_rope = true is given (then \
                 representative keys are un-rotated and queries placed at distance n_local, as InfLLM; model_rope uses the \
                 model's own frequencies, scaling included); no GPU block LRU cache \
                 (retrieved blocks are gathered from the store every chunk); attention is computed in f32. ratio = 1 is the \
                 full cache.",
        params: PARAMS,
        build,
        scorer: None,
    }
}
