//! Quantized KV caches (`kivi`, `flexgen`, `int8`, `int4`) and the quantized storage that an
//! eviction method can keep its tokens in (`storage = {method = "kivi", bits = 2}`).
//!
//! One cache type covers the four methods; a [`QuantConfig`] says how keys and values are
//! quantized, how long the full-precision residual is, and whether prefill attends to exact K/V:
//!
//! * **KIVI** (Liu et al. 2024, arXiv 2402.02750; `paper-protocol.md` §2.2, §6): keys per channel
//!   in groups of `group_size` consecutive tokens, values per token in groups of `group_size`
//!   channels. Prefill attends to the exact K/V; at its end keys `[0, T - T mod R)` and values
//!   `[0, T - R)` are quantized and the rest stays in full precision. While decoding, a new key
//!   joins the key residual, which is quantized as a block when it reaches `R` tokens; a new value
//!   joins the value residual, whose oldest token is quantized once it holds more than `R`.
//! * **FlexGen-style** (the paper's `flexgen` pipeline, §2.3): keys and values per token in
//!   groups of 32 channels, no residual, and prefill queries attend to the quantized K/V. With
//!   `fake = true` every step attends to all of K and V fake-quantized, exactly as the paper's
//!   simulation does (no memory saving: held bytes are the full cache's). The groups being per
//!   token, each token is fake-quantized once as it is stored, the same bits as re-quantizing the
//!   whole cache at every step.
//! * **int8 / int4**: symmetric per token (one scale per token and head over its `head_dim`
//!   channels, llama.cpp q8_0-like); prefill attends to exact K/V, everything is quantized at the
//!   end of prefill, and each decoded token is quantized before it is attended to.
//!
//! Decoding one token of an f32 cache on CPU reads the packed codes directly
//! ([`crate::quant_attend`]: scales and minimums folded into the scores and the value sums, one
//! pass, no dequantized copy). Elsewhere (16-bit caches, GPU) it attends block by block over at
//! most [`DECODE_BLOCK`] quantized tokens at a time with libtorch: the block's code values, and
//! the scales and minimums folded into the small operands (`(q ⊙ s)·c + q·m` for keys,
//! `(p ⊙ s)·c + p·m` for values), so no step builds a dequantized copy of the cache, not even of a
//! block. Multi-token steps (prefill
//! chunks of `flexgen`, an appended question) decode the cache once for that step and use the
//! masked SDPA path. Held bytes count codes, scales, minimums, residuals and kept positions.

use crate::quant::{fake_quantize, Packed, Quantizer};
use crate::quant_attend;
use kvcache::buffer::KvBuffer;
use kvcache::cache::{attend_at_positions, attend_contiguous, tensor_bytes, AttentionStep, CacheSpec, LayerCache, Visibility};
use kvcache::params::Params;
use kvcache::{DType, Error, MethodError, Result};
use tch::{Kind, Tensor};

/// Quantized tokens decoded at once while decoding.
pub const DECODE_BLOCK: usize = 1024;

/// How keys are grouped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyLayout {
    /// Groups along the channels of each token.
    PerToken,
    /// Groups along the tokens of each channel (KIVI): quantized `group` tokens at a time.
    PerChannel,
}

/// Whether one decoded token attends from the packed codes ([`crate::quant_attend`]) where it
/// can: yes unless `KVBENCH_QUANT_ATTEND=libtorch`, which keeps the libtorch path (read once; for
/// side-by-side measurements, since the two sum in different orders).
pub fn packed_attention_enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| !matches!(std::env::var("KVBENCH_QUANT_ATTEND").as_deref(), Ok("libtorch")))
}

/// Everything that makes one quantized cache.
#[derive(Clone, Debug)]
pub struct QuantConfig {
    pub name: String,
    pub key: Quantizer,
    pub key_layout: KeyLayout,
    pub value: Quantizer,
    /// Full-precision residual length `R` (KIVI); 0 quantizes every token on arrival.
    pub residual: usize,
    /// Prefill attends to the exact K/V, quantized at `end_prefill` (KIVI, int8, int4).
    pub exact_prefill: bool,
    /// Simulation only (FlexGen `fake = true`): keep originals, fake-quantize every step.
    pub fake: bool,
}

impl QuantConfig {
    /// KIVI with `bits` for keys and values.
    pub fn kivi(bits: u32, group: usize, residual: usize) -> Self {
        QuantConfig {
            name: format!("kivi-{bits}"),
            key: Quantizer::new(bits, group, false),
            key_layout: KeyLayout::PerChannel,
            value: Quantizer::new(bits, group, false),
            residual,
            exact_prefill: true,
            fake: false,
        }
    }
    /// FlexGen-style per-token asymmetric groups.
    pub fn flexgen(bits: u32, group: usize, fake: bool) -> Self {
        let q = Quantizer::new(bits, group, false);
        QuantConfig { name: format!("flexgen-{bits}"), key: q, key_layout: KeyLayout::PerToken, value: q, residual: 0, exact_prefill: false, fake }
    }
    /// Symmetric per-token `bits` (8 or 4) over the whole head dimension.
    pub fn symmetric(bits: u32, head_dim_group: usize) -> Self {
        let q = Quantizer::new(bits, head_dim_group, true);
        QuantConfig { name: format!("int{bits}"), key: q, key_layout: KeyLayout::PerToken, value: q, residual: 0, exact_prefill: true, fake: false }
    }

