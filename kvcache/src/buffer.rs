//! The one growable K/V buffer every cache reuses: keys and values `[B, H, ·, D]` of tokens kept in
//! position order, with spare capacity so appending a token writes one slot and never copies the
//! whole cache. Positions are materialised only once the kept set stops being contiguous (after
//! an eviction), and an optional per-token score (accumulated attention) travels with its token.
//! Eviction moves the survivors to the front (in place when the storage is already the size they
//! need, else into fresh storage), so the memory of evicted tokens is returned.

use crate::cache::{contiguous_positions, tensor_bytes, CacheSpec};
use tch::{Kind, Tensor};

/// Tokens of `[B, H, ·, D]` K/V kept in position order, with spare capacity for appends; positions
/// are materialised only once the kept set stops being contiguous, and an optional per-token
/// score travels with its token.
pub struct KvBuffer {
    spec: CacheSpec,
    /// Channels per key: `head_dim`, or fewer once channels are pruned (ThinK).
    key_dim: usize,
    k: Option<Tensor>,
    v: Option<Tensor>,
    pos: Option<Tensor>,
    aux: Option<Tensor>,
    cap: usize,
    len: usize,
    first_pos: usize,
}

impl KvBuffer {
    /// An empty buffer shaped by `spec` (batch, KV heads, head dim, storage dtype, device).
    pub fn new(spec: CacheSpec) -> Self {
        KvBuffer { spec, key_dim: spec.head_dim, k: None, v: None, pos: None, aux: None, cap: 0, len: 0, first_pos: 0 }
    }
    /// The shape and storage settings this buffer was made with.
    pub fn spec(&self) -> &CacheSpec {
        &self.spec
    }
    /// Tokens the storage can hold before it grows.
    pub fn capacity(&self) -> usize {
        self.cap
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
        self.k = Some(grow(&self.k, vec![b, h, c, self.key_dim as i64], kind));
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

    /// Keeps the tokens at slot indices `idx` (`[B, H, n]`, ascending), in `n + headroom` slots
    /// so the memory of evicted tokens is returned: in place when the storage already has that
    /// many (decoding's one token in, one out, every step), else in fresh storage.
    pub fn keep(&mut self, idx: &Tensor, headroom: usize) {
        let n = idx.size()[2] as usize;
        if self.keep_in_place(idx, n, headroom) {
            return;
        }
        let (_, _, d) = self.dims();
        let Some((k, v)) = self.views() else { return };
        let positions = self.positions();
        let idx4 = idx.unsqueeze(-1).expand([-1, -1, -1, d], false);
        let kd = self.key_dim as i64;
        let nk = k.gather(2, &idx.unsqueeze(-1).expand([-1, -1, -1, kd], false), false);
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
        self.k = Some(fresh(&nk, &[b, h, cap as i64, kd], kind));
        self.v = Some(fresh(&nv, &[b, h, cap as i64, d], kind));
        self.pos = Some(fresh(&np, &[b, h, cap as i64], Kind::Int64));
        self.aux = na.map(|a| fresh(&a, &[b, h, cap as i64], Kind::Float));
        self.cap = cap;
        self.len = n;
        if n > 0 {
            self.first_pos = np.min().int64_value(&[]) as usize;
        }
    }

    /// [`KvBuffer::keep`] by moving the kept slots to the front of each `[B·H]` row of the
    /// storage it already has, when that is exactly `n + headroom` slots of contiguous CPU
    /// tensors and `idx` is ascending within the held tokens (else `false`, nothing changed).
    /// The same bytes end up in the same layout as a fresh copy, without gathering into a
    /// temporary and allocating the storage again.
    fn keep_in_place(&mut self, idx: &Tensor, n: usize, headroom: usize) -> bool {
        let (b, h, _) = self.dims();
        let rows = (b * h) as usize;
        let cap = self.cap;
        let on_cpu = self.spec.device == tch::Device::Cpu;
        if n == 0 || cap != n + headroom.max(1) || !on_cpu || idx.size() != [b, h, n as i64] || idx.kind() != Kind::Int64 {
            return false;
        }
        let Ok(slots) = Vec::<i64>::try_from(idx.contiguous().view([-1])) else { return false };
        let ascending = slots.chunks(n).all(|r| r.windows(2).all(|w| w[0] < w[1]) && r[0] >= 0 && (r[n - 1] as usize) < self.len);
        let stored = [&self.k, &self.v, &self.pos, &self.aux];
        let contiguous = stored.iter().all(|t| t.as_ref().is_none_or(|t| t.is_contiguous() && t.size()[2] as usize == cap));
        if !ascending || !contiguous || self.k.is_none() || self.v.is_none() {
            return false;
        }
        if self.pos.is_none() {
            self.materialise_positions();
        }
        for t in [&self.k, &self.v, &self.pos, &self.aux].into_iter().flatten() {
            let size = t.size();
            let slot_bytes = size[3..].iter().product::<i64>() as usize * t.kind().elt_size_in_bytes();
            let base = t.data_ptr() as *mut u8;
            for (r, kept) in slots.chunks(n).enumerate() {
                for (to, &from) in kept.iter().enumerate() {
                    let from = from as usize;
                    if from != to {
                        // SAFETY: `t` is a contiguous CPU tensor of `rows × cap` slots of
                        // `slot_bytes` bytes; `to < n <= cap` and `from < len <= cap` were checked
                        // above, and `ptr::copy` allows the overlap of a slot moving forward.
                        unsafe {
                            let row = base.add(r * cap * slot_bytes);
                            std::ptr::copy(row.add(from * slot_bytes), row.add(to * slot_bytes), slot_bytes);
                        }
                    }
                }
            }
        }
        self.len = n;
        let pos = self.pos.as_ref().expect("materialised above");
        // Each row's kept positions ascend, so its first slot is its smallest.
        self.first_pos = (0..rows as i64).map(|r| pos.view([rows as i64, cap as i64]).int64_value(&[r, 0])).min().unwrap_or(0) as usize;
        true
    }

    pub fn bytes_held(&self) -> u64 {
        self.held_tensors().iter().map(|(_, t)| tensor_bytes(t)).sum()
    }

    pub fn bytes_allocated(&self) -> u64 {
        let (b, h, d) = self.dims();
        let per = (b * h) as u64 * self.cap as u64;
        let mut bytes = per * (d as u64 + self.key_dim as u64) * self.spec.kv_dtype.size_in_bytes() as u64;
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
        if self.pos.is_none() {
            let range: Vec<i64> = (self.first_pos as i64..(self.first_pos + self.len) as i64).collect();
            return vec![range; (b * h) as usize];
        }
        let p = self.positions().to_device(tch::Device::Cpu).contiguous().view([b * h, -1]);
        (0..b * h).map(|i| Vec::<i64>::try_from(&p.get(i)).unwrap_or_default()).collect()
    }

    pub fn deep_copy(&self) -> Self {
        let c = |t: &Option<Tensor>| t.as_ref().map(|t| t.copy());
        KvBuffer {
            spec: self.spec,
            key_dim: self.key_dim,
            k: c(&self.k),
            v: c(&self.v),
            pos: c(&self.pos),
            aux: c(&self.aux),
            cap: self.cap,
            len: self.len,
            first_pos: self.first_pos,
        }
    }

    /// Forgets everything and returns the storage.
    pub fn clear(&mut self) {
        *self = KvBuffer::new(self.spec);
    }

    /// Forgets the tokens but keeps the storage for reuse (a cache's `reset`).
    pub fn clear_keep_capacity(&mut self) {
        self.len = 0;
        self.first_pos = 0;
        self.pos = None;
    }

    /// Drops the oldest `n` tokens of a contiguous buffer by moving the rest to the front of the
    /// storage (sliding-window layers, so their memory stays bounded).
    pub fn drop_front(&mut self, n: usize) {
        if n == 0 || n > self.len || self.pos.is_some() {
            return;
        }
        let keep = (self.len - n) as i64;
        for t in [self.k.as_mut(), self.v.as_mut(), self.aux.as_mut()].into_iter().flatten() {
            let tail = t.narrow(2, n as i64, keep).copy();
            t.narrow(2, 0, keep).copy_(&tail);
        }
        self.len -= n;
        self.first_pos += n;
    }

    /// Channels each stored key has (`head_dim` unless pruned).
    pub fn key_dim(&self) -> usize {
        self.key_dim
    }

    /// Keeps only the key channels `channels` (`[B, H, D']`, per (batch, head)) of every stored
    /// key, in fresh storage, so the pruned channels' memory is returned; later appends must
    /// bring keys of `D'` channels (the same ones). Values keep every channel.
    pub fn prune_key_channels(&mut self, channels: &Tensor) {
        let kd = channels.size()[2];
        if let Some(k) = &self.k {
            let idx = channels.unsqueeze(2).expand([-1, -1, self.cap as i64, kd], false);
            self.k = Some(k.gather(3, &idx, false).contiguous());
        }
        self.key_dim = kd as usize;
    }

    /// Row `(bi, hi)` of this buffer as a buffer of its own (batch 1, one KV head, `group` query
    /// heads) holding only the slots `idx` (`[1, 1, n]`, ascending) plus `headroom` spare slots.
    /// Per-head budgets (AdaKV) split a layer's buffer this way.
    pub fn head(&self, bi: i64, hi: i64, group: usize, idx: &Tensor, headroom: usize) -> KvBuffer {
        let one = CacheSpec { batch: 1, kv_heads: 1, query_heads: group, ..self.spec };
        let row = |t: &Tensor| t.narrow(0, bi, 1).narrow(1, hi, 1);
        let mut hs = KvBuffer {
            spec: one,
            key_dim: self.key_dim,
            k: self.k.as_ref().map(row),
            v: self.v.as_ref().map(row),
            pos: Some(row(&self.positions())),
            aux: self.aux.as_ref().map(row),
            cap: self.len,
            len: self.len,
            first_pos: self.first_pos,
        };
        // `keep` gathers into fresh storage, so nothing of the shared buffer stays referenced.
        hs.keep(idx, headroom);
        hs
    }
}
