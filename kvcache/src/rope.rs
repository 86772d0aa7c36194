//! The model's rotary position embedding as methods see it: a small `Copy` handle to the inverse
//! frequencies ([`Rope`], carried in [`crate::cache::CacheSpec::rope`]) with the cos/sin tables
//! and the rotation the engine applies (Hugging Face `rotate_half` layout). Methods that reason
//! about queries at positions they have not seen (ExpectedAttention averages the rotation over
//! the next positions) or that need queries before rotation (they undo it: the rotation is
//! orthogonal) use it; the engine builds its own tables from the same frequencies.

use std::sync::{Mutex, OnceLock};
use tch::{Device, Kind, Tensor};

/// The inverse frequencies of a model's RoPE (`head_dim / 2` of them, scaling applied), interned
/// so that the handle is `Copy` like the rest of a cache's spec.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rope {
    inv_freq: &'static [f32],
}

/// Every distinct frequency table seen by this process (one per model configuration).
fn interned() -> &'static Mutex<Vec<&'static [f32]>> {
    static TABLES: OnceLock<Mutex<Vec<&'static [f32]>>> = OnceLock::new();
    TABLES.get_or_init(|| Mutex::new(Vec::new()))
}

impl Rope {
    /// The handle of these inverse frequencies (`1 / theta^(2i/d)` after any scaling).
    pub fn new(inv_freq: &[f32]) -> Rope {
        let mut tables = interned().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = tables.iter().find(|t| **t == inv_freq) {
            return Rope { inv_freq: t };
        }
        let t: &'static [f32] = Box::leak(inv_freq.to_vec().into_boxed_slice());
        tables.push(t);
        Rope { inv_freq: t }
    }

    /// Unscaled RoPE with base `theta` over `head_dim` channels (tests and synthetic models).
    pub fn from_theta(head_dim: usize, theta: f64) -> Rope {
        let inv: Vec<f32> = (0..head_dim / 2).map(|i| (1.0 / theta.powf(2.0 * i as f64 / head_dim as f64)) as f32).collect();
        Rope::new(&inv)
    }

    pub fn inv_freq(&self) -> &'static [f32] {
        self.inv_freq
    }

    /// Channels rotated: twice the number of frequencies.
    pub fn head_dim(&self) -> usize {
        2 * self.inv_freq.len()
    }

    /// cos and sin `[n, head_dim]` (f32, on `device`) for the given absolute positions, computed
    /// as the engine and transformers compute them (angles in f32, frequencies repeated twice).
    pub fn cos_sin(&self, positions: &[i64], device: Device) -> (Tensor, Tensor) {
        let pos = Tensor::from_slice(positions).to_kind(Kind::Float);
        let inv = Tensor::from_slice(self.inv_freq);
        let freqs = pos.unsqueeze(1) * inv.unsqueeze(0);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        (emb.cos().to_device(device), emb.sin().to_device(device))
    }

    /// cos and sin for positions `start..start + len`.
    pub fn cos_sin_range(&self, start: usize, len: usize, device: Device) -> (Tensor, Tensor) {
        let pos: Vec<i64> = (start as i64..(start + len) as i64).collect();
        self.cos_sin(&pos, device)
    }
}

/// `[-x2, x1]` for `x = [x1, x2]` split along the last dimension.
pub fn rotate_half(x: &Tensor) -> Tensor {
    let d = x.size()[x.dim() - 1];
    let half = d / 2;
    let x1 = x.narrow(-1, 0, half);
    let x2 = x.narrow(-1, half, half);
    Tensor::cat(&[&x2.neg(), &x1], -1)
}

/// The rotation: `x * cos + rotate_half(x) * sin` (cos/sin broadcast over `x`'s leading dims).
pub fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    x * cos + rotate_half(x) * sin
}

/// The inverse rotation: `x * cos - rotate_half(x) * sin` recovers the vector before
/// [`apply_rotary`] with the same cos/sin.
pub fn undo_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    x * cos - rotate_half(x) * sin
}

/// The rotation matrices of positions averaged: `mean_p (diag(cos_p) + P · diag(sin_p))`
/// `[D, D]`, where `P x = rotate_half(x)`. For a vector `x`, `R x` is the mean of its rotations
/// over the positions (kvpress ExpectedAttention's averaged RoPE).
pub fn mean_rotation(cos: &Tensor, sin: &Tensor) -> Tensor {
    let d = cos.size()[1];
    let opts = (cos.kind(), cos.device());
    let eye = Tensor::eye(d, opts);
    let h = d / 2;
    let p = Tensor::zeros([d, d], opts);
    let eye_h = Tensor::eye(h, opts);
    p.narrow(0, h, h).narrow(1, 0, h).copy_(&eye_h);
    p.narrow(0, 0, h).narrow(1, h, h).copy_(&eye_h.neg());
    let r = cos.unsqueeze(1) * eye.unsqueeze(0) + sin.unsqueeze(1) * p.unsqueeze(0);
    r.mean_dim([0i64].as_slice(), false, cos.kind())
}
