//! The decode kernel sums every output in the one documented order: equal, bit for bit, to a
//! plain scalar chain of fused multiply-adds, whatever the number of rows, the threads and the
//! tiling that the shape leads to; and equal to libtorch's product within rounding.

use kvcore::decode_matmul::{matmul, matmul_on, Isa, Pool};

/// A deterministic pseudo-random matrix in [-1, 1).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// The order `matmul` promises, written the plainest way.
fn reference(x: &[f32], rows: usize, w: &[f32], k: usize, n: usize) -> Vec<f32> {
    let mut y = vec![0f32; rows * n];
    for r in 0..rows {
        for c in 0..n {
            let mut acc = 0f32;
            for i in 0..k {
                acc = x[r * k + i].mul_add(w[i * n + c], acc);
            }
            y[r * n + c] = acc;
        }
    }
    y
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

#[test]
fn every_output_is_the_documented_fma_chain() {
    // Widths that hit every tiling path: whole 128-column tiles, 64-column multi-row tiles,
    // leftover vectors (16..112 columns) and single columns; depths that are and are not
    // multiples of the 16-row pass.
    let shapes = [(576, 960), (17, 5), (40, 130), (33, 200), (64, 16), (7, 1), (100, 371)];
    for (si, &(k, n)) in shapes.iter().enumerate() {
        let w = values(k * n, 11 + si as u64);
        for rows in [1usize, 2, 3, 5, 6, 7, 8, 13, 16] {
            let x = values(rows * k, 101 + (si * 31 + rows) as u64);
            let want = reference(&x, rows, &w, k, n);
            for threads in [1usize, 2, 3] {
                // libtorch's OpenMP team (loaded in this test process), and rayon's pool.
                for pool in [Pool::Auto, Pool::Rayon] {
                    let mut y = vec![f32::NAN; rows * n];
                    matmul_on(pool, &x, rows, &w, k, n, &mut y, threads);
                    assert_eq!(bits(&y), bits(&want), "k={k} n={n} rows={rows} threads={threads} {pool:?} on {:?}", Isa::detect());
                }
            }
        }
    }
}

#[test]
fn a_row_gets_the_same_bits_alone_and_in_any_batch() {
    let (k, n) = (1536, 576);
    let w = values(k * n, 7);
    let x = values(16 * k, 8);
    let mut batch = vec![0f32; 16 * n];
    matmul(&x, 16, &w, k, n, &mut batch, 2);
    for r in 0..16 {
        let mut alone = vec![0f32; n];
        matmul(&x[r * k..(r + 1) * k], 1, &w, k, n, &mut alone, 2);
        assert_eq!(bits(&alone), bits(&batch[r * n..(r + 1) * n]), "row {r}");
    }
}

#[test]
fn agrees_with_libtorch_within_rounding() {
    let (rows, k, n) = (3usize, 896usize, 1152usize);
    let w = values(k * n, 21);
    let x = values(rows * k, 22);
    let mut y = vec![0f32; rows * n];
    matmul(&x, rows, &w, k, n, &mut y, 2);
    let xt = tch::Tensor::from_slice(&x).view([rows as i64, k as i64]);
    let wt = tch::Tensor::from_slice(&w).view([k as i64, n as i64]);
    let torch: Vec<f32> = Vec::try_from(xt.matmul(&wt).view([-1])).unwrap();
    let worst = y.iter().zip(&torch).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    // Sums of 896 products of magnitude < 1: f32 rounding differences are around 1e-5.
    assert!(worst < 1e-4, "max |kernel - libtorch| = {worst}");
}

#[test]
#[should_panic(expected = "w must be [k, n]")]
fn a_mismatched_matrix_is_refused() {
    let mut y = vec![0f32; 4];
    matmul(&[1.0; 8], 2, &[1.0; 7], 4, 2, &mut y, 1);
}