    /// The group sizes must fit the head dimension and the residual the key groups.
    pub fn validate(&self, head_dim: usize) -> Result<()> {
        let bad = |m: String| Error::InvalidArgument { what: "quantized cache", value: self.name.clone(), expected: m };
        self.value.check(head_dim).map_err(|e| bad(format!("values: {e} (head_dim {head_dim})")))?;
        match self.key_layout {
            KeyLayout::PerToken => self.key.check(head_dim).map_err(|e| bad(format!("keys: {e} (head_dim {head_dim})")))?,
            KeyLayout::PerChannel => {
                self.key.check(self.key.group).map_err(|e| bad(format!("keys: {e}")))?;
                if self.residual < self.key.group || !self.residual.is_multiple_of(self.key.group) {
                    return Err(bad(format!("residual_length {} to be a positive multiple of group_size {}", self.residual, self.key.group)));
                }
            }
        }
        Ok(())
    }

    /// Bytes per token and KV head of quantized storage (codes + parameters), for estimates.
    pub fn quantized_bytes_per_token(&self, head_dim: usize, param_bytes: usize) -> f64 {
        let d = head_dim as f64;
        (self.key.bits_per_element(param_bytes) + self.value.bits_per_element(param_bytes)) * d / 8.0
    }
}

/// The parameter kind for scales and minimums: f32 for an f32 cache, else f16 (as KIVI).
fn param_kind(kv: DType) -> Kind {
    match kv {
        DType::F32 => Kind::Float,
        _ => Kind::Half,
    }
}

/// Reads a quantized method's parameters (`kivi`, `flexgen`, `int8`, `int4`) from `p`.
pub fn quant_config(method: &str, p: &mut Params) -> std::result::Result<QuantConfig, MethodError> {
    let bad = |key: &str, value: String, expected: &str| MethodError::BadParam {
        method: method.to_string(),
        key: key.to_string(),
        value,
        expected: expected.to_string(),
    };
    Ok(match method {
        "kivi" => {
            let bits = p.int("bits", 2, 2, 4)?;
            if bits != 2 && bits != 4 {
                return Err(bad("bits", bits.to_string(), "2 or 4"));
            }
            let group = p.int("group_size", 32, 4, 4096)?;
            let residual = p.int("residual_length", 128, 0, 1 << 20)?;
            if residual < group || residual % group != 0 {
                return Err(bad("residual_length", residual.to_string(), &format!("a positive multiple of group_size ({group})")));
            }
            QuantConfig::kivi(bits as u32, group, residual)
        }
        "flexgen" => {
            let bits = p.int("bits", 4, 2, 8)?;
            if ![2, 4, 8].contains(&bits) {
                return Err(bad("bits", bits.to_string(), "2, 4 or 8"));
            }
            let group = p.int("group_size", 32, 4, 4096)?;
            let fake = p.bool("fake", false)?;
            QuantConfig::flexgen(bits as u32, group, fake)
        }
        // The group is the head dimension, known when the cache is built (0 = "head_dim").
        "int8" => QuantConfig::symmetric(8, 0),
        "int4" => QuantConfig::symmetric(4, 0),
        other => {
            return Err(MethodError::BadParam {
                method: method.to_string(),
                key: "storage.method".into(),
                value: format!("\"{other}\""),
                expected: "one of \"kivi\", \"flexgen\", \"int8\", \"int4\"".into(),
            })
        }
    })
}

/// Reads `storage = {method = "...", ...}` of an eviction method, if present.
pub fn storage_param(method: &str, p: &mut Params) -> std::result::Result<Option<QuantConfig>, MethodError> {
    let Some(table) = p.opt::<toml::Table>("storage", "a table such as {method = \"kivi\", bits = 2}")? else { return Ok(None) };
    let name = match table.get("method") {
        Some(toml::Value::String(s)) => s.clone(),
        other => {
            return Err(MethodError::BadParam {
                method: method.to_string(),
                key: "storage.method".into(),
                value: other.map_or("(missing)".into(), |v| v.to_string()),
                expected: "one of \"kivi\", \"flexgen\", \"int8\", \"int4\"".into(),
            })
        }
    };
    let mut rest = table.clone();
    rest.remove("method");
    let mut sp = Params::new(&format!("{method} storage {name}"), &rest);
    let cfg = quant_config(&name, &mut sp)?;
    if cfg.fake {
        return Err(MethodError::BadParam {
            method: method.to_string(),
            key: "storage.fake".into(),
            value: "true".into(),
            expected: "false (simulated storage saves nothing to compose with)".into(),
        });
    }
    sp.finish()?;
    Ok(Some(cfg))
}

