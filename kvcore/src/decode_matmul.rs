//! Batch-invariant matrix products for decoding: `y = x · W` over the rows of one decode step,
//! where every output element is summed in one fixed order (over the input dimension, one fused
//! multiply-add per term, in increasing order), whatever the number of rows, the threads and the
//! CPU's vector width. A sequence decoded in a batch therefore gets the very bits it gets alone,
//! while the batch reads each weight matrix once per step instead of once per row.
//!
//! libtorch's products (MKL) pick their kernel, and so their summation order, by shape and CPU:
//! a `[B, in] × [in, out]` GEMM does not sum a row the way the `[1, in]` GEMV does, which is why
//! batched decoding used to multiply row by row. Here a column tile of `W` is streamed once
//! and applied to a group of rows from registers; each lane's accumulator is a chain of `fma`s,
//! which IEEE 754 rounds exactly once per step, so the vectorised and the portable code agree
//! bit for bit (tested in `kvcore/tests/decode_matmul.rs`).

use std::sync::OnceLock;

/// Which threads run the parts of a [`matmul_on`] (libtorch's OpenMP team, or rayon's pool).
pub use kvcache::team::Pool;

/// The instruction set the kernel is compiled for at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// x86-64 with AVX-512F and FMA: 16-lane vectors, 32 registers.
    Avx512,
    /// x86-64 with AVX2, FMA and F16C: 8-lane vectors, 16 registers.
    Avx2,
    /// The portable loop (`f32::mul_add`); hardware FMA on aarch64, same bits everywhere.
    Portable,
}

impl Isa {
    /// This CPU's, detected once.
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
                    return Isa::Avx512;
                }
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
                    return Isa::Avx2;
                }
            }
            Isa::Portable
        })
    }

    /// Whether the kernel is worth using here: with vector FMA in hardware. Without it
    /// (x86-64 before Haswell), `f32::mul_add` is a library call and libtorch is faster.
    pub fn is_fast(self) -> bool {
        match self {
            Isa::Avx512 | Isa::Avx2 => true,
            Isa::Portable => cfg!(target_arch = "aarch64"),
        }
    }
}

/// A weight element the kernel reads: f32 itself, or a 16-bit float ([`Bf16`], [`F16`]) widened
/// to f32 exactly as it is loaded, so that half-precision weights halve the bytes a decoded token
/// streams while the arithmetic stays f32 and in the same order.
pub trait Weight: Copy + Send + Sync + 'static {
    /// The element as the AVX-512 build reads it (a type with the same bits whose
    /// [`Weight::widen_row`] may use AVX-512 instructions), and as the AVX2 build does.
    type OnAvx512: Weight;
    type OnAvx2: Weight;

    /// The element as f32 (exact: every bf16 and f16 value is an f32 value).
    fn widen(self) -> f32;

    /// A row segment widened: element by element unless the type has a vector conversion.
    #[inline(always)]
    fn widen_row<const L: usize>(row: &[Self; L]) -> [f32; L] {
        std::array::from_fn(|j| row[j].widen())
    }
}

