//! One decoded token's attention straight from packed codes (KIVI, FlexGen, int8, int4 storage on
//! CPU): scores from the codes with each group's scale and minimum folded in, the softmax, and the
//! values accumulated the same way, in one pass over the bytes held and without a dequantized copy
//! of any block. The libtorch path it replaces made about twenty small tensor operations per
//! block and layer, whose overhead, not the arithmetic, set a quantized cache's decoding speed.
//!
//! Per query `q` (of the KV head's group) and held token `t`:
//! - keys per channel (KIVI: groups of `G` tokens of one channel share a scale `s` and minimum
//!   `m`): `score(t) = Σ_d q_d·s_d·c_{t,d} + q_d·m_d`;
//! - keys and values per token (groups of channels): `Σ_groups s·(Σ q_d·c_{t,d}) + m·(Σ q_d)`, and
//!   `out_d = Σ_t p_t·s·c_{t,d} + p_t·m`;
//! - symmetric codes (int8, int4) are stored offset by `2^(b-1)`, removed before use;
//! - full-precision residual tokens (KIVI's) follow the quantized ones.
//!
//! The result equals attention over the decoded cache to float rounding (~1e-6), not bit for bit:
//! sums run in another order than libtorch's matmuls.
//!
//! Every sum has one fixed order, whatever the build, thread count or tiling, so that a quantized
//! cache's predictions do not move when the kernel gets faster. Speed comes from around that
//! order, not from changing it: codes are unpacked by vectorized shifts; several queries' (and
//! key chunks' or channel halves') sums are held at once, so that the core overlaps independent
//! chains of fused multiply-adds instead of waiting on one; the softmax's sums run side by side;
//! and each thread reuses one scratch for all its items.

use crate::quant::Quantizer;
use crate::quantized::KeyLayout;
use kvcache::team::{self, Pool, SharedMut};
use tch::{Device, Kind, Tensor};

/// A contiguous CPU tensor's elements (none if it is not one, or not of kind `kind`).
fn elements<T>(t: &Tensor, kind: Kind) -> Option<&[T]> {
    if t.device() != Device::Cpu || t.kind() != kind || !t.is_contiguous() || std::mem::size_of::<T>() != kind.elt_size_in_bytes() {
        return None;
    }
    let n = t.numel();
    if n == 0 {
        return Some(&[]);
    }
    // SAFETY: a contiguous CPU tensor of `n` elements of `kind`, whose size is `T`'s, alive as
    // long as the borrow of `t`; nothing writes to it meanwhile (the caller holds `&` access).
    Some(unsafe { std::slice::from_raw_parts(t.data_ptr() as *const T, n) })
}

/// Quantized tokens as stored: packed codes and per-group parameters, `[B, H, cap, ...]` along
/// axis 2 (tokens per token, groups of `G` tokens per channel).
pub struct Held<'a> {
    pub q: Quantizer,
    pub layout: KeyLayout,
    pub codes: &'a [u8],
    pub scale: &'a [f32],
    pub min: Option<&'a [f32]>,
    /// Units of axis 2 the storage has room for.
    pub cap: usize,
    /// Tokens held.
    pub tokens: usize,
}

impl<'a> Held<'a> {
    /// The storage of `tokens` tokens from its tensors (codes u8, parameters f32), or `None`
    /// when they are not contiguous f32/u8 CPU tensors.
    pub fn of(q: Quantizer, layout: KeyLayout, codes: &'a Tensor, scale: &'a Tensor, min: Option<&'a Tensor>, tokens: usize) -> Option<Self> {
        let min = match min {
            Some(m) => Some(elements::<f32>(m, Kind::Float)?),
            None => None,
        };
        Some(Held {
            q,
            layout,
            codes: elements::<u8>(codes, Kind::Uint8)?,
            scale: elements::<f32>(scale, Kind::Float)?,
            min,
            cap: codes.size()[2] as usize,
            tokens,
        })
    }
}