/// The factory of [`QuantCache`]s.
pub struct QuantFactory(pub std::sync::Arc<QuantConfig>);

impl kvcache::cache::CacheFactory for QuantFactory {
    fn name(&self) -> &str {
        &self.0.name
    }
    fn layer_cache(&self, _layer: usize, spec: &CacheSpec) -> Result<Box<dyn LayerCache>> {
        Ok(Box::new(QuantCache::new(&self.0, *spec)?))
    }
    /// Exact-prefill methods (KIVI, int8, int4) attend to the exact K/V while prefilling and
    /// quantize at `end_prefill`; FlexGen-style prefill attends to the quantized K/V.
    fn shared_prefill(&self) -> bool {
        self.0.exact_prefill && !self.0.fake
    }
}

// ---------------------------------------------------------------------------------------------
// Storage

/// A tensor that grows along axis 2 with spare capacity (`[B, H, n, ...]`).
#[derive(Default)]
struct Grow {
    t: Option<Tensor>,
    len: i64,
}

impl Grow {
    fn append(&mut self, x: &Tensor) {
        let n = x.size()[2];
        let cap = self.t.as_ref().map_or(0, |t| t.size()[2]);
        if self.len + n > cap {
            let mut shape = x.size();
            shape[2] = (self.len + n).max(cap * 2).max(16);
            let fresh = Tensor::empty(shape.as_slice(), (x.kind(), x.device()));
            if let Some(old) = &self.t {
                if self.len > 0 {
                    fresh.narrow(2, 0, self.len).copy_(&old.narrow(2, 0, self.len));
                }
            }
            self.t = Some(fresh);
        }
        if let Some(t) = &self.t {
            t.narrow(2, self.len, n).copy_(x);
        }
        self.len += n;
    }
    fn narrow(&self, start: i64, n: i64) -> Option<Tensor> {
        self.t.as_ref().map(|t| t.narrow(2, start, n))
    }
    fn view(&self) -> Option<Tensor> {
        self.narrow(0, self.len).filter(|_| self.len > 0)
    }
    fn allocated(&self) -> u64 {
        self.t.as_ref().map_or(0, tensor_bytes)
    }
    fn deep_copy(&self) -> Grow {
        Grow { t: self.t.as_ref().map(|t| t.copy()), len: self.len }
    }
}

/// Quantized tokens of keys or values: packed codes, scales, minimums, along axis 2 (tokens for
/// the per-token layout, groups of tokens for the per-channel layout).
struct QStore {
    q: Quantizer,
    layout: KeyLayout,
    codes: Grow,
    scale: Grow,
    min: Grow,
    tokens: usize,
}

impl QStore {
    fn new(q: Quantizer, layout: KeyLayout) -> Self {
        QStore { q, layout, codes: Grow::default(), scale: Grow::default(), min: Grow::default(), tokens: 0 }
    }
    /// Quantizes and appends `[B, H, n, D]` (n a multiple of the group for the per-channel layout).
    fn push(&mut self, x: &Tensor, pk: Kind) {
        let n = x.size()[2];
        if n == 0 {
            return;
        }
        let p = match self.layout {
            KeyLayout::PerToken => self.q.quantize(x, pk),
            KeyLayout::PerChannel => {
                let (b, h, _, d) = x.size4().expect("[B, H, n, D]");
                let g = self.q.group as i64;
                // [B, H, n/G, D, G]: each channel's G tokens form one group.
                let xt = x.reshape([b, h, n / g, g, d]).transpose(-1, -2);
                self.q.quantize(&xt, pk)
            }
        };
        self.codes.append(&p.codes);
        self.scale.append(&p.scale);
        if let Some(m) = &p.min {
            self.min.append(m);
        }
        self.tokens += n as usize;
    }
    /// Tokens per unit of axis 2.
    fn unit(&self) -> usize {
        match self.layout {
            KeyLayout::PerToken => 1,
            KeyLayout::PerChannel => self.q.group,
        }
    }
    /// Decodes tokens `[start, start + n)` (multiples of the unit) to `[B, H, n, D]`.
    fn decode(&self, start: usize, n: usize, table: &Tensor, kind: Kind) -> Tensor {
        let u = self.unit();
        let (s, c) = ((start / u) as i64, (n / u) as i64);
        let p = Packed {
            codes: self.codes.narrow(s, c).expect("non-empty store"),
            scale: self.scale.narrow(s, c).expect("non-empty store"),
            min: self.min.narrow(s, c),
        };
        let x = self.q.dequantize(&p, table, kind);
        match self.layout {
            KeyLayout::PerToken => x,
            KeyLayout::PerChannel => {
                let sz = x.size(); // [B, H, c, D, G]
                x.transpose(-1, -2).reshape([sz[0], sz[1], c * sz[4], sz[3]])
            }
        }
    }
    /// Tokens `[start, start + n)` as code values (offset removed) with their group parameters,
    /// all f32, without applying them: `[B, H, n/G, D, G]` for the per-channel layout,
    /// `[B, H, n, D/g, g]` per token; scale and min `[.., groups, 1]`-shaped to broadcast.
    fn raw(&self, start: usize, n: usize) -> (Tensor, Tensor, Option<Tensor>) {
        let u = self.unit();
        let (s, c) = ((start / u) as i64, (n / u) as i64);
        let codes = self.codes.narrow(s, c).expect("non-empty store");
        let mut shape = codes.size();
        let last = shape.pop().unwrap_or(0) * self.q.per_byte() as i64;
        let g = self.q.group as i64;
        shape.extend([last / g, g]);
        let vals = self.q.unpack_values(&codes).reshape(shape.as_slice());
        let scale = self.scale.narrow(s, c).expect("non-empty store").to_kind(Kind::Float).unsqueeze(-1);
        let min = self.min.narrow(s, c).map(|m| m.to_kind(Kind::Float).unsqueeze(-1));
        (vals, scale, min)
    }

