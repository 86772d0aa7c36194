//! Devices, dtypes and threads: parsing the user's `--device/--dtype/--kv-dtype/--threads` into
//! libtorch settings, with the defaults the benchmark documents (CPU f32, CUDA bf16).

use crate::error::{Error, Result};
use tch::Device;

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
        let bad = || Error::InvalidArgument { what: "device", value: s.to_string(), expected: "cpu, cuda, cuda:N or auto".into() };
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

impl std::fmt::Display for DeviceSpec {
    /// As written on the command line: `auto`, `cpu`, `cuda:N`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
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

pub use kvcache::DType;

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
    let from_env =
        || ["SLURM_CPUS_PER_TASK", "OMP_NUM_THREADS"].iter().find_map(|k| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok()).filter(|&n| n > 0));
    if let Some(n) = threads.or_else(from_env) {
        tch::set_num_threads(n as i32);
    }
    tch::get_num_threads().max(1) as usize
}

/// Waits for the device's queued work (CUDA; a no-op on CPU), so wall times measure the work.
pub fn synchronize(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// A short description of the device for provenance records.
pub fn describe(device: Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", tch::get_num_threads()),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}"),
    }
}