/// Unpacks `out.len()` codes from `packed` (little end first, `8 / bits` per byte) as f32 values,
/// `offset` removed. Written as shifts of 8 bytes read as one little-endian integer (code `l` at
/// bit `bits·l`), so that it vectorizes
/// (a code is a small integer: every way of converting it gives the same float).
#[inline(always)]
fn unpack(packed: &[u8], bits: u32, offset: f32, out: &mut [f32]) {
    match bits {
        8 => out.iter_mut().zip(packed).for_each(|(o, &c)| *o = c as f32),
        4 => {
            let mut bytes = packed.chunks_exact(8);
            let mut outs = out.chunks_exact_mut(16);
            for (o, b) in (&mut outs).zip(&mut bytes) {
                let w = u64::from_le_bytes(b.try_into().expect("8 bytes"));
                for (l, o) in o.iter_mut().enumerate() {
                    *o = ((w >> (4 * l)) & 15) as f32;
                }
            }
            for (o, &c) in outs.into_remainder().chunks_exact_mut(2).zip(bytes.remainder()) {
                o[0] = (c & 15) as f32;
                o[1] = (c >> 4) as f32;
            }
        }
        _ => {
            let mut bytes = packed.chunks_exact(8);
            let mut outs = out.chunks_exact_mut(32);
            for (o, b) in (&mut outs).zip(&mut bytes) {
                let w = u64::from_le_bytes(b.try_into().expect("8 bytes"));
                for (l, o) in o.iter_mut().enumerate() {
                    *o = ((w >> (2 * l)) & 3) as f32;
                }
            }
            for (o, &c) in outs.into_remainder().chunks_exact_mut(4).zip(bytes.remainder()) {
                for (j, o) in o.iter_mut().enumerate() {
                    *o = ((c >> (2 * j)) & 3) as f32;
                }
            }
        }
    }
    if offset != 0.0 {
        out.iter_mut().for_each(|o| *o -= offset);
    }
}

/// `Σ a_i·b_i` in a fixed order: 16 running sums (lane `i mod 16`), then added pairwise; the same
/// bits on every instruction set.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    for (i, (x, y)) in ra.iter().zip(rb).enumerate() {
        acc[i] = x.mul_add(*y, acc[i]);
    }
    let mut w = 16;
    while w > 1 {
        w /= 2;
        for i in 0..w {
            acc[i] += acc[i + w];
        }
    }
    acc[0]
}

/// `e^x` for `x <= 0` (a softmax's shifted scores) to about 2 ulp, branch-free so that a loop of
/// it vectorizes (libm's `expf` does not, and a call per score cost more than the rest of the
/// attention): `x = n·ln 2 + r`, a degree-6 polynomial for `e^r` (Cephes' `expf`), times `2^n`.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    let x = x.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = n.mul_add(-0.693_359_4, x);
    let r = n.mul_add(2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4f32;
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
        p = p.mul_add(r, c);
    }
    let y = (p * r).mul_add(r, r) + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Shapes of one attention: batch rows, KV heads, queries per KV head, head dim.
#[derive(Clone, Copy)]
pub struct Dims {
    pub batch: usize,
    pub kv_heads: usize,
    pub group: usize,
    pub head_dim: usize,
}

/// Tokens of a per-token key block (one work item of the key phase).
const KEY_BLOCK: usize = 64;

/// The tokens of key block `block`: per channel the unit of `G` tokens, per token 64 tokens.
fn key_block_tokens(k: &Held<'_>, block: usize) -> std::ops::Range<usize> {
    let n = match k.layout {
        KeyLayout::PerChannel => k.q.group,
        KeyLayout::PerToken => KEY_BLOCK,
    };
    block * n..((block + 1) * n).min(k.tokens)
}

/// Calls `$f::<Q, ..>(args)` for `Q = $n` (1 to 8), a tile of `Q` queries held at once.
macro_rules! for_queries {
    ($n:expr, $f:ident, [$($c:tt)*], $($arg:expr),*) => {
        match $n {
            1 => $f::<1, $($c)*>($($arg),*),
            2 => $f::<2, $($c)*>($($arg),*),
            3 => $f::<3, $($c)*>($($arg),*),
            4 => $f::<4, $($c)*>($($arg),*),
            5 => $f::<5, $($c)*>($($arg),*),
            6 => $f::<6, $($c)*>($($arg),*),
            7 => $f::<7, $($c)*>($($arg),*),
            _ => $f::<8, $($c)*>($($arg),*),
        }
    };
}

/// Per-thread buffers of the kernel, made once per pass and part and reused by its items (at 16K
/// tokens a part scores hundreds of key units per KV head and layer).
#[derive(Default)]
struct Scratch {
    /// Unpacked codes of one unit or block.
    vals: Vec<f32>,
    /// Per query: its folded factors (`q·s` per channel) or per-token weights.
    folded: Vec<f32>,
    /// Per query: a bias or a channel group's `Σ q`.
    bias: Vec<f32>,
    /// One item's outputs before they are copied out.
    local: Vec<f32>,
}