    fn held(&self) -> Vec<(&'static str, Tensor)> {
        let mut v = Vec::new();
        if let Some(t) = self.codes.view() {
            v.push(("codes", t));
        }
        if let Some(t) = self.scale.view() {
            v.push(("scale", t));
        }
        if let Some(t) = self.min.view() {
            v.push(("min", t));
        }
        v
    }
    fn allocated(&self) -> u64 {
        self.codes.allocated() + self.scale.allocated() + self.min.allocated()
    }
    fn deep_copy(&self) -> QStore {
        QStore { q: self.q, layout: self.layout, codes: self.codes.deep_copy(), scale: self.scale.deep_copy(), min: self.min.deep_copy(), tokens: self.tokens }
    }
}

/// One layer's quantized cache.
pub struct QuantCache {
    cfg: QuantConfig,
    spec: CacheSpec,
    pk: Kind,
    /// Exact K/V during prefill (exact-prefill methods) or all originals (`fake`).
    dense: Option<KvBuffer>,
    kq: QStore,
    vq: QStore,
    k_res: Option<Tensor>,
    v_res: Option<Tensor>,
    /// Kept positions `[B, H, n]` when they are not contiguous (storage of an eviction method).
    pos: Option<Tensor>,
    first_pos: usize,
    prefilling: bool,
    k_table: Tensor,
    v_table: Tensor,
}

impl QuantCache {
    pub fn new(cfg: &QuantConfig, spec: CacheSpec) -> Result<Self> {
        let mut cfg = cfg.clone();
        // int8/int4 group over the whole head dimension.
        for q in [&mut cfg.key, &mut cfg.value] {
            if q.group == 0 {
                q.group = spec.head_dim;
            }
        }
        cfg.validate(spec.head_dim)?;
        let dev = spec.device;
        let dense = (cfg.exact_prefill || cfg.fake).then(|| KvBuffer::new(spec));
        Ok(QuantCache {
            kq: QStore::new(cfg.key, cfg.key_layout),
            vq: QStore::new(cfg.value, KeyLayout::PerToken),
            k_table: cfg.key.code_table(Kind::Float, dev),
            v_table: cfg.value.code_table(Kind::Float, dev),
            cfg,
            spec,
            pk: param_kind(spec.kv_dtype),
            dense,
            k_res: None,
            v_res: None,
            pos: None,
            first_pos: 0,
            prefilling: true,
        })
    }

    /// A cache that starts from already-kept tokens (an eviction method's survivors at the end of
    /// prefill): `k`, `v` `[B, H, n, D]` at positions `pos` `[B, H, n]`.
    pub fn from_kept(cfg: &QuantConfig, spec: CacheSpec, k: &Tensor, v: &Tensor, pos: Tensor) -> Result<Self> {
        let mut c = QuantCache::new(cfg, spec)?;
        c.dense = None;
        c.prefilling = false;
        c.pos = Some(pos);
        c.load_prefill(k, v);
        Ok(c)
    }

    fn kind(&self) -> Kind {
        self.spec.kv_dtype.kind()
    }

    /// Quantizes a whole prefilled context by the method's rules (KIVI §6.2/§6.3).
    fn load_prefill(&mut self, k: &Tensor, v: &Tensor) {
        let t = k.size()[2] as usize;
        let r = self.cfg.residual;
        let (kq_n, vq_n) = if r == 0 { (t, t) } else { (if t >= r { t - t % r } else { 0 }, t.saturating_sub(r)) };
        self.kq.push(&k.narrow(2, 0, kq_n as i64), self.pk);
        self.vq.push(&v.narrow(2, 0, vq_n as i64), self.pk);
        let kind = self.kind();
        self.k_res = (kq_n < t).then(|| k.narrow(2, kq_n as i64, (t - kq_n) as i64).to_kind(kind).copy());
        self.v_res = (vq_n < t).then(|| v.narrow(2, vq_n as i64, (t - vq_n) as i64).to_kind(kind).copy());
    }

