//! Devices, dtypes and threads: parsing the user's `--device/--dtype/--kv-dtype/--threads` into
//! libtorch settings, with the defaults the benchmark documents (CPU f32, CUDA bf16).

use crate::error::{Error, Result};
use tch::{Device, Kind};

/// Where the model runs, as the user wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// CUDA device 0 when present, else the CPU.
    Auto,
    Cpu,
    Cuda(usize),
}

impl std::str::FromStr for DeviceSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidArgument {
            what: "device",
            value: s.to_string(),
            expected: "cpu, cuda, cuda:N or auto".into(),
        };
        match s {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => match s.strip_prefix("cuda:") {
                Some(n) => n.parse().map(DeviceSpec::Cuda).map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }
}

impl DeviceSpec {
    /// Resolves to a libtorch device, failing clearly when CUDA is asked for but absent.
    pub fn resolve(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Auto => Ok(if tch::Cuda::is_available() { Device::Cuda(0) } else { Device::Cpu }),
            DeviceSpec::Cuda(i) => {
                let n = tch::Cuda::device_count() as usize;
                if i < n {
                    Ok(Device::Cuda(i))
                } else if n == 0 {
                    Err(Error::InvalidArgument {
                        what: "device",
                        value: format!("cuda:{i}"),
                        expected: "cpu or auto: libtorch sees no CUDA device on this machine".into(),
                    })
                } else {
                    Err(Error::InvalidArgument {
                        what: "device",
                        value: format!("cuda:{i}"),
                        expected: format!("a CUDA device index below {n} (libtorch sees {n} CUDA devices)"),
                    })
                }
            }
        }
    }
}

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
        if device.is_cuda() { DType::Bf16 } else { DType::F32 }
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

/// Runtime settings shared by every command that runs a model.
#[derive(Clone, Copy, Debug)]
pub struct RuntimeSettings {
    pub device: Device,
    /// Compute dtype (weights and activations).
    pub dtype: DType,
    /// Storage dtype of the KV cache.
    pub kv_dtype: DType,
}

impl RuntimeSettings {
    /// Resolves the user's choices; `None` means the documented default.
    pub fn resolve(device: DeviceSpec, dtype: Option<DType>, kv_dtype: Option<DType>) -> Result<Self> {
        let device = device.resolve()?;
        let dtype = dtype.unwrap_or_else(|| DType::default_for(device));
        Ok(RuntimeSettings { device, dtype, kv_dtype: kv_dtype.unwrap_or(dtype) })
    }
}

/// Sets libtorch's intra-op thread count once, at startup. `None` leaves libtorch's default,
/// unless Slurm or OpenMP say how many CPUs this task owns.
pub fn configure_threads(threads: Option<usize>) -> usize {
    let from_env = || {
        ["SLURM_CPUS_PER_TASK", "OMP_NUM_THREADS"]
            .iter()
            .find_map(|k| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok()).filter(|&n| n > 0))
    };
    if let Some(n) = threads.or_else(from_env) {
        tch::set_num_threads(n as i32);
    }
    tch::get_num_threads().max(1) as usize
}

/// A short description of the device for provenance records.
pub fn describe(device: Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", tch::get_num_threads()),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}"),
    }
}