/// `v` resized to `n` elements (contents unspecified; every caller writes before it reads).
fn sized(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// Scores of `Q` queries over `C` chunks of 16 tokens of a per-channel key unit: for each, the
/// query's bias, then `+ a_c·v_{c,t}` for channels `c = 0..D` in order (one fused multiply-add
/// each). Each score's sum runs in exactly that order; holding `Q·C` of them at once only gives
/// the core independent chains to overlap (one chain is bound by the multiply-add's latency).
#[inline(always)]
fn channel_tile<const Q: usize, const C: usize>(a: &[f32], bias: &[f32], vals: &[f32], g: usize, d: usize, t0: [usize; C], out: &mut [f32]) {
    let mut acc: [[[f32; 16]; C]; Q] = std::array::from_fn(|j| [[bias[j]; 16]; C]);
    for c in 0..d {
        let row = &vals[c * g..(c + 1) * g];
        let v: [[f32; 16]; C] = std::array::from_fn(|k| row[t0[k]..t0[k] + 16].try_into().expect("16 tokens"));
        for j in 0..Q {
            let ac = a[j * d + c];
            for k in 0..C {
                for l in 0..16 {
                    acc[j][k][l] = ac.mul_add(v[k][l], acc[j][k][l]);
                }
            }
        }
    }
    for j in 0..Q {
        for k in 0..C {
            out[j * g + t0[k]..j * g + t0[k] + 16].copy_from_slice(&acc[j][k]);
        }
    }
}

/// [`channel_tile`] for `Q` queries over every full chunk of 16 tokens, `C` (1 or 2) chunks at a
/// time.
#[inline(always)]
fn channel_queries<const Q: usize, const C: usize>(a: &[f32], bias: &[f32], vals: &[f32], g: usize, d: usize, out: &mut [f32]) {
    let full = g / 16;
    let mut k = 0;
    while C == 2 && k + 2 <= full {
        channel_tile::<Q, 2>(a, bias, vals, g, d, [k * 16, k * 16 + 16], out);
        k += 2;
    }
    while k < full {
        channel_tile::<Q, 1>(a, bias, vals, g, d, [k * 16], out);
        k += 1;
    }
}

/// Adds to `scores[qi·len + i]` (`[group, len]`, zeroed) the scores of row `row`'s quantized keys of
/// block `block` (its `len` tokens, [`key_block_tokens`]) against `q` (`[group, D]`).
/// Each score is one token's sum, so blocks can run on any thread.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn key_scores(k: &Held<'_>, row: usize, block: usize, q: &[f32], dims: Dims, wide: bool, scratch: &mut Scratch, scores: &mut [f32]) {
    let d = dims.head_dim;
    let per = k.q.per_byte();
    let off = k.q.offset() as f32;
    match k.layout {
        KeyLayout::PerChannel => {
            // Unit: G tokens; per unit and channel, G codes and one (scale, min). The unit is
            // unpacked once (`[D, G]` values), then each query's G scores are summed over the
            // channels 16 tokens at a time in one register: `Σ_c (q_c·s_c)·code_{c,t}`, plus the
            // unit's `Σ_c q_c·m_c`.
            let g = k.q.group;
            let code_unit = d * g / per;
            let unit = row * k.cap + block;
            let vals = sized(&mut scratch.vals, d * g);
            unpack(&k.codes[unit * code_unit..(unit + 1) * code_unit], k.q.bits, off, vals);
            let (scale, min) = (&k.scale[unit * d..(unit + 1) * d], k.min.map(|m| &m[unit * d..(unit + 1) * d]));
            let a = sized(&mut scratch.folded, dims.group * d);
            let bias = sized(&mut scratch.bias, dims.group);
            for qi in 0..dims.group {
                let qrow = &q[qi * d..(qi + 1) * d];
                a[qi * d..(qi + 1) * d].iter_mut().zip(qrow.iter().zip(scale)).for_each(|(a, (q, s))| *a = q * s);
                // (`match`, not a closure: a closure is compiled without the caller's vector features.)
                bias[qi] = match min {
                    Some(m) => dot(qrow, m),
                    None => 0.0,
                };
            }
            // Up to 4 queries by 2 chunks (8 registers of 16 floats) with AVX-512's 32 registers,
            // 4 by 1 otherwise.
            let mut qi = 0;
            while qi < dims.group {
                let (a, b, out) = (&a[qi * d..], &bias[qi..], &mut scores[qi * g..]);
                let n = (dims.group - qi).min(4);
                if wide {
                    for_queries!(n, channel_queries, [2], a, b, vals, g, d, out);
                } else {
                    for_queries!(n, channel_queries, [1], a, b, vals, g, d, out);
                }
                qi += n;
            }
            // A last chunk of fewer than 16 tokens, one query at a time, in the same order.
            let t0 = g / 16 * 16;
            if t0 < g {
                let w = g - t0;
                for qi in 0..dims.group {
                    let mut acc = [bias[qi]; 16];
                    for c in 0..d {
                        let ac = a[qi * d + c];
                        let v = &vals[c * g + t0..c * g + g];
                        for i in 0..w {
                            acc[i] = ac.mul_add(v[i], acc[i]);
                        }
                    }
                    scores[qi * g + t0..qi * g + g].copy_from_slice(&acc[..w]);
                }
            }
        }
        KeyLayout::PerToken => {
            let gsz = k.q.group;
            let ng = d / gsz;
            let code_tok = d / per;
            // Σ q over each channel group (the minimum's factor): a dot with ones, as it was.
            let ones = sized(&mut scratch.folded, gsz);
            ones.fill(1.0);
            let qsum = sized(&mut scratch.bias, dims.group * ng);
            for (i, s) in qsum.iter_mut().enumerate() {
                *s = dot(&q[i * gsz..(i + 1) * gsz], ones);
            }
            let vals = sized(&mut scratch.vals, d);
            let tokens = key_block_tokens(k, block);
            let len = tokens.len();
            for (i, t) in tokens.enumerate() {
                let unit = row * k.cap + t;
                unpack(&k.codes[unit * code_tok..(unit + 1) * code_tok], k.q.bits, off, vals);
                let (scale, min) = (&k.scale[unit * ng..(unit + 1) * ng], k.min.map(|m| &m[unit * ng..(unit + 1) * ng]));
                for qi in 0..dims.group {
                    let qrow = &q[qi * d..(qi + 1) * d];
                    let mut total = 0f32;
                    for c in 0..ng {
                        let dot = dot(&qrow[c * gsz..(c + 1) * gsz], &vals[c * gsz..(c + 1) * gsz]);
                        let shift = match min {
                            Some(m) => m[c] * qsum[qi * ng + c],
                            None => 0.0,
                        };
                        total += scale[c] * dot + shift;
                    }
                    scores[qi * len + i] += total;
                }
            }
        }
    }
}