impl Weight for f32 {
    type OnAvx512 = f32;
    type OnAvx2 = f32;
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

/// A bfloat16 weight, as its bits (libtorch's `BFloat16` storage).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(transparent)]
pub struct Bf16(pub u16);

impl Weight for Bf16 {
    type OnAvx512 = Bf16Avx512;
    type OnAvx2 = Bf16;
    #[inline(always)]
    fn widen(self) -> f32 {
        f32::from_bits((self.0 as u32) << 16)
    }
}

/// An IEEE half-precision weight, as its bits (libtorch's `Half` storage).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(transparent)]
pub struct F16(pub u16);

impl Weight for F16 {
    type OnAvx512 = F16Avx512;
    type OnAvx2 = F16Avx2;
    /// Branch-free, so that a row of them vectorizes (what F16C's `vcvtph2ps` does, in portable
    /// code): exponent and mantissa moved into f32's fields and scaled by 2^112, which is exact
    /// for normal and subnormal halves alike; infinities and NaNs get f32's all-ones exponent.
    #[inline(always)]
    fn widen(self) -> f32 {
        let h = self.0 as u32;
        let sign = (h & 0x8000) << 16;
        let body = (h & 0x7fff) << 13;
        let scaled = (f32::from_bits(body) * f32::from_bits(0x7780_0000)).to_bits();
        let bits = if h & 0x7c00 == 0x7c00 { body | 0x7f80_0000 } else { scaled };
        f32::from_bits(bits | sign)
    }
}

/// An f16 weight read by the AVX-512 build: 16 at a time through `vcvtph2ps` (exact, the same
/// values as [`F16::widen`]). Only ever instantiated inside the AVX-512 build's kernel.
#[derive(Clone, Copy, Debug)]
#[repr(transparent)]
pub struct F16Avx512(u16);

/// A bf16 weight read by the AVX-512 build: 16 at a time, zero-extended to 32 bits and shifted
/// into the top half (the same values as [`Bf16::widen`]).
#[derive(Clone, Copy, Debug)]
#[repr(transparent)]
pub struct Bf16Avx512(u16);

impl Weight for Bf16Avx512 {
    type OnAvx512 = Bf16Avx512;
    type OnAvx2 = Bf16;
    #[inline(always)]
    fn widen(self) -> f32 {
        Bf16(self.0).widen()
    }
    #[inline(always)]
    fn widen_row<const L: usize>(row: &[Self; L]) -> [f32; L] {
        let mut out = [0f32; L];
        let mut j = 0;
        #[cfg(target_arch = "x86_64")]
        while j + 16 <= L {
            use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm512_castsi512_ps, _mm512_cvtepu16_epi32, _mm512_slli_epi32, _mm512_storeu_ps};
            // SAFETY: 16 values read and 16 floats written inside the arrays; this type is only
            // used by the AVX-512 build (`columns_avx512`), run where AVX-512F was detected.
            unsafe {
                let wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(row.as_ptr().add(j) as *const __m256i));
                _mm512_storeu_ps(out.as_mut_ptr().add(j), _mm512_castsi512_ps(_mm512_slli_epi32::<16>(wide)));
            }
            j += 16;
        }
        while j < L {
            out[j] = row[j].widen();
            j += 1;
        }
        out
    }
}

/// An f16 weight read by the AVX2 build: 8 at a time through F16C's `vcvtph2ps`.
#[derive(Clone, Copy, Debug)]
#[repr(transparent)]
pub struct F16Avx2(u16);

impl Weight for F16Avx512 {
    type OnAvx512 = F16Avx512;
    type OnAvx2 = F16Avx2;
    #[inline(always)]
    fn widen(self) -> f32 {
        F16(self.0).widen()
    }
    #[inline(always)]
    fn widen_row<const L: usize>(row: &[Self; L]) -> [f32; L] {
        let mut out = [0f32; L];
        let mut j = 0;
        #[cfg(target_arch = "x86_64")]
        while j + 16 <= L {
            use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm512_cvtph_ps, _mm512_storeu_ps};
            // SAFETY: 16 halves read and 16 floats written inside the arrays; this type is only
            // used by the AVX-512 build (`columns_avx512`), run where AVX-512F was detected.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(j), _mm512_cvtph_ps(_mm256_loadu_si256(row.as_ptr().add(j) as *const __m256i))) };
            j += 16;
        }
        while j < L {
            out[j] = row[j].widen();
            j += 1;
        }
        out
    }
}

