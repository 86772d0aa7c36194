//! Where a model runs: the user's device, dtype and thread choices resolved into libtorch settings,
//! and loading a model behind the memory guard.

use anyhow::{Context, Result};
use kvcore::device::{configure_threads, DType, DeviceSpec, RuntimeSettings};

/// The memory guard's settings.
#[derive(Clone, Debug, Default)]
pub struct Guard {
    /// Run even when the guard estimates the work does not fit.
    pub force: bool,
    /// Memory kvbench may use (e.g. `8GiB`), besides the device's free memory.
    pub memory_limit: Option<String>,
}

/// Resolves device, compute dtype, KV dtype and threads (threads are set once, here); `None`
/// means the documented default.
pub fn resolve(device: &str, dtype: Option<&str>, kv_dtype: Option<&str>, threads: Option<usize>) -> Result<(RuntimeSettings, usize)> {
    let device: DeviceSpec = device.parse().context("--device")?;
    let dtype: Option<DType> = dtype.map(str::parse).transpose().context("--dtype")?;
    let kv: Option<DType> = kv_dtype.map(str::parse).transpose().context("--kv-dtype")?;
    resolve_typed(device, dtype, kv, threads)
}

/// [`resolve`] with the values already parsed.
pub fn resolve_typed(device: DeviceSpec, dtype: Option<DType>, kv_dtype: Option<DType>, threads: Option<usize>) -> Result<(RuntimeSettings, usize)> {
    let threads = configure_threads(threads);
    Ok((RuntimeSettings::resolve(device, dtype, kv_dtype)?, threads))
}

/// Loads a model after the memory guard has checked that its weights and full KV cache at
/// `context_tokens` (clamped to the model's context) fit (`guard.force` overrides a refusal).
pub fn load_guarded(
    files: &kvcore::sources::ModelFiles,
    settings: RuntimeSettings,
    overrides: &kvcore::loader::ConfigOverrides,
    context_tokens: usize,
    guard: &Guard,
) -> Result<kvcore::loader::LoadedModel> {
    use kvcore::memory_guard as mg;
    let what = format!("loading model {} on {}", files.path().display(), kvcore::device::describe(settings.device));
    let estimate = mg::estimate_model(files, &settings, overrides, context_tokens).with_context(|| format!("reading {}", files.path().display()))?;
    let limit = mg::limit_from(guard.memory_limit.as_deref())?;
    mg::check(&what, &estimate, mg::available(settings.device, limit).as_ref(), guard.force)?;
    kvcore::loader::load_with(files, settings, overrides).with_context(|| format!("loading model {}", files.path().display()))
}