/// Key blocks per row: units of `G` tokens per channel, or blocks of [`KEY_BLOCK`] tokens.
fn key_blocks(k: &Held<'_>) -> usize {
    match k.layout {
        KeyLayout::PerChannel => k.tokens / k.q.group,
        KeyLayout::PerToken => k.tokens.div_ceil(KEY_BLOCK),
    }
}

/// Tokens of a value block: unpacked once, then summed into every query's channels.
const VALUE_BLOCK: usize = 64;

/// `Q` queries' sums over one value block for `16·C` channels inside one channel group: per query
/// and channel, `Σ_t w_t·code_{t,d}` over the block's tokens in order (one fused multiply-add
/// each, `w` the query's weights times the token's scale, `ws[j·VALUE_BLOCK + t]`), added to its
/// output (`out[j·16·C..]`). Holding `Q·C` sums at once only overlaps independent chains; each
/// keeps its order.
#[inline(always)]
fn value_tile<const Q: usize, const C: usize>(ws: &[f32], n: usize, vals: &[f32], out: &mut [f32]) {
    let w16 = 16 * C;
    let mut acc = [[[0f32; 16]; C]; Q];
    for i in 0..n {
        let x: [[f32; 16]; C] = std::array::from_fn(|k| vals[i * w16 + 16 * k..i * w16 + 16 * k + 16].try_into().expect("16 channels"));
        for j in 0..Q {
            let w = ws[j * VALUE_BLOCK + i];
            for k in 0..C {
                for l in 0..16 {
                    acc[j][k][l] = w.mul_add(x[k][l], acc[j][k][l]);
                }
            }
        }
    }
    for j in 0..Q {
        for k in 0..C {
            out[j * w16 + 16 * k..j * w16 + 16 * k + 16].iter_mut().zip(&acc[j][k]).for_each(|(o, a)| *o += a);
        }
    }
}