impl Weight for F16Avx2 {
    type OnAvx512 = F16Avx512;
    type OnAvx2 = F16Avx2;
    #[inline(always)]
    fn widen(self) -> f32 {
        F16(self.0).widen()
    }
    #[inline(always)]
    fn widen_row<const L: usize>(row: &[Self; L]) -> [f32; L] {
        let mut out = [0f32; L];
        let mut j = 0;
        #[cfg(target_arch = "x86_64")]
        while j + 8 <= L {
            use std::arch::x86_64::{__m128i, _mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
            // SAFETY: 8 halves read and 8 floats written inside the arrays; this type is only
            // used by the AVX2 build (`columns_avx2`), run where AVX2, FMA and F16C were detected.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(j), _mm256_cvtph_ps(_mm_loadu_si128(row.as_ptr().add(j) as *const __m128i))) };
            j += 8;
        }
        while j < L {
            out[j] = row[j].widen();
            j += 1;
        }
        out
    }
}

/// `y[r, c] = Σ_i x[r, i] · w[i, c]` for `x: [rows, k]`, `w: [k, n]` and `y: [rows, n]`, all
/// row-major and contiguous; each sum runs over `i = 0..k` in order, as
/// `acc = x[r, i].mul_add(w[i, c], acc)` from `acc = 0`. `threads` splits the columns, run on
/// libtorch's OpenMP team when the process has it, else on rayon's global pool; neither the
/// split nor the pool changes any bit.
///
/// # Panics
/// If a slice's length does not match `rows`, `k` and `n`.
pub fn matmul(x: &[f32], rows: usize, w: &[f32], k: usize, n: usize, y: &mut [f32], threads: usize) {
    matmul_on(Pool::Auto, x, rows, w, k, n, y, threads)
}

/// [`matmul`] with weights of another element type, each widened to f32 as it is read: the same
/// bits as [`matmul`] over the widened matrix.
///
/// # Panics
/// As [`matmul`].
pub fn matmul_weights<W: Weight>(x: &[f32], rows: usize, w: &[W], k: usize, n: usize, y: &mut [f32], threads: usize) {
    matmul_on(Pool::Auto, x, rows, w, k, n, y, threads)
}

/// [`matmul_weights`] on the given threads.
///
/// # Panics
/// As [`matmul`].
#[allow(clippy::too_many_arguments)]
pub fn matmul_on<W: Weight>(pool: Pool, x: &[f32], rows: usize, w: &[W], k: usize, n: usize, y: &mut [f32], threads: usize) {
    assert_eq!(x.len(), rows * k, "x must be [rows, k]");
    assert_eq!(w.len(), k * n, "w must be [k, n]");
    assert_eq!(y.len(), rows * n, "y must be [rows, n]");
    if rows == 0 || n == 0 {
        return;
    }
    let isa = Isa::detect();
    let (xp, wp, yp) = (Ptr(x.as_ptr() as *mut f32), Ptr(w.as_ptr() as *mut W), Ptr(y.as_mut_ptr()));
    // Part `part` of `parts`: a contiguous, 16-aligned range of columns.
    let run = |part: usize, parts: usize| {
        let per = n.div_ceil(parts).div_ceil(16) * 16;
        let c0 = (part * per).min(n);
        let c1 = ((part + 1) * per).min(n);
        if c0 < c1 {
            // SAFETY: the slices' lengths were checked above; parts write disjoint columns.
            unsafe { columns(isa, xp.get(), rows, wp.get(), k, n, yp.get(), c0, c1) };
        }
    };
    let threads = threads.clamp(1, n.div_ceil(16));
    kvcache::team::run_on(pool, threads, &run);
}

/// A raw pointer that the parts of one `matmul` share (each writes its own columns).
#[derive(Clone, Copy)]
struct Ptr<T>(*mut T);
// SAFETY: `matmul` hands each part a disjoint column range of `y` and only reads `x` and `w`.
unsafe impl<T> Send for Ptr<T> {}
unsafe impl<T> Sync for Ptr<T> {}
impl<T> Ptr<T> {
    fn get(self) -> *mut T {
        self.0
    }
}

/// Columns `c0..c1` of `y`, through the widest kernel this CPU has.
///
/// # Safety
/// `x`, `w` and `y` hold `[rows, k]`, `[k, n]` and `[rows, n]` floats; `c0 <= c1 <= n`.
#[allow(clippy::too_many_arguments)]
unsafe fn columns<W: Weight>(isa: Isa, x: *const f32, rows: usize, w: *const W, k: usize, n: usize, y: *mut f32, c0: usize, c1: usize) {
    // SAFETY: forwarded; the target features were detected at run time.
    unsafe {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => columns_avx512(x, rows, w as *const W::OnAvx512, k, n, y, c0, c1),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => columns_avx2(x, rows, w as *const W::OnAvx2, k, n, y, c0, c1),
            _ => columns_with::<W, 64, 4, 16, 4>(x, rows, w, k, n, y, c0, c1),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn columns_avx512<W: Weight>(x: *const f32, rows: usize, w: *const W, k: usize, n: usize, y: *mut f32, c0: usize, c1: usize) {
    // One row: 8 accumulators of 16 lanes. Several rows: 6 rows x 4 vectors = 24 of the 32
    // registers, leaving room for the tile's 4 weight vectors and the broadcast input.
    // SAFETY: forwarded.
    unsafe { columns_with::<W, 128, 64, 16, 6>(x, rows, w, k, n, y, c0, c1) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn columns_avx2<W: Weight>(x: *const f32, rows: usize, w: *const W, k: usize, n: usize, y: *mut f32, c0: usize, c1: usize) {
    // One row: 8 accumulators of 8 lanes. Several rows: 6 rows x 2 vectors = 12 of the 16.
    // SAFETY: forwarded.
    unsafe { columns_with::<W, 64, 16, 8, 6>(x, rows, w, k, n, y, c0, c1) }
}

/// The tiling: columns in tiles of `W1` (one row) or `WB` (several rows, `NB` at a time), the
/// rest in tiles of `WV` (one vector), then one column at a time. Tiling changes which
/// columns are computed together, never the order of any one column's sum.
///
/// # Safety
/// As `columns`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn columns_with<W: Weight, const W1: usize, const WB: usize, const WV: usize, const NB: usize>(
    x: *const f32,
    rows: usize,
    w: *const W,
    k: usize,
    n: usize,
    y: *mut f32,
    c0: usize,
    c1: usize,
) {
    // SAFETY: every tile below stays inside columns c0..c1 and rows 0..rows.
    unsafe {
        let mut i0 = 0;
        while i0 < k {
            let i1 = (i0 + K_BLOCK).min(k);
            let rows_i = Rows { x, k, i0, i1 };
            let mut c = c0;
            if rows == 1 {
                while c + W1 <= c1 {
                    tile::<W, W1, 1>(rows_i, w.add(c), n, y.add(c));
                    c += W1;
                }
            } else {
                while c + WB <= c1 {
                    row_groups::<W, WB, NB>(rows_i, rows, w.add(c), n, y.add(c));
                    c += WB;
                }
            }
            // What is left narrower than a tile: one pass of the widest whole vectors, then
            // column by column.
            let rest = (c1 - c) / WV * WV;
            if rest > 0 {
                row_groups_of_width::<W, NB>(rest, rows_i, rows, w.add(c), n, y.add(c));
                c += rest;
            }
            while c < c1 {
                row_groups::<W, 1, NB>(rows_i, rows, w.add(c), n, y.add(c));
                c += 1;
            }
            i0 = i1;
        }
    }
}

/// `row_groups` for a width known at run time: a multiple of 16 below 128 (the widest tile).
///
/// # Safety
/// As `row_groups`.
#[inline(always)]
unsafe fn row_groups_of_width<W: Weight, const NB: usize>(width: usize, xs: Rows, rows: usize, w: *const W, n: usize, y: *mut f32) {
    // SAFETY: forwarded.
    unsafe {
        match width {
            16 => row_groups::<W, 16, NB>(xs, rows, w, n, y),
            32 => row_groups::<W, 32, NB>(xs, rows, w, n, y),
            48 => row_groups::<W, 48, NB>(xs, rows, w, n, y),
            64 => row_groups::<W, 64, NB>(xs, rows, w, n, y),
            80 => row_groups::<W, 80, NB>(xs, rows, w, n, y),
            96 => row_groups::<W, 96, NB>(xs, rows, w, n, y),
            112 => row_groups::<W, 112, NB>(xs, rows, w, n, y),
            _ => {
                for c in (0..width).step_by(16) {
                    row_groups::<W, 16, NB>(xs, rows, w.add(c), n, y.add(c));
                }
            }
        }
    }
}

/// One column tile of width `L` for all rows, `NB` rows at a time (the tile of `w` stays in
/// cache after the first group).
///
/// # Safety
/// `w` and `y` point at the tile's first column; `x` holds `[rows, k]`.
#[inline(always)]
unsafe fn row_groups<W: Weight, const L: usize, const NB: usize>(xs: Rows, rows: usize, w: *const W, n: usize, y: *mut f32) {
    // SAFETY: groups cover rows 0..rows exactly.
    unsafe {
        let mut r = 0;
        while r + NB <= rows {
            tile::<W, L, NB>(xs.skip(r), w, n, y.add(r * n));
            r += NB;
        }
        match rows - r {
            0 => {}
            1 => tile::<W, L, 1>(xs.skip(r), w, n, y.add(r * n)),
            2 => tile::<W, L, 2>(xs.skip(r), w, n, y.add(r * n)),
            3 => tile::<W, L, 3>(xs.skip(r), w, n, y.add(r * n)),
            4 => tile::<W, L, 4>(xs.skip(r), w, n, y.add(r * n)),
            5 => tile::<W, L, 5>(xs.skip(r), w, n, y.add(r * n)),
            left => {
                // NB > 6 is not instantiated; fall back one row at a time (same bits).
                for j in 0..left {
                    tile::<W, L, 1>(xs.skip(r + j), w, n, y.add((r + j) * n));
                }
            }
        }
    }
}

/// How many input rows (`i`) a pass over the column tiles covers before moving on: a few rows
/// of `w` read across their whole width are a few sequential streams, which the hardware
/// prefetchers follow; a tile's accumulators go to `y` between passes (exact f32 values).
const K_BLOCK: usize = 16;

/// Rows `i0..i1` of the inputs `x: [rows, k]`, for one pass.
#[derive(Clone, Copy)]
struct Rows {
    x: *const f32,
    k: usize,
    i0: usize,
    i1: usize,
}

impl Rows {
    /// The same pass starting `r` rows of `x` further.
    ///
    /// # Safety
    /// `x` has at least `r + 1` rows.
    #[inline(always)]
    unsafe fn skip(self, r: usize) -> Rows {
        // SAFETY: per the contract.
        Rows { x: unsafe { self.x.add(r * self.k) }, ..self }
    }
}

/// `L` columns for `R` rows over inputs `i0..i1`: the accumulators live in registers (starting
/// from zero on the first pass, from `y` after), each weight row segment is loaded once and
/// applied to every row.
///
/// # Safety
/// `xs.x` holds `R` rows of `k`; `w` and `y` point at the tile's first column of a `[k, n]` and
/// an `[R, n]` matrix with `L` columns available.
#[inline(always)]
unsafe fn tile<W: Weight, const L: usize, const R: usize>(xs: Rows, w: *const W, n: usize, y: *mut f32) {
    let Rows { x, k, i0, i1 } = xs;
    let mut acc = [[0f32; L]; R];
    if i0 > 0 {
        for (r, acc_r) in acc.iter_mut().enumerate() {
            // SAFETY: row r of y has the tile's L columns.
            unsafe { std::ptr::copy_nonoverlapping(y.add(r * n), acc_r.as_mut_ptr(), L) };
        }
    }
    for i in i0..i1 {
        // SAFETY: row i of the tile, L elements inside w's row i.
        let wi: &[W; L] = unsafe { &*(w.add(i * n) as *const [W; L]) };
        let wi: [f32; L] = W::widen_row(wi);
        for (r, acc_r) in acc.iter_mut().enumerate() {
            // SAFETY: row r of x has k floats.
            let xi = unsafe { *x.add(r * k + i) };
            for (a, &wv) in acc_r.iter_mut().zip(wi.iter()) {
                *a = xi.mul_add(wv, *a);
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        // SAFETY: row r of y has the tile's L columns.
        unsafe { std::ptr::copy_nonoverlapping(acc_r.as_ptr(), y.add(r * n), L) };
    }
}