    fn res_len(t: &Option<Tensor>) -> usize {
        t.as_ref().map_or(0, |t| t.size()[2] as usize)
    }

    fn total(&self) -> usize {
        self.kq.tokens + Self::res_len(&self.k_res)
    }

    fn cat_res(old: &Option<Tensor>, new: &Tensor) -> Tensor {
        match old {
            Some(o) => Tensor::cat(&[o, new], 2),
            None => new.copy(),
        }
    }

    /// Adds new tokens: straight into quantized storage without a residual, else into the
    /// residuals (flushed after attention, as KIVI does).
    fn push(&mut self, k: &Tensor, v: &Tensor) {
        let kind = self.kind();
        if self.cfg.residual == 0 {
            self.kq.push(k, self.pk);
            self.vq.push(v, self.pk);
        } else {
            self.k_res = Some(Self::cat_res(&self.k_res, &k.to_kind(kind)));
            self.v_res = Some(Self::cat_res(&self.v_res, &v.to_kind(kind)));
        }
    }

    /// KIVI's residual rules after a step: full key blocks of `R` are quantized; values beyond the
    /// newest `R` are quantized oldest first.
    fn flush(&mut self) {
        let r = self.cfg.residual;
        if r == 0 {
            return;
        }
        let nk = Self::res_len(&self.k_res);
        if nk >= r {
            let take = nk - nk % r;
            let kr = self.k_res.take().expect("residual present");
            self.kq.push(&kr.narrow(2, 0, take as i64), self.pk);
            self.k_res = (take < nk).then(|| kr.narrow(2, take as i64, (nk - take) as i64).copy());
        }
        let nv = Self::res_len(&self.v_res);
        if nv > r {
            let vr = self.v_res.take().expect("residual present");
            let old = nv - r;
            self.vq.push(&vr.narrow(2, 0, old as i64), self.pk);
            self.v_res = Some(vr.narrow(2, old as i64, r as i64).copy());
        }
    }

    /// Every held K and V decoded, `[B, H, total, D]` (multi-token steps).
    fn decode_all(&self) -> (Tensor, Tensor) {
        let kind = self.kind();
        let mut ks = Vec::new();
        let mut vs = Vec::new();
        if self.kq.tokens > 0 {
            ks.push(self.kq.decode(0, self.kq.tokens, &self.k_table, kind));
        }
        if let Some(r) = &self.k_res {
            ks.push(r.shallow_clone());
        }
        if self.vq.tokens > 0 {
            vs.push(self.vq.decode(0, self.vq.tokens, &self.v_table, kind));
        }
        if let Some(r) = &self.v_res {
            vs.push(r.shallow_clone());
        }
        (Tensor::cat(&ks, 2), Tensor::cat(&vs, 2))
    }

    /// Logits `[B, H, Gq, n]` of queries `qf` (`[B, H, Gq, D]`, f32) against quantized keys
    /// `[start, start + n)`, with scales and minimums folded into the small operand: no decoded
    /// copy of the keys is made, only their code values.
    fn key_logits(&self, qf: &Tensor, start: usize, n: usize) -> Tensor {
        let (vals, scale, min) = self.kq.raw(start, n);
        let (b, h, gq, d) = qf.size4().expect("[B, H, Gq, D]");
        match self.kq.layout {
            KeyLayout::PerChannel => {
                // vals [B,H,ng,D,1,G] -> [B,H,ng,D,G]; scale/min [B,H,ng,D,1,1] -> [B,H,ng,1,D].
                let sz = vals.size();
                let (ng, g) = (sz[2], sz[5]);
                let vals = vals.reshape([b, h, ng, d, g]);
                let s = scale.reshape([b, h, ng, 1, d]);
                let q = qf.unsqueeze(2); // [B,H,1,Gq,D]
                let mut l = (&q * &s).matmul(&vals); // [B,H,ng,Gq,G]
                if let Some(m) = min {
                    let bias = (&q * m.reshape([b, h, ng, 1, d])).sum_dim_intlist(-1, true, Kind::Float); // [B,H,ng,Gq,1]
                    l += bias;
                }
                l.permute([0, 1, 3, 2, 4]).reshape([b, h, gq, ng * g])
            }
            KeyLayout::PerToken => {
                // vals [B,H,n,ng,g]; per channel group c: (q_c · v_c) * s_c + (Σ q_c) * m_c.
                let sz = vals.size();
                let (ng, g) = (sz[3], sz[4]);
                let qg = qf.reshape([b, h, gq, ng, g]);
                let mut total: Option<Tensor> = None;
                for c in 0..ng {
                    let v = vals.select(3, c); // [B,H,n,g]
                    let qc = qg.select(3, c); // [B,H,Gq,g]
                    let sc = scale.select(3, c).reshape([b, h, 1, -1]); // [B,H,1,n]
                    let mut l = qc.matmul(&v.transpose(-1, -2)) * sc;
                    if let Some(m) = &min {
                        l += qc.sum_dim_intlist(-1, true, Kind::Float) * m.select(3, c).reshape([b, h, 1, -1]);
                    }
                    total = Some(match total {
                        Some(t) => t + l,
                        None => l,
                    });
                }
                total.expect("at least one channel group")
            }
        }
    }