/// Adds to `out` (`[group, width]`: channels `d0..d1` = `channels` of each query) row `row`'s quantized
/// values weighted by `p[qi·stride + t]`: tokens 64 at a time are unpacked once, then each
/// query's channels are summed over them in one register, `Σ_t (p_t·s_t)·code_{t,d}`, and each
/// channel group's `Σ_t p_t·m_t` added once. Each channel's sum runs in the same order whatever
/// channel range it is computed in, so ranges can run on any thread.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn value_sums(v: &Held<'_>, row: usize, p: &[f32], dims: Dims, stride: usize, scratch: &mut Scratch, out: &mut [f32], channels: std::ops::Range<usize>) {
    const BLOCK: usize = VALUE_BLOCK;
    let (d0, d1) = (channels.start, channels.end);
    let d = dims.head_dim;
    let width = d1 - d0;
    debug_assert!(width <= 32 && d0.is_multiple_of(v.q.per_byte()));
    let per = v.q.per_byte();
    let gsz = v.q.group;
    let ng = d / gsz;
    let code_tok = d / per;
    let (b0, b1) = (d0 / per, d1.div_ceil(per));
    let off = v.q.offset() as f32;
    let group = dims.group;
    // 16 or 32 channels of one channel group: every query's weights folded with that group's
    // scales, then the queries summed four at a time (by 16 or 32 channels).
    let tiled = (width == 16 || width == 32) && gsz.is_multiple_of(width);
    debug_assert!(width <= 16 || tiled, "32-channel items only within one channel group");
    let vals = sized(&mut scratch.vals, BLOCK * width);
    let ws = sized(&mut scratch.folded, BLOCK * if tiled { group } else { ng });
    let mut t0 = 0;
    while t0 < v.tokens {
        let n = BLOCK.min(v.tokens - t0);
        let first = row * v.cap + t0;
        for i in 0..n {
            let unit = first + i;
            unpack(&v.codes[unit * code_tok + b0..unit * code_tok + b1], v.q.bits, off, &mut vals[i * width..(i + 1) * width]);
        }
        let scale = &v.scale[first * ng..(first + n) * ng];
        let min = v.min.map(|m| &m[first * ng..(first + n) * ng]);
        let weights = |qi: usize| &p[qi * stride + t0..qi * stride + t0 + n];
        if tiled {
            let c = d0 / gsz;
            let mut column = [0f32; BLOCK];
            for (i, s) in column[..n].iter_mut().enumerate() {
                *s = scale[i * ng + c];
            }
            for qi in 0..group {
                for ((o, &w), &s) in ws[qi * BLOCK..qi * BLOCK + n].iter_mut().zip(weights(qi)).zip(&column[..n]) {
                    *o = w * s;
                }
            }
            let mut qi = 0;
            while qi < group {
                let (w, o) = (&ws[qi * BLOCK..], &mut out[qi * width..]);
                let q = (group - qi).min(4);
                if width == 32 {
                    for_queries!(q, value_tile, [2], w, n, vals, o);
                } else {
                    for_queries!(q, value_tile, [1], w, n, vals, o);
                }
                qi += q;
            }
            if let Some(m) = min {
                // The group's `Σ_t p_t·m_t`, eight queries' chains at a time, each in token order.
                let mut qi = 0;
                while qi < group {
                    let q = (group - qi).min(8);
                    let mut mterm = [0f32; 8];
                    for i in 0..n {
                        let mi = m[i * ng + c];
                        for j in 0..q {
                            mterm[j] = p[(qi + j) * stride + t0 + i].mul_add(mi, mterm[j]);
                        }
                    }
                    for j in 0..q {
                        out[(qi + j) * width..(qi + j + 1) * width].iter_mut().for_each(|x| *x += mterm[j]);
                    }
                    qi += q;
                }
            }
        } else {
            for qi in 0..group {
                let pw = weights(qi);
                for (i, &w) in pw.iter().enumerate() {
                    for c in 0..ng {
                        ws[i * ng + c] = w * scale[i * ng + c];
                    }
                }
                let o = &mut out[qi * width..(qi + 1) * width];
                let mut acc = [0f32; 16];
                for i in 0..n {
                    for l in 0..width {
                        acc[l] = ws[i * ng + (d0 + l) / gsz].mul_add(vals[i * width + l], acc[l]);
                    }
                }
                o.iter_mut().zip(&acc).for_each(|(o, a)| *o += a);
                if let Some(m) = min {
                    for c in d0 / gsz..(d1 - 1) / gsz + 1 {
                        let mut mterm = 0f32;
                        for (i, &w) in pw.iter().enumerate() {
                            mterm = w.mul_add(m[i * ng + c], mterm);
                        }
                        let (c0, c1) = ((c * gsz).max(d0), ((c + 1) * gsz).min(d1));
                        o[c0 - d0..c1 - d0].iter_mut().for_each(|x| *x += mterm);
                    }
                }
            }
        }
        t0 += n;
    }
}

