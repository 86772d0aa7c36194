//! The floating-point types a cache stores in (and the engine computes in).

use crate::error::{Error, Result};
use tch::{Device, Kind};

/// The floating-point types kvbench computes and stores in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum DType {
    F32,
    Bf16,
    F16,
}

impl std::str::FromStr for DType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "float" => Ok(DType::F32),
            "bf16" | "bfloat16" => Ok(DType::Bf16),
            "f16" | "float16" | "half" => Ok(DType::F16),
            _ => Err(Error::InvalidArgument { what: "dtype", value: s.into(), expected: "f32, bf16 or f16".into() }),
        }
    }
}

impl DType {
    /// The libtorch kind.
    pub fn kind(self) -> Kind {
        match self {
            DType::F32 => Kind::Float,
            DType::Bf16 => Kind::BFloat16,
            DType::F16 => Kind::Half,
        }
    }
    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::Bf16 | DType::F16 => 2,
        }
    }
    /// The default compute dtype on a device: f32 on CPU, bf16 on CUDA.
    pub fn default_for(device: Device) -> DType {
        if device.is_cuda() {
            DType::Bf16
        } else {
            DType::F32
        }
    }
    /// Short name as accepted on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
            DType::F16 => "f16",
        }
    }
}