    /// `p · V` (`p`: `[B, H, Gq, n]`) for quantized values `[start, start + n)` (per token, in
    /// channel groups), folding scales into `p` and minimums into a rank-one term.
    fn value_out(&self, p: &Tensor, start: usize, n: usize) -> Tensor {
        let (vals, scale, min) = self.vq.raw(start, n); // [B,H,n,ng,g], [B,H,n,ng,1]
        let sz = vals.size();
        let (b, h, ng) = (sz[0], sz[1], sz[3]);
        let mut parts = Vec::new();
        for c in 0..ng {
            let v = vals.select(3, c); // [B,H,n,g]
            let sc = scale.select(3, c).reshape([b, h, 1, -1]);
            let mut o = (p * sc).matmul(&v); // [B,H,Gq,g]
            if let Some(m) = &min {
                o += p.matmul(&m.select(3, c).reshape([b, h, -1, 1])); // [B,H,Gq,1]
            }
            parts.push(o);
        }
        Tensor::cat(&parts, -1)
    }

    /// One query token over the packed codes directly ([`crate::quant_attend`]), when the cache
    /// is an f32 one on CPU (codes u8, parameters and residuals f32); `None` otherwise.
    fn attend_one_packed(&self, step: &AttentionStep<'_>) -> Option<Tensor> {
        if !packed_attention_enabled() || self.spec.device != tch::Device::Cpu || self.pk != Kind::Float || self.kind() != Kind::Float {
            return None;
        }
        let q = step.q;
        let (b, hq, _, d) = q.size4().ok()?;
        let hkv = self.spec.kv_heads as i64;
        let dims = quant_attend::Dims { batch: b as usize, kv_heads: hkv as usize, group: (hq / hkv) as usize, head_dim: d as usize };
        let qf = q.to_kind(Kind::Float).contiguous();
        let qs = quant_attend::residual(&qf)?;
        let held = |st: &'_ QStore| -> Option<(Tensor, Tensor, Option<Tensor>)> {
            match (&st.codes.t, &st.scale.t) {
                (Some(c), Some(s)) if st.tokens > 0 => Some((c.shallow_clone(), s.shallow_clone(), st.min.t.as_ref().map(Tensor::shallow_clone))),
                _ => None,
            }
        };
        // An empty store: no codes, no parameters.
        let empty = || (Tensor::zeros([1, 1, 0], (Kind::Uint8, tch::Device::Cpu)), Tensor::zeros([0], (Kind::Float, tch::Device::Cpu)), None);
        let (kc, ks, km) = held(&self.kq).unwrap_or_else(empty);
        let (vc, vs, vm) = held(&self.vq).unwrap_or_else(empty);
        let keys = quant_attend::Held::of(self.kq.q, self.kq.layout, &kc, &ks, km.as_ref(), self.kq.tokens)?;
        let values = quant_attend::Held::of(self.vq.q, self.vq.layout, &vc, &vs, vm.as_ref(), self.vq.tokens)?;
        let kr = self.k_res.as_ref().map(Tensor::contiguous);
        let vr = self.v_res.as_ref().map(Tensor::contiguous);
        let key_res = match &kr {
            Some(t) => Some(quant_attend::residual(t)?),
            None => None,
        };
        let value_res = match &vr {
            Some(t) => Some(quant_attend::residual(t)?),
            None => None,
        };
        let out = quant_attend::attend_one(qs, &keys, key_res, &values, value_res, dims, step.scale as f32);
        Some(Tensor::from_slice(&out).view([b, hq, 1, d]).to_kind(q.kind()))
    }

    /// One query token over quantized blocks and residuals, block by block.
    fn attend_one(&self, step: &AttentionStep<'_>) -> Tensor {
        if let Some(out) = self.attend_one_packed(step) {
            return out;
        }
        let q = step.q;
        let (b, hq, _, d) = q.size4().expect("[B, Hq, 1, D]");
        let hkv = self.spec.kv_heads as i64;
        let g = hq / hkv;
        let qf = q.to_kind(Kind::Float).reshape([b, hkv, g, d]);
        let mut logits = Vec::new();
        let block = self.block(&self.kq);
        let mut s = 0;
        while s < self.kq.tokens {
            let n = block.min(self.kq.tokens - s);
            logits.push(self.key_logits(&qf, s, n));
            s += n;
        }
        if let Some(r) = &self.k_res {
            logits.push(qf.matmul(&r.to_kind(Kind::Float).transpose(-1, -2)));
        }
        let p = (Tensor::cat(&logits, -1) * step.scale).softmax(-1, Kind::Float);
        let block = self.block(&self.vq);
        let mut out: Option<Tensor> = None;
        let mut s = 0;
        let add = |out: &mut Option<Tensor>, x: Tensor| {
            *out = Some(match out.take() {
                Some(o) => o + x,
                None => x,
            })
        };
        while s < self.vq.tokens {
            let n = block.min(self.vq.tokens - s);
            add(&mut out, self.value_out(&p.narrow(-1, s as i64, n as i64), s, n));
            s += n;
        }
        if let Some(r) = &self.v_res {
            let n = r.size()[2];
            add(&mut out, p.narrow(-1, self.vq.tokens as i64, n).matmul(&r.to_kind(Kind::Float)));
        }
        out.expect("at least one token").reshape([b, hq, 1, d]).to_kind(q.kind())
    }

    /// Every held K and V as attention sees them (decoded), `[B, H, n, D]`; for checks.
    pub fn decoded(&self) -> (Tensor, Tensor) {
        match &self.dense {
            Some(d) => d.views().unwrap_or_else(|| (Tensor::new(), Tensor::new())),
            None => self.decode_all(),
        }
    }

    /// Block length: a multiple of the store's unit.
    fn block(&self, st: &QStore) -> usize {
        let u = st.unit();
        (DECODE_BLOCK / u).max(1) * u
    }

    /// Positions of the held tokens `[B, H, total]`.
    fn positions(&self) -> Tensor {
        match &self.pos {
            Some(p) => p.shallow_clone(),
            None => kvcache::cache::contiguous_positions(&self.spec, self.first_pos, self.total()),
        }
    }

    /// Which tokens are stored quantized, as absolute positions of the first row: (keys, values).
    pub fn quantized_positions(&self) -> (Vec<i64>, Vec<i64>) {
        let row = self.kept_positions().into_iter().next().unwrap_or_default();
        (row[..self.kq.tokens.min(row.len())].to_vec(), row[..self.vq.tokens.min(row.len())].to_vec())
    }
}

