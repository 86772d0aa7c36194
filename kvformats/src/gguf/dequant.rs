//! Dequantisation of GGUF tensor data: the block layouts of the quantised ggml types (`Q4_0`,
//! `Q4_1`, `Q5_0`, `Q5_1`, `Q8_0`, `Q4_K`, `Q5_K`, `Q6_K`; ggml's `ggml-common.h`, gguf-py's
//! `gguf/quants.py`) to f32, each kernel evaluating its arithmetic in gguf-py's order so results
//! agree bit for bit.

use super::{GgmlType, GgufError, Result};

/// Below this many elements a tensor is dequantised on the calling thread only.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 20;

/// Converts `n_elements` values of type `ty`, stored in `bytes`, to f32 in `out`.
/// `bytes` must hold exactly the blocks for `n_elements` and `out` must have `n_elements` slots.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n_elements: usize, out: &mut [f32]) -> Result<()> {
    let fail = |reason: String| GgufError::Dequantize { context: "dequantize".into(), ty: ty.name(), reason };
    if !ty.can_dequantize() {
        return Err(fail("type not supported (supported: F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K Q5_K Q6_K)".into()));
    }
    let (Some(block), Some(type_size)) = (ty.block_size(), ty.type_size()) else {
        return Err(fail("type has no known block layout".into()));
    };
    if !n_elements.is_multiple_of(block) {
        return Err(fail(format!("{n_elements} elements is not a multiple of the block size {block}")));
    }
    let expected = (n_elements / block).checked_mul(type_size).ok_or_else(|| fail(format!("byte size of {n_elements} elements overflows")))?;
    if bytes.len() != expected {
        return Err(fail(format!("{n_elements} elements need {expected} bytes but {} were given", bytes.len())));
    }
    if out.len() != n_elements {
        return Err(fail(format!("output has {} slots for {n_elements} elements", out.len())));
    }
    match ty {
        GgmlType::F32 => run::<1, 4>(bytes, out, |b, o| o[0] = f32::from_le_bytes(*b)),
        GgmlType::F16 => run::<1, 2>(bytes, out, |b, o| o[0] = f16(b[0], b[1])),
        GgmlType::BF16 => run::<1, 2>(bytes, out, |b, o| o[0] = f32::from_bits(u32::from(u16::from_le_bytes(*b)) << 16)),
        GgmlType::Q4_0 => run::<32, 18>(bytes, out, block_q4_0),
        GgmlType::Q4_1 => run::<32, 20>(bytes, out, block_q4_1),
        GgmlType::Q5_0 => run::<32, 22>(bytes, out, block_q5_0),
        GgmlType::Q5_1 => run::<32, 24>(bytes, out, block_q5_1),
        GgmlType::Q8_0 => run::<32, 34>(bytes, out, block_q8_0),
        GgmlType::Q4_K => run::<256, 144>(bytes, out, block_q4_k),
        GgmlType::Q5_K => run::<256, 176>(bytes, out, block_q5_k),
        GgmlType::Q6_K => run::<256, 210>(bytes, out, block_q6_k),
        _ => return Err(fail("type not supported".into())),
    }
    Ok(())
}

/// Applies `kernel` to every (block bytes, block output) pair, splitting large tensors across
/// threads. Callers have checked that `bytes` and `out` hold the same number of whole blocks.
fn run<const B: usize, const N: usize>(bytes: &[u8], out: &mut [f32], kernel: fn(&[u8; N], &mut [f32; B])) {
    let serial = |bytes: &[u8], out: &mut [f32]| {
        for (b, o) in bytes.chunks_exact(N).zip(out.chunks_exact_mut(B)) {
            // chunks_exact yields exactly N and B items, so both conversions always succeed.
            if let (Ok(b), Ok(o)) = (<&[u8; N]>::try_from(b), <&mut [f32; B]>::try_from(o)) {
                kernel(b, o);
            }
        }
    };
    let threads = if out.len() < PARALLEL_MIN_ELEMENTS { 1 } else { std::thread::available_parallelism().map_or(1, |n| n.get()).min(16) };
    let n_blocks = out.len() / B;
    if threads <= 1 || n_blocks < 2 {
        serial(bytes, out);
        return;
    }
    let per_thread = n_blocks.div_ceil(threads);
    std::thread::scope(|s| {
        for (b, o) in bytes.chunks(per_thread * N).zip(out.chunks_mut(per_thread * B)) {
            s.spawn(move || serial(b, o));
        }
    });
}

#[inline]
fn f16(lo: u8, hi: u8) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([lo, hi])).to_f32()
}

/// Q4_0: f16 scale d, then 16 bytes of 4-bit quants (low nibbles are elements 0..16, high nibbles
/// 16..32); x = d * (q - 8).
pub(super) fn block_q4_0(b: &[u8; 18], o: &mut [f32; 32]) {
    let d = f16(b[0], b[1]);
    for j in 0..16 {
        let q = b[2 + j];
        o[j] = d * f32::from(i16::from(q & 0x0f) - 8);
        o[j + 16] = d * f32::from(i16::from(q >> 4) - 8);
    }
}

/// Q4_1: f16 scale d, f16 minimum m, 16 bytes of nibbles; x = d * q + m.
fn block_q4_1(b: &[u8; 20], o: &mut [f32; 32]) {
    let d = f16(b[0], b[1]);
    let m = f16(b[2], b[3]);
    for j in 0..16 {
        let q = b[4 + j];
        o[j] = d * f32::from(q & 0x0f) + m;
        o[j + 16] = d * f32::from(q >> 4) + m;
    }
}

