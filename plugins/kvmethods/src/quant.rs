//! Group quantization of K/V tensors with really packed codes: the kernels behind the `kivi`,
//! `flexgen`, `int8` and `int4` caches ([`crate::quantized`]).
//!
//! A [`Quantizer`] works along the last axis of a tensor in groups of `group` consecutive
//! elements. Asymmetric (KIVI, FlexGen): per group `mn`, `mx`, `scale = (mx - mn)/(2^b - 1)`,
//! `q = round(clamp((x - mn)/scale, 0, 2^b - 1))`, `x̂ = q·scale + mn` (KIVI's
//! `triton_quantize_and_pack_along_last_dim`, `paper-protocol.md` §6.1). Symmetric (`int8`,
//! `int4`, llama.cpp q8_0-like): `scale = max|x|/(2^(b-1) - 1)`, `q = round(x/scale)`.
//! A constant group (zero range) gets `scale = 0` and decodes to its value exactly; no NaN
//! (KIVI and the paper's FlexGen code divide by zero there).
//!
//! Codes are packed little end first, `8/b` per byte (KIVI packs `32/b` per int32 the same way).
//! Scales and minimums are stored in `param_kind` (f16 for a 16-bit cache, as KIVI; f32 for an f32
//! cache) and quantization uses the stored, rounded values, so what decodes is exactly what the
//! error bound describes.

use tch::{Device, Kind, Tensor};

/// How one tensor is quantized along its last axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quantizer {
    /// Bits per code: 2, 4 or 8.
    pub bits: u32,
    /// Elements per (scale, min) group along the last axis.
    pub group: usize,
    /// Symmetric around zero (one scale, no minimum) instead of min-max.
    pub symmetric: bool,
}

/// A quantized tensor: packed codes `[.., N·bits/8]` (u8), and per group `scale` `[.., N/group]`
/// (and `min`, asymmetric only).
#[derive(Debug)]
pub struct Packed {
    pub codes: Tensor,
    pub scale: Tensor,
    pub min: Option<Tensor>,
}

impl Packed {
    /// Views of every tensor held.
    pub fn tensors(&self) -> Vec<Tensor> {
        let mut v = vec![self.codes.shallow_clone(), self.scale.shallow_clone()];
        if let Some(m) = &self.min {
            v.push(m.shallow_clone());
        }
        v
    }
}

impl Quantizer {
    pub fn new(bits: u32, group: usize, symmetric: bool) -> Self {
        Quantizer { bits, group, symmetric }
    }
    /// Codes per byte.
    pub fn per_byte(&self) -> usize {
        (8 / self.bits) as usize
    }
    /// Largest code (asymmetric) or largest magnitude (symmetric).
    pub fn max_code(&self) -> f64 {
        if self.symmetric {
            ((1u32 << (self.bits - 1)) - 1) as f64
        } else {
            ((1u32 << self.bits) - 1) as f64
        }
    }
    /// Unpacks packed codes `[.., N·bits/8]` to their values `[.., N]` in f32, offset removed
    /// (what [`Quantizer::code_table`] gives, computed with shifts and masks: on 2 CPU cores
    /// about 3x faster than the table's gather for a 4K-token block).
    pub fn unpack_values(&self, packed: &Tensor) -> Tensor {
        let per = self.per_byte() as i64;
        let vals = if per == 1 {
            packed.to_kind(Kind::Float)
        } else {
            let mask = ((1u32 << self.bits) - 1) as i64;
            let fields: Vec<Tensor> = (0..per)
                .map(|i| if i == 0 { packed.bitwise_and(mask) } else { packed.bitwise_right_shift_tensor_scalar(i * self.bits as i64).bitwise_and(mask) })
                .collect();
            Tensor::stack(&fields, -1).flatten(-2, -1).to_kind(Kind::Float)
        };
        let off = self.offset();
        if off != 0.0 {
            vals - off
        } else {
            vals
        }
    }

    /// The offset added to a symmetric code so it is stored unsigned (0 for asymmetric codes).
    pub fn offset(&self) -> f64 {
        if self.symmetric {
            (1u32 << (self.bits - 1)) as f64
        } else {
            0.0
        }
    }
    /// Whether a last axis of `n` elements can be quantized (whole groups, whole bytes).
    pub fn check(&self, n: usize) -> Result<(), String> {
        if ![2, 4, 8].contains(&self.bits) {
            return Err(format!("bits = {}: expected 2, 4 or 8", self.bits));
        }
        if self.group == 0 || !n.is_multiple_of(self.group) {
            return Err(format!("group size {} does not divide {n}", self.group));
        }
        if !self.group.is_multiple_of(self.per_byte()) {
            return Err(format!("group size {} is not a multiple of {} ({}-bit codes per byte)", self.group, self.per_byte(), self.bits));
        }
        Ok(())
    }
    /// The analytic bound on `|x - x̂|` for a group of range `mx - mn` (asymmetric) or magnitude
    /// `max|x|` (symmetric): half a quantization step.
    pub fn error_bound(&self, range_or_magnitude: f64) -> f64 {
        range_or_magnitude / self.max_code() / 2.0
    }
    /// Bits per element including the group parameters stored in `param_bytes` each.
    pub fn bits_per_element(&self, param_bytes: usize) -> f64 {
        let params = if self.symmetric { 1 } else { 2 };
        self.bits as f64 + (params * param_bytes * 8) as f64 / self.group as f64
    }

