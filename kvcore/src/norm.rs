//! RMS normalisation, one implementation for every model family: normalised over the last axis
//! in f32 (`x · rsqrt(mean(x²) + eps)`); the families differ only in where the weight is applied
//! and in which dtype, each as its reference implementation in transformers does ([`RmsScale`]).

use tch::{Kind, Tensor};

/// Where the weight multiplies the normalised input, and in which dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RmsScale {
    /// Normalised in f32, cast back to the input's dtype, then times the weight (Llama,
    /// Mistral, Qwen2; `Mamba2RMSNorm`).
    AfterCast,
    /// The input cast to the weight's dtype first, normalised in f32, cast back to the weight's
    /// dtype, then times the weight (`MambaRMSNorm`).
    InWeightDtype,
    /// Times the scale in f32 (Gemma's `1 + w`, kept in f32), then cast to the input's dtype
    /// (`RecurrentGemmaRMSNorm`).
    InF32,
}

/// RMS norm of `x` over its last axis with `weight` (or Gemma's scale) and `eps`.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64, scale: RmsScale) -> Tensor {
    let xf = match scale {
        RmsScale::InWeightDtype => x.to_kind(weight.kind()).to_kind(Kind::Float),
        _ => x.to_kind(Kind::Float),
    };
    let var = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
    let normed = xf * (var + eps).rsqrt();
    match scale {
        RmsScale::AfterCast => weight * normed.to_kind(x.kind()),
        RmsScale::InWeightDtype => weight * normed.to_kind(weight.kind()),
        RmsScale::InF32 => (normed * weight).to_kind(x.kind()),
    }
}