/// Q5_0: f16 d, a u32 of fifth bits (bit j belongs to element j), 16 bytes of nibbles;
/// x = d * (q - 16).
fn block_q5_0(b: &[u8; 22], o: &mut [f32; 32]) {
    let d = f16(b[0], b[1]);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for j in 0..16 {
        let q = b[6 + j];
        let lo = (q & 0x0f) | ((((qh >> j) & 1) as u8) << 4);
        let hi = (q >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
        o[j] = d * f32::from(i16::from(lo) - 16);
        o[j + 16] = d * f32::from(i16::from(hi) - 16);
    }
}

/// Q5_1: f16 d, f16 m, u32 of fifth bits, 16 bytes of nibbles; x = d * q + m.
fn block_q5_1(b: &[u8; 24], o: &mut [f32; 32]) {
    let d = f16(b[0], b[1]);
    let m = f16(b[2], b[3]);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for j in 0..16 {
        let q = b[8 + j];
        let lo = (q & 0x0f) | ((((qh >> j) & 1) as u8) << 4);
        let hi = (q >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
        o[j] = d * f32::from(lo) + m;
        o[j + 16] = d * f32::from(hi) + m;
    }
}

/// Q8_0: f16 d, 32 signed bytes; x = q * d.
fn block_q8_0(b: &[u8; 34], o: &mut [f32; 32]) {
    let d = f16(b[0], b[1]);
    for j in 0..32 {
        o[j] = f32::from(b[2 + j] as i8) * d;
    }
}

/// The eight 6-bit (scale, min) pairs of a Q4_K/Q5_K super-block, packed into 12 bytes:
/// pairs 0..4 sit in the low 6 bits of bytes 0..4 / 4..8; pairs 4..8 take their low 4 bits from
/// bytes 8..12 and their top 2 bits from the high bits of bytes 0..4 / 4..8.
fn k_scales(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    if let Ok(s) = <&[u8; 12]>::try_from(s) {
        for j in 0..4 {
            sc[j] = s[j] & 0x3f;
            mn[j] = s[j + 4] & 0x3f;
            sc[j + 4] = (s[j + 8] & 0x0f) | ((s[j] >> 6) << 4);
            mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
        }
    }
    (sc, mn)
}

/// Q4_K: f16 d, f16 dmin, 12 bytes of packed scales/mins, 128 bytes of nibbles. Each 32-byte
/// chunk c holds sub-block 2c in its low nibbles and 2c+1 in its high nibbles;
/// x = (d * scale) * q - (dmin * min).
fn block_q4_k(b: &[u8; 144], o: &mut [f32; 256]) {
    let d = f16(b[0], b[1]);
    let dmin = f16(b[2], b[3]);
    let (sc, mn) = k_scales(&b[4..16]);
    for c in 0..4 {
        let (d1, m1) = (d * f32::from(sc[2 * c]), dmin * f32::from(mn[2 * c]));
        let (d2, m2) = (d * f32::from(sc[2 * c + 1]), dmin * f32::from(mn[2 * c + 1]));
        for l in 0..32 {
            let q = b[16 + 32 * c + l];
            o[64 * c + l] = d1 * f32::from(q & 0x0f) - m1;
            o[64 * c + 32 + l] = d2 * f32::from(q >> 4) - m2;
        }
    }
}

/// Q5_K: as Q4_K plus 32 bytes of fifth bits before the nibbles; bit i of byte l is the fifth
/// bit of element l of sub-block i.
fn block_q5_k(b: &[u8; 176], o: &mut [f32; 256]) {
    let d = f16(b[0], b[1]);
    let dmin = f16(b[2], b[3]);
    let (sc, mn) = k_scales(&b[4..16]);
    for c in 0..4 {
        let (d1, m1) = (d * f32::from(sc[2 * c]), dmin * f32::from(mn[2 * c]));
        let (d2, m2) = (d * f32::from(sc[2 * c + 1]), dmin * f32::from(mn[2 * c + 1]));
        for l in 0..32 {
            let q = b[48 + 32 * c + l];
            let h = b[16 + l];
            let lo = (q & 0x0f) | (((h >> (2 * c)) & 1) << 4);
            let hi = (q >> 4) | (((h >> (2 * c + 1)) & 1) << 4);
            o[64 * c + l] = d1 * f32::from(lo) - m1;
            o[64 * c + 32 + l] = d2 * f32::from(hi) - m2;
        }
    }
}

/// Q6_K: 128 bytes of low nibbles, 64 bytes of 2-bit high parts, 16 signed 8-bit scales (one per
/// 16 elements), f16 d; x = (d * scale) * (q - 32). Each half h of 128 elements uses
/// ql[64h..64h+64] and qh[32h..32h+32]: element 32k+l takes nibble (k/2) of ql[64h + 32(k%2) + l]
/// and bits 2k..2k+2 of qh[32h + l].
fn block_q6_k(b: &[u8; 210], o: &mut [f32; 256]) {
    let d = f16(b[208], b[209]);
    let mut ds = [0f32; 16];
    for (i, s) in ds.iter_mut().enumerate() {
        *s = d * f32::from(b[192 + i] as i8);
    }
    for h in 0..2 {
        for l in 0..32 {
            let qh = b[128 + 32 * h + l];
            let ql_a = b[64 * h + l];
            let ql_b = b[64 * h + 32 + l];
            let q = [
                (ql_a & 0x0f) | ((qh & 0x03) << 4),
                (ql_b & 0x0f) | (((qh >> 2) & 0x03) << 4),
                (ql_a >> 4) | (((qh >> 4) & 0x03) << 4),
                (ql_b >> 4) | (((qh >> 6) & 0x03) << 4),
            ];
            for (k, &qk) in q.iter().enumerate() {
                let idx = 128 * h + 32 * k + l;
                o[idx] = ds[idx / 16] * f32::from(i16::from(qk) - 32);
            }
        }
    }
}