    /// Quantizes `x` along its last axis (length a multiple of `group`).
    pub fn quantize(&self, x: &Tensor, param_kind: Kind) -> Packed {
        let shape = x.size();
        let n = *shape.last().expect("a tensor with at least one axis");
        let ng = n / self.group as i64;
        let mut gshape = shape[..shape.len() - 1].to_vec();
        gshape.extend([ng, self.group as i64]);
        let xg = x.to_kind(Kind::Float).reshape(gshape.as_slice());
        let max_code = self.max_code();
        let (codes, scale, min) = if self.symmetric {
            let amax = xg.abs().amax(-1, true);
            let scale = (amax / max_code).to_kind(param_kind);
            let s = scale.to_kind(Kind::Float);
            let safe = s.where_self(&s.gt(0.0), &s.ones_like());
            let q = (&xg / &safe).round().clamp(-max_code, max_code) + self.offset();
            (q, scale, None)
        } else {
            let mn = xg.amin(-1, true);
            let mx = xg.amax(-1, true);
            let scale = ((&mx - &mn) / max_code).to_kind(param_kind);
            let min = mn.to_kind(param_kind);
            let (s, m) = (scale.to_kind(Kind::Float), min.to_kind(Kind::Float));
            let safe = s.where_self(&s.gt(0.0), &s.ones_like());
            let q = ((&xg - &m) / &safe).clamp(0.0, max_code).round();
            (q, scale, Some(min))
        };
        let codes = codes.to_kind(Kind::Uint8).reshape(shape.as_slice());
        Packed { codes: pack_codes(&codes, self.bits), scale: scale.squeeze_dim(-1), min: min.map(|m| m.squeeze_dim(-1)) }
    }

    /// Decodes `p` to `out_kind`; `table` is [`Quantizer::code_table`] for this quantizer.
    pub fn dequantize(&self, p: &Packed, table: &Tensor, out_kind: Kind) -> Tensor {
        let shape = p.codes.size();
        let lead = &shape[..shape.len() - 1];
        let n = shape[shape.len() - 1] * self.per_byte() as i64;
        let ng = n / self.group as i64;
        let mut gshape = lead.to_vec();
        gshape.extend([ng, self.group as i64]);
        let idx = p.codes.to_kind(Kind::Int).flatten(0, -1);
        let vals = table.index_select(0, &idx).reshape(gshape.as_slice());
        let s = p.scale.to_kind(table.kind()).unsqueeze(-1);
        let x = match &p.min {
            Some(m) => m.to_kind(table.kind()).unsqueeze(-1).addcmul(&vals, &s),
            None => vals * s,
        };
        let mut out = lead.to_vec();
        out.push(n);
        let x = x.reshape(out.as_slice());
        if x.kind() != out_kind {
            x.to_kind(out_kind)
        } else {
            x
        }
    }

    /// The decoded value of each of a byte's codes, `[256, 8/bits]`, offset removed: one
    /// `index_select` unpacks a whole block.
    pub fn code_table(&self, kind: Kind, device: Device) -> Tensor {
        let per = self.per_byte();
        let mask = (1u32 << self.bits) - 1;
        let mut v = Vec::with_capacity(256 * per);
        for byte in 0u32..256 {
            for i in 0..per {
                v.push(((byte >> (i as u32 * self.bits)) & mask) as f32 - self.offset() as f32);
            }
        }
        Tensor::from_slice(&v).view([256, per as i64]).to_kind(kind).to_device(device)
    }
}

/// Packs u8 codes `[.., N]` (each `< 2^bits`) into `[.., N·bits/8]`, little end first.
pub fn pack_codes(codes: &Tensor, bits: u32) -> Tensor {
    if bits == 8 {
        return codes.shallow_clone();
    }
    let per = (8 / bits) as i64;
    let shape = codes.size();
    let n = shape[shape.len() - 1];
    let mut g = shape[..shape.len() - 1].to_vec();
    g.extend([n / per, per]);
    let shifts = Tensor::arange(per, (Kind::Uint8, codes.device())) * bits as i64;
    // Codes occupy disjoint bits, so the sum of the shifted codes is their bitwise or.
    codes.reshape(g.as_slice()).bitwise_left_shift(&shifts).sum_dim_intlist(-1, false, Kind::Uint8)
}

/// Inverse of [`pack_codes`].
pub fn unpack_codes(packed: &Tensor, bits: u32) -> Tensor {
    if bits == 8 {
        return packed.shallow_clone();
    }
    let per = (8 / bits) as i64;
    let shifts = Tensor::arange(per, (Kind::Uint8, packed.device())) * bits as i64;
    let mask = ((1u32 << bits) - 1) as i64;
    packed.unsqueeze(-1).bitwise_right_shift(&shifts).bitwise_and(mask).flatten(-2, -1)
}

/// FlexGen-style simulated quantization as the paper's code does it (`AsymGroupedQuantizer`):
/// per-token asymmetric min-max groups of `group` channels, f32 arithmetic, no storage; the result
/// has `x`'s kind. Zero-range groups decode to their value (the paper's code would give NaN).
pub fn fake_quantize(x: &Tensor, bits: u32, group: usize) -> Tensor {
    let q = Quantizer::new(bits, group, false);
    let shape = x.size();
    let n = shape[shape.len() - 1];
    let mut g = shape[..shape.len() - 1].to_vec();
    g.extend([n / group as i64, group as i64]);
    let xg = x.to_kind(Kind::Float).reshape(g.as_slice());
    let mn = xg.amin(-1, true);
    let mx = xg.amax(-1, true);
    let scale = (&mx - &mn) / q.max_code();
    let safe = scale.where_self(&scale.gt(0.0), &scale.ones_like());
    let codes = ((&xg - &mn) / &safe).relu().round();
    (codes * scale + mn).reshape(shape.as_slice()).to_kind(x.kind())
}