impl QuantCache {
    fn check_window(&self, step: &AttentionStep<'_>) -> Result<()> {
        let l = step.q.size()[2] as usize;
        match step.sliding_window {
            Some(w) if step.start_pos + l > w => {
                Err(Error::Other(format!("{}: sliding-window layers are not supported by quantized caches (window {w})", self.cfg.name)))
            }
            _ => Ok(()),
        }
    }

    /// Stores `[B, H, n, D]` keys and values from `start` in the dense store (exact prefill, or
    /// fake mode's fake-quantized tokens).
    fn append_exact(&mut self, k: &Tensor, v: &Tensor, start: usize) {
        let fresh = Self::res_len(&self.k_res) == 0 && self.kq.tokens == 0;
        if let Some(dense) = &mut self.dense {
            if dense.is_empty() && fresh {
                self.first_pos = start;
            }
            dense.append(k, v, start);
        }
    }
}

impl LayerCache for QuantCache {
    fn observe(&mut self, step: &AttentionStep<'_>) -> Result<()> {
        if self.dense.is_some() && self.prefilling && !self.cfg.fake {
            self.check_window(step)?;
            self.append_exact(step.k, step.v, step.start_pos);
            return Ok(());
        }
        self.attend(step).map(drop)
    }

    fn attend(&mut self, step: &AttentionStep<'_>) -> Result<Tensor> {
        let l = step.q.size()[2] as usize;
        self.check_window(step)?;
        if self.cfg.fake {
            // FlexGen's simulation fake-quantizes all of K and V before every step. Its groups are
            // per token (channels of one token), so a token's fake-quantized values depend on that
            // token alone and are the same bits whenever they are computed: each token is
            // quantized once, as it is stored, from its value in the cache's dtype.
            debug_assert_eq!(self.cfg.key_layout, KeyLayout::PerToken, "fake mode is per-token");
            let kind = self.spec.kv_dtype.kind();
            let (kb, vb) = (self.cfg.key, self.cfg.value);
            let kf = fake_quantize(&step.k.to_kind(kind), kb.bits, kb.group);
            let vf = fake_quantize(&step.v.to_kind(kind), vb.bits, vb.group);
            self.append_exact(&kf, &vf, step.start_pos);
            let dense = self.dense.as_ref().expect("fake mode keeps a dense store");
            let (k, v) = dense.views().expect("just appended");
            return Ok(attend_contiguous(step, &k, &v, dense.first_pos()));
        }
        if self.dense.is_some() {
            self.append_exact(step.k, step.v, step.start_pos);
            let dense = self.dense.as_ref().expect("checked above");
            let (k, v) = dense.views().expect("just appended");
            if self.prefilling {
                return Ok(attend_contiguous(step, &k, &v, dense.first_pos()));
            }
            return Err(Error::Other(format!("{}: exact store used after prefill", self.cfg.name)));
        }
        if self.total() == 0 && self.pos.is_none() {
            self.first_pos = step.start_pos;
        }
        if let Some(p) = &self.pos {
            let (b, h) = (self.spec.batch as i64, self.spec.kv_heads as i64);
            let new = Tensor::arange_start(step.start_pos as i64, (step.start_pos + l) as i64, (Kind::Int64, self.spec.device))
                .view([1, 1, -1])
                .expand([b, h, l as i64], false);
            self.pos = Some(Tensor::cat(&[p, &new], 2));
        }
        self.push(step.k, step.v);
        let out = if l == 1 {
            self.attend_one(step)
        } else {
            let (k, v) = self.decode_all();
            match &self.pos {
                Some(p) => attend_at_positions(step, &k, &v, p, Visibility::default()),
                None => attend_contiguous(step, &k, &v, self.first_pos),
            }
        };
        self.flush();
        Ok(out)
    }

