//! A growable contiguous K/V buffer (`[B, H, tokens, D]`) on a chosen device, shared by both
//! retrieval caches: InfLLM's init tokens, local window and (host-side) block store, and Quest's
//! page store. It grows like `kvcache::cache::FullCache` (same capacity rule, so views have the
//! same strides and the unbounded paths compute the very same bits) and can drop its front.

use kvcache::cache::CacheSpec;
use tch::{Device, Kind, Tensor};

/// Keys and values of contiguous tokens with spare capacity for appends.
pub(crate) struct KvBuf {
    batch: i64,
    heads: i64,
    dim: i64,
    kind: Kind,
    device: Device,
    expected: usize,
    k: Option<Tensor>,
    v: Option<Tensor>,
    cap: usize,
    len: usize,
}

impl KvBuf {
    /// An empty buffer shaped by `spec`, stored on `device`.
    pub(crate) fn new(spec: &CacheSpec, device: Device) -> Self {
        KvBuf {
            batch: spec.batch as i64,
            heads: spec.kv_heads as i64,
            dim: spec.head_dim as i64,
            kind: spec.kv_dtype.kind(),
            device,
            expected: spec.expected_tokens,
            k: None,
            v: None,
            cap: 0,
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn device(&self) -> Device {
        self.device
    }

    fn alloc(&self, cap: usize) -> Tensor {
        Tensor::empty([self.batch, self.heads, cap as i64, self.dim], (self.kind, self.device))
    }

    fn reserve(&mut self, needed: usize) {
        if needed <= self.cap {
            return;
        }
        // FullCache's growth rule, so the views match it stride for stride.
        let cap = needed.max(self.cap * 2).max(self.expected.min(needed.max(1) * 4));
        let (nk, nv) = (self.alloc(cap), self.alloc(cap));
        if let (Some(k), Some(v)) = (&self.k, &self.v) {
            if self.len > 0 {
                nk.narrow(2, 0, self.len as i64).copy_(&k.narrow(2, 0, self.len as i64));
                nv.narrow(2, 0, self.len as i64).copy_(&v.narrow(2, 0, self.len as i64));
            }
        }
        self.k = Some(nk);
        self.v = Some(nv);
        self.cap = cap;
    }

    /// Appends `[B, H, n, D]` keys and values (cast and moved to the buffer's dtype and device).
    pub(crate) fn append(&mut self, k: &Tensor, v: &Tensor) {
        let n = k.size()[2] as usize;
        if n == 0 {
            return;
        }
        self.reserve(self.len + n);
        if let (Some(bk), Some(bv)) = (&self.k, &self.v) {
            bk.narrow(2, self.len as i64, n as i64).copy_(k);
            bv.narrow(2, self.len as i64, n as i64).copy_(v);
        }
        self.len += n;
    }

    /// Live keys and values as views `[B, H, len, D]`.
    pub(crate) fn views(&self) -> Option<(Tensor, Tensor)> {
        match (&self.k, &self.v) {
            (Some(k), Some(v)) if self.len > 0 => Some((k.narrow(2, 0, self.len as i64), v.narrow(2, 0, self.len as i64))),
            _ => None,
        }
    }

    /// Drops the oldest `n` tokens, moving the rest to the front.
    pub(crate) fn drop_front(&mut self, n: usize) {
        let n = n.min(self.len);
        if n == 0 {
            return;
        }
        let keep = (self.len - n) as i64;
        for t in [self.k.as_ref(), self.v.as_ref()].into_iter().flatten() {
            if keep > 0 {
                let tail = t.narrow(2, n as i64, keep).copy();
                t.narrow(2, 0, keep).copy_(&tail);
            }
        }
        self.len -= n;
    }

    /// Bytes of the live tokens.
    pub(crate) fn bytes(&self) -> u64 {
        (2 * self.batch * self.heads * self.dim) as u64 * self.len as u64 * self.kind.elt_size_in_bytes() as u64
    }

    /// Bytes allocated, spare capacity included.
    pub(crate) fn bytes_allocated(&self) -> u64 {
        (2 * self.batch * self.heads * self.dim) as u64 * self.cap as u64 * self.kind.elt_size_in_bytes() as u64
    }

    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }

    pub(crate) fn deep_copy(&self) -> Self {
        let copy = |t: &Option<Tensor>| t.as_ref().map(|t| t.copy());
        KvBuf { k: copy(&self.k), v: copy(&self.v), ..*self }
    }
}