/// One query token's attention `[B, H_q, 1, D]` (f32) over quantized keys and values followed by
/// full-precision residual keys/values (`[B, H_kv, r, D]` f32, contiguous), `q` being `[B, H_q,
/// 1, D]` f32 contiguous. Query head `h·group + i` reads KV head `h`.
/// Compiled for the widest vector unit the CPU has (AVX-512, AVX2 with FMA, or the baseline);
/// every sum runs in the same order and every multiply-add is fused on each (`mul_add`), so the
/// results are the same bits. Runs on libtorch's threads (`tch::get_num_threads()`), split so
/// that the bits do not depend on how many there are: [`attend_one_on`].
pub fn attend_one(q: &[f32], keys: &Held<'_>, key_res: Option<&[f32]>, values: &Held<'_>, value_res: Option<&[f32]>, dims: Dims, scale: f32) -> Vec<f32> {
    let threads = tch::get_num_threads().max(1) as usize;
    attend_one_on(Build::detect(), Pool::Auto, threads, q, keys, key_res, values, value_res, dims, scale)
}

/// [`attend_one`] compiled for the baseline instruction set only (what a CPU without AVX2 runs),
/// for checking that every build gives the same bits.
pub fn attend_one_baseline(
    q: &[f32],
    keys: &Held<'_>,
    key_res: Option<&[f32]>,
    values: &Held<'_>,
    value_res: Option<&[f32]>,
    dims: Dims,
    scale: f32,
) -> Vec<f32> {
    let threads = tch::get_num_threads().max(1) as usize;
    attend_one_on(Build::Baseline, Pool::Auto, threads, q, keys, key_res, values, value_res, dims, scale)
}

/// Which compiled copy of the kernel runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Build {
    /// AVX-512 (F, VL) with FMA.
    Avx512,
    /// AVX2 with FMA.
    Avx2,
    /// The baseline instruction set.
    Baseline,
}

impl Build {
    /// The widest this CPU runs.
    pub fn detect() -> Build {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vl") && std::arch::is_x86_feature_detected!("fma") {
                return Build::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Build::Avx2;
            }
        }
        Build::Baseline
    }
}

/// The three passes of [`attend_one_on`], each split into items that write disjoint outputs.
#[derive(Clone, Copy)]
enum Pass {
    /// Items: (row, key block or the residual keys); writes those tokens' scores.
    Scores,
    /// Items: (row, query); the softmax of that query's scores, in place.
    Softmax,
    /// Items: (row, 16 channels); writes those channels of every query of the row.
    Values,
}

/// One attention's inputs and its two shared buffers.
struct Job<'a> {
    q: &'a [f32],
    keys: &'a Held<'a>,
    key_res: Option<&'a [f32]>,
    values: &'a Held<'a>,
    value_res: Option<&'a [f32]>,
    dims: Dims,
    scale: f32,
    /// Tokens attended: quantized then residual.
    total: usize,
    /// Residual tokens of keys and of values.
    rk: usize,
    rv: usize,
    /// Quantized key blocks per row ([`key_blocks`]), and work items of the score pass per row
    /// (those, and one for the residual keys if any).
    key_blocks: usize,
    key_items_per_row: usize,
    /// Compiled for AVX-512 (32 vector registers): key tiles of two chunks of 16 tokens.
    wide: bool,
    /// Channels per item of the values pass: 32 with AVX-512 when they lie in one channel group
    /// of the values (twice the independent sums per token), else 16.
    value_width: usize,
    /// `[B·H_kv·group, total]`.
    scores: SharedMut<f32>,
    /// `[B·H_kv·group, D]`.
    out: SharedMut<f32>,
}

impl Job<'_> {
    fn items(&self, pass: Pass) -> usize {
        let rows = self.dims.batch * self.dims.kv_heads;
        match pass {
            Pass::Scores => rows * self.key_items_per_row,
            Pass::Softmax => rows * self.dims.group,
            Pass::Values => rows * self.dims.head_dim.div_ceil(self.value_width),
        }
    }
}

