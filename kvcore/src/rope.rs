//! Rotary position embeddings: inverse frequencies (with linear and Llama-3.1 scaling, and GGUF
//! `rope_freqs` factors), cos/sin tables precomputed once and grown geometrically, and the
//! `rotate_half` application used by Hugging Face checkpoints.

use crate::config::{ModelConfig, RopeScaling};
use tch::{Device, Kind, Tensor};

/// Precomputed cos/sin tables for one model.
pub struct RotaryEmbedding {
    cos: Tensor,
    sin: Tensor,
    len: usize,
    kind: Kind,
    device: Device,
    /// The inverse frequencies, as caches receive them in their spec.
    handle: kvcache::rope::Rope,
}

impl RotaryEmbedding {
    /// Builds the tables for `initial_len` positions; `freq_factors` are GGUF `rope_freqs` divisors.
    pub fn new(cfg: &ModelConfig, kind: Kind, device: Device, freq_factors: Option<&Tensor>, initial_len: usize) -> Self {
        let inv_freq = inverse_frequencies(cfg, freq_factors);
        let freqs = Vec::<f32>::try_from(&inv_freq.to_kind(Kind::Float)).expect("inverse frequencies are a 1-D f32 tensor");
        let handle = kvcache::rope::Rope::new(&freqs);
        let mut rope = RotaryEmbedding { cos: Tensor::new(), sin: Tensor::new(), len: 0, kind, device, handle };
        rope.build(initial_len.max(1));
        rope
    }

    fn build(&mut self, len: usize) {
        // In f32 on the CPU, as transformers does, then cast: keeps parity at 1e-4. The method
        // API computes the same tables, so caches that undo or average RoPE match the engine.
        let (cos, sin) = self.handle.cos_sin_range(0, len, Device::Cpu);
        self.cos = cos.to_kind(self.kind).to_device(self.device);
        self.sin = sin.to_kind(self.kind).to_device(self.device);
        self.len = len;
    }

    /// The frequencies as the method API's handle (`CacheSpec::rope`).
    pub fn handle(&self) -> kvcache::rope::Rope {
        self.handle
    }

    /// Makes sure positions `< needed` are in the table (doubling, so growth is rare).
    pub fn ensure(&mut self, needed: usize) {
        if needed > self.len {
            self.build(needed.max(self.len * 2));
        }
    }

    /// cos and sin for positions `start..start+len`, shaped `[1, 1, len, head_dim]`.
    pub fn table(&mut self, start: usize, len: usize) -> (Tensor, Tensor) {
        self.ensure(start + len);
        let c = self.cos.narrow(0, start as i64, len as i64).unsqueeze(0).unsqueeze(0);
        let s = self.sin.narrow(0, start as i64, len as i64).unsqueeze(0).unsqueeze(0);
        (c, s)
    }
}

/// `x * cos + rotate_half(x) * sin` for `x` shaped `[B, H, L, D]` (the method API's rotation, so
/// methods that undo or average it use exactly the engine's).
pub use kvcache::rope::apply_rotary;

/// Inverse frequencies `1 / theta^(2i/d)`, rescaled as the config says.
pub fn inverse_frequencies(cfg: &ModelConfig, freq_factors: Option<&Tensor>) -> Tensor {
    let d = cfg.head_dim as i64;
    let exponents = Tensor::arange_start_step(0, d, 2, (Kind::Int64, Device::Cpu)).to_kind(Kind::Float) / (d as f64);
    let base = Tensor::from(cfg.rope_theta).to_kind(Kind::Float);
    let inv = base.pow(&exponents).reciprocal();
    let inv = match &cfg.rope_scaling {
        RopeScaling::None => inv,
        RopeScaling::Linear { factor } => inv / *factor,
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings: old } => {
            let low_wavelen = old / low_freq_factor;
            let high_wavelen = old / high_freq_factor;
            let wavelen = inv.reciprocal() * (2.0 * std::f64::consts::PI);
            let scaled = inv.where_self(&wavelen.le(low_wavelen), &(&inv / *factor));
            let smooth = (wavelen.reciprocal() * *old - *low_freq_factor) / (high_freq_factor - low_freq_factor);
            let smoothed: Tensor = (smooth.ones_like() - &smooth) * &scaled / *factor + &smooth * &scaled;
            let medium = wavelen.ge(high_wavelen).logical_and(&wavelen.le(low_wavelen));
            smoothed.where_self(&medium, &scaled)
        }
    };
    match freq_factors {
        Some(f) => inv / f.to_kind(Kind::Float).to_device(Device::Cpu),
        None => inv,
    }
}