    fn end_prefill(&mut self) -> Result<()> {
        if !self.prefilling {
            return Ok(());
        }
        self.prefilling = false;
        if self.cfg.fake {
            return Ok(());
        }
        if let Some(dense) = self.dense.take() {
            if let Some((k, v)) = dense.views() {
                self.first_pos = dense.first_pos();
                self.load_prefill(&k, &v);
            }
        }
        Ok(())
    }

    fn stored_tokens(&self) -> usize {
        match &self.dense {
            Some(d) => d.len(),
            None => self.total(),
        }
    }

    fn bytes_held(&self) -> u64 {
        self.held_tensors().iter().map(|(_, t)| tensor_bytes(t)).sum()
    }

    fn bytes_allocated(&self) -> u64 {
        let res = [&self.k_res, &self.v_res, &self.pos].iter().map(|t| t.as_ref().map_or(0, tensor_bytes)).sum::<u64>();
        let dense = self.dense.as_ref().map_or(0, |d| d.bytes_allocated());
        dense + res + self.kq.allocated() + self.vq.allocated()
    }

    fn reset(&mut self) {
        if let Ok(fresh) = QuantCache::new(&self.cfg, self.spec) {
            *self = fresh;
        }
    }

    fn kept_positions(&self) -> Vec<Vec<i64>> {
        let rows = self.spec.batch * self.spec.kv_heads;
        if let Some(d) = &self.dense {
            return d.kept_positions();
        }
        if self.total() == 0 {
            return vec![vec![]; rows];
        }
        let pos = self.positions().to_device(tch::Device::Cpu).contiguous().view([rows as i64, -1]);
        (0..rows as i64).map(|r| Vec::<i64>::try_from(&pos.get(r)).unwrap_or_default()).collect()
    }

    fn held_tensors(&self) -> Vec<(&'static str, Tensor)> {
        let mut out = Vec::new();
        if let Some(d) = &self.dense {
            out.extend(d.held_tensors());
        }
        for (name, t) in self.kq.held() {
            out.push((
                match name {
                    "codes" => "k_codes",
                    "scale" => "k_scale",
                    _ => "k_min",
                },
                t,
            ));
        }
        for (name, t) in self.vq.held() {
            out.push((
                match name {
                    "codes" => "v_codes",
                    "scale" => "v_scale",
                    _ => "v_min",
                },
                t,
            ));
        }
        if let Some(t) = &self.k_res {
            out.push(("k_residual", t.shallow_clone()));
        }
        if let Some(t) = &self.v_res {
            out.push(("v_residual", t.shallow_clone()));
        }
        if let Some(t) = &self.pos {
            out.push(("positions", t.shallow_clone()));
        }
        out
    }

    fn fork(&self) -> Option<Box<dyn LayerCache>> {
        Some(Box::new(self.fork_quant()))
    }
}

impl QuantCache {
    /// A deep copy that evolves independently.
    pub fn fork_quant(&self) -> QuantCache {
        let copy = |t: &Option<Tensor>| t.as_ref().map(|t| t.copy());
        QuantCache {
            cfg: self.cfg.clone(),
            spec: self.spec,
            pk: self.pk,
            dense: self.dense.as_ref().map(|d| d.deep_copy()),
            kq: self.kq.deep_copy(),
            vq: self.vq.deep_copy(),
            k_res: copy(&self.k_res),
            v_res: copy(&self.v_res),
            pos: copy(&self.pos),
            first_pos: self.first_pos,
            prefilling: self.prefilling,
            k_table: self.k_table.shallow_clone(),
            v_table: self.v_table.shallow_clone(),
        }
    }
}