/// [`attend_one`] with a given build, pool and thread count; the same bits for any of them.
/// Each of three passes (scores, softmax, values) is split into items, and each item's outputs
/// are computed in one fixed order by whichever thread runs it.
#[allow(clippy::too_many_arguments)]
pub fn attend_one_on(
    build: Build,
    pool: Pool,
    threads: usize,
    q: &[f32],
    keys: &Held<'_>,
    key_res: Option<&[f32]>,
    values: &Held<'_>,
    value_res: Option<&[f32]>,
    dims: Dims,
    scale: f32,
) -> Vec<f32> {
    let d = dims.head_dim;
    let rows = dims.batch * dims.kv_heads;
    let rk = key_res.map_or(0, |r| r.len() / (rows * d));
    let rv = value_res.map_or(0, |r| r.len() / (rows * d));
    let total = keys.tokens + rk;
    assert_eq!(total, values.tokens + rv, "keys and values hold the same tokens");
    let mut out = vec![0f32; rows * dims.group * d];
    let mut scores = vec![0f32; rows * dims.group * total];
    let key_blocks = key_blocks(keys);
    let key_items_per_row = key_blocks + usize::from(rk > 0);
    let job = Job {
        q,
        keys,
        key_res,
        values,
        value_res,
        dims,
        scale,
        total,
        rk,
        rv,
        key_blocks,
        key_items_per_row,
        wide: build == Build::Avx512,
        value_width: if build == Build::Avx512 && values.q.group.is_multiple_of(32) && d.is_multiple_of(32) { 32 } else { 16 },
        scores: SharedMut::new(&mut scores),
        out: SharedMut::new(&mut out),
    };
    for pass in [Pass::Scores, Pass::Softmax, Pass::Values] {
        let items = job.items(pass);
        let work = |part: usize, parts: usize| {
            let (lo, hi) = (part * items / parts, (part + 1) * items / parts);
            if lo < hi {
                // SAFETY: the build's features were detected (or it is the baseline); items
                // write disjoint parts of the job's buffers, which outlive the pass.
                unsafe { run_items(build, &job, pass, lo, hi) };
            }
        };
        team::run_on(pool, threads.min(items).max(1), &work);
    }
    out
}

/// Items `lo..hi` of `pass`, through `build`'s compiled copy.
///
/// # Safety
/// `build`'s instructions exist on this CPU; no other thread touches these items' outputs.
unsafe fn run_items(build: Build, job: &Job<'_>, pass: Pass, lo: usize, hi: usize) {
    // SAFETY: forwarded.
    unsafe {
        match build {
            #[cfg(target_arch = "x86_64")]
            Build::Avx512 => items_avx512(job, pass, lo, hi),
            #[cfg(target_arch = "x86_64")]
            Build::Avx2 => items_avx2(job, pass, lo, hi),
            _ => items_body(job, pass, lo, hi),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
unsafe fn items_avx512(job: &Job<'_>, pass: Pass, lo: usize, hi: usize) {
    // SAFETY: forwarded.
    unsafe { items_body(job, pass, lo, hi) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn items_avx2(job: &Job<'_>, pass: Pass, lo: usize, hi: usize) {
    // SAFETY: forwarded.
    unsafe { items_body(job, pass, lo, hi) }
}

/// # Safety
/// As [`run_items`].
#[inline(always)]
unsafe fn items_body(job: &Job<'_>, pass: Pass, lo: usize, hi: usize) {
    let dims = job.dims;
    let (d, total, group) = (dims.head_dim, job.total, dims.group);
    let qrow = |row: usize| &job.q[row * group * d..(row + 1) * group * d];
    if let Pass::Softmax = pass {
        // SAFETY: forwarded.
        unsafe { softmax_rows(job, lo, hi) };
        return;
    }
    let mut scratch = Scratch::default();
    for item in lo..hi {
        match pass {
            Pass::Scores => {
                let per_row = job.key_items_per_row;
                let (row, block) = (item / per_row, item % per_row);
                let q = qrow(row);
                // This item's tokens, scored into a local [group, len] and then copied out.
                let mut local = std::mem::take(&mut scratch.local);
                let (t0, len) = if block < job.key_blocks {
                    let tokens = key_block_tokens(job.keys, block);
                    let out = sized(&mut local, group * tokens.len());
                    out.fill(0.0);
                    key_scores(job.keys, row, block, q, dims, job.wide, &mut scratch, out);
                    (tokens.start, tokens.len())
                } else {
                    let r = &job.key_res.expect("a residual item only with residual keys")[row * job.rk * d..(row + 1) * job.rk * d];
                    let out = sized(&mut local, group * job.rk);
                    for qi in 0..group {
                        let qv = &q[qi * d..(qi + 1) * d];
                        for (j, kr) in r.chunks(d).enumerate() {
                            out[qi * job.rk + j] = dot(qv, kr);
                        }
                    }
                    (job.keys.tokens, job.rk)
                };
                for qi in 0..group {
                    // SAFETY: tokens t0..t0+len of query (row, qi): this item's alone.
                    let dst = unsafe { job.scores.slice((row * group + qi) * total + t0, len) };
                    dst.copy_from_slice(&local[qi * len..(qi + 1) * len]);
                }
                scratch.local = local;
            }
            Pass::Softmax => unreachable!("the softmax runs over the whole range below"),
            Pass::Values => {
                let vw = job.value_width;
                let chunks = d.div_ceil(vw);
                let (row, chunk) = (item / chunks, item % chunks);
                let (d0, d1) = (chunk * vw, (chunk * vw + vw).min(d));
                let width = d1 - d0;
                // SAFETY: no pass writes scores while the values pass runs.
                let scores = unsafe { std::slice::from_raw_parts(job.scores.get().add(row * group * total) as *const f32, group * total) };
                let mut buf = std::mem::take(&mut scratch.local);
                let local = sized(&mut buf, group * width);
                local.fill(0.0);
                value_sums(job.values, row, scores, dims, total, &mut scratch, local, d0..d1);
                if let Some(r) = job.value_res {
                    let r = &r[row * job.rv * d..(row + 1) * job.rv * d];
                    for qi in 0..group {
                        let orow = &mut local[qi * width..(qi + 1) * width];
                        for (j, vr) in r.chunks(d).enumerate() {
                            let w = scores[qi * total + job.values.tokens + j];
                            orow.iter_mut().zip(&vr[d0..d1]).for_each(|(x, &v)| *x = w.mul_add(v, *x));
                        }
                    }
                }
                for qi in 0..group {
                    // SAFETY: channels d0..d1 of query (row, qi): this item's alone.
                    let dst = unsafe { job.out.slice((row * group + qi) * d + d0, width) };
                    dst.copy_from_slice(&local[qi * width..(qi + 1) * width]);
                }
                scratch.local = buf;
            }
        }
    }
}

/// `sums[j] += Σ_t rows[j][t]`, each in token order, `Q` rows at a time.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // token-major on purpose: the Q chains advance together
fn lockstep_sums<const Q: usize>(rows: &[&[f32]], total: usize, sums: &mut [f32]) {
    let rows: [&[f32]; Q] = std::array::from_fn(|j| &rows[j][..total]);
    let mut acc: [f32; Q] = std::array::from_fn(|j| sums[j]);
    for t in 0..total {
        for j in 0..Q {
            acc[j] += rows[j][t];
        }
    }
    sums[..Q].copy_from_slice(&acc);
}

/// The softmax of queries `lo..hi`'s scores, in place: each query's maximum, its shifted
/// exponentials, their sum in token order and the division. The sums of up to 8 queries run in
/// lockstep (independent chains, each in its one order; one alone is bound by the addition's
/// latency).
///
/// # Safety
/// As [`run_items`]: these queries' scores are this part's alone.
#[inline(always)]
unsafe fn softmax_rows(job: &Job<'_>, lo: usize, hi: usize) {
    let total = job.total;
    let mut first = lo;
    while first < hi {
        let q = (hi - first).min(8);
        let mut sums = [0f32; 8];
        for (j, sum) in sums[..q].iter_mut().enumerate() {
            // SAFETY: query `first + j`'s scores: this part's alone.
            let s = unsafe { job.scores.slice((first + j) * total, total) };
            // The maximum in 16 lanes (it does not depend on the order, and so vectorizes).
            let mut lanes = [f32::NEG_INFINITY; 16];
            for c in s.chunks(16) {
                for (m, &x) in lanes.iter_mut().zip(c) {
                    *m = m.max(x);
                }
            }
            let max = lanes.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) * job.scale;
            for x in s.iter_mut() {
                *x = exp_nonpositive(x.mul_add(job.scale, -max));
            }
            *sum = 0.0;
        }
        // SAFETY: as above; read only while the sums run.
        let rows: [&[f32]; 8] = std::array::from_fn(|j| if j < q { unsafe { job.scores.slice((first + j) * total, total) as &[f32] } } else { &[] });
        for_queries!(q, lockstep_sums, [], &rows[..q], total, &mut sums[..q]);
        for (j, &sum) in sums[..q].iter().enumerate() {
            // SAFETY: as above.
            let s = unsafe { job.scores.slice((first + j) * total, total) };
            s.iter_mut().for_each(|x| *x /= sum);
        }
        first += q;
    }
}

/// [`elements`] for residual tensors (f32, contiguous, on CPU).
pub fn residual(t: &Tensor) -> Option<&[f32]> {
    elements::<f32>(t, Kind::Float)
}
