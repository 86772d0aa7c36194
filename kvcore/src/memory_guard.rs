//! The memory guard: before a model is loaded or a benchmark cell starts, estimate what it needs
//! (weights in the compute dtype + the full KV cache at the requested context + activations of a
//! whole-prompt prefill + a fixed runtime allowance) and refuse, naming the numbers, when that
//! cannot fit the device. A refusal costs nothing; an out-of-memory kill hours into a run costs
//! the machine and, on a shared node, other people's jobs. `--force` overrides it.

use crate::config::ModelConfig;
use crate::device::RuntimeSettings;
use crate::error::{Error, Result};
use crate::loader::ConfigOverrides;
use crate::sources::ModelFiles;
use kvformats::gguf::GgufFile;
use std::fmt;
use std::path::Path;
use tch::Device;

/// libtorch's own allocations, thread pools and allocator slack, beyond tensors we count: an
/// allowance, not a measurement (SmolLM2-135M's measured peak at 1K tokens is about 0.25 GiB
/// above its f32 weights and cache).
pub const RUNTIME_ALLOWANCE_BYTES: u64 = 256 << 20;

/// Environment variable capping the memory kvbench assumes it may use (e.g. `8GiB`), on top of
/// what the device has; for shared machines, and for tests of the guard.
pub const MEMORY_LIMIT_ENV: &str = "KVBENCH_MEMORY_LIMIT";

/// What a model run is estimated to need. Every figure is an estimate from the model's shapes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MemoryEstimate {
    /// Weights in the compute dtype (0 when the model is already loaded).
    pub weights_bytes: u64,
    /// The full (uncompressed) KV cache at `context_tokens`.
    pub kv_cache_bytes: u64,
    /// Hidden states and MLP activations of a prefill of `context_tokens` in one chunk.
    pub activation_bytes: u64,
    /// [`RUNTIME_ALLOWANCE_BYTES`] when loading, 0 after.
    pub runtime_bytes: u64,
    /// The context the estimate is for (input plus generated tokens).
    pub context_tokens: usize,
}

impl MemoryEstimate {
    /// Everything added up.
    pub fn total(&self) -> u64 {
        self.weights_bytes.saturating_add(self.kv_cache_bytes).saturating_add(self.activation_bytes).saturating_add(self.runtime_bytes)
    }

    /// The KV cache and activations of a model with `config` at `context_tokens` (weights not
    /// included: for a cell that starts after the model is loaded).
    pub fn for_context(config: &ModelConfig, settings: &RuntimeSettings, context_tokens: usize) -> MemoryEstimate {
        let kv = config.kv_bytes_per_token(settings.kv_dtype.size_in_bytes()).saturating_mul(context_tokens as u64);
        // Per token of a one-chunk prefill: the residual stream, norms, q/k/v with RoPE, the
        // attention output and its projection (about 12 × hidden), and the MLP's gate, up,
        // activation and product (about 8 × intermediate, counting the copies libtorch makes),
        // in the compute dtype. Fitted to SmolLM2-135M's measured peak at 4K tokens (see
        // reports/reliability), where the peak grows by ~129 KB per token: 46 KB of KV cache and
        // ~83 KB of activations and allocator slack.
        let per_token = (12 * config.hidden_size + 8 * config.intermediate_size) as u64 * settings.dtype.size_in_bytes() as u64;
        MemoryEstimate {
            weights_bytes: 0,
            kv_cache_bytes: kv,
            activation_bytes: per_token.saturating_mul(context_tokens as u64),
            runtime_bytes: 0,
            context_tokens,
        }
    }
}

/// Activation bytes per token of a recurrent model's prefill with residual width `hidden`: the
/// projections, convolution, gates and scan inputs of a layer (about 24 × hidden, kept in f32).
/// An allowance from Mamba's shapes (in/out projections 2 × 2 × hidden, conv, dt, gate and output
/// at 2 × hidden each), not a measurement.
fn recurrent_activation_bytes_per_token(hidden: usize) -> u64 {
    24 * hidden as u64 * 4
}

impl MemoryEstimate {
    /// What a cell on the loaded `lm` needs at `context_tokens` beyond its weights: the full KV
    /// cache and activations, or for a recurrent model its fixed state and activations.
    pub fn for_loaded(lm: &crate::loader::LoadedModel, context_tokens: usize) -> MemoryEstimate {
        match &lm.decoder {
            crate::loader::Decoder::Transformer(m) => MemoryEstimate::for_context(&m.config, &lm.settings, context_tokens),
            crate::loader::Decoder::Recurrent(r) => MemoryEstimate {
                weights_bytes: 0,
                kv_cache_bytes: r.state_bytes(),
                activation_bytes: recurrent_activation_bytes_per_token(r.hidden_size()).saturating_mul(context_tokens as u64),
                runtime_bytes: 0,
                context_tokens,
            },
        }
    }
}

impl fmt::Display for MemoryEstimate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.weights_bytes > 0 {
            parts.push(format!("weights {}", human(self.weights_bytes)));
        }
        parts.push(format!("full KV cache {} at {} tokens", human(self.kv_cache_bytes), self.context_tokens));
        parts.push(format!("activations {}", human(self.activation_bytes)));
        if self.runtime_bytes > 0 {
            parts.push(format!("runtime allowance {}", human(self.runtime_bytes)));
        }
        write!(f, "an estimated {} ({})", human(self.total()), parts.join(" + "))
    }
}

/// Bytes as KiB/MiB/GiB/TiB with one decimal.
pub fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// Parses a size such as `512MiB`, `8G`, `1.5GiB` or a plain byte count.
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| format!("`{text}` is not a size (expected e.g. 512MiB, 8GiB, 8G or a byte count)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("`{text}`: unknown unit `{other}` (expected B, KiB, MiB, GiB or TiB)")),
    };
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("`{text}` is out of range"));
    }
    Ok(bytes as u64)
}

/// The model's configuration and weight bytes in `settings.dtype`, read from file headers only
/// (no tensor data is touched).
fn config_and_weight_bytes(files: &ModelFiles, settings: &RuntimeSettings) -> Result<(ModelConfig, u64)> {
    let elem = settings.dtype.size_in_bytes() as u64;
    match files {
        ModelFiles::Gguf(path) => {
            let gguf = GgufFile::open(path)?;
            let config = ModelConfig::from_gguf(&gguf)?;
            let elements: u64 = gguf.tensors.iter().map(|t| t.n_elements()).fold(0u64, u64::saturating_add);
            Ok((config, elements.saturating_mul(elem)))
        }
        ModelFiles::HfDir(dir) => {
            let config = ModelConfig::from_hf_config(&dir.join("config.json"))?;
            let index = dir.join("model.safetensors.index.json");
            let shards = if index.is_file() { crate::weights::shard_names(&index)? } else { vec!["model.safetensors".to_string()] };
            let mut elements = 0u64;
            for s in shards {
                elements = elements.saturating_add(safetensors_elements(&dir.join(s))?);
            }
            Ok((config, elements.saturating_mul(elem)))
        }
    }
}

/// Total elements of the tensors a safetensors file's header lists.
fn safetensors_elements(path: &Path) -> Result<u64> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: read-only map of a model file that is not modified while in use (as in weights.rs).
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let header = kvformats::safetensors_header::read_header(&mmap, &path.display().to_string())
        .map_err(|e| Error::File { file: path.into(), problem: format!("not a valid safetensors file: {}: {}", e.key, e.problem) })?;
    Ok(header.tensors.iter().map(|t| t.n_elements()).fold(0u64, u64::saturating_add))
}

/// The estimate for loading the model at `files` and running it at `context_tokens`.
pub fn estimate_model(files: &ModelFiles, settings: &RuntimeSettings, overrides: &ConfigOverrides, context_tokens: usize) -> Result<MemoryEstimate> {
    if let ModelFiles::HfDir(dir) = files {
        if crate::ssm::detect_family(dir)?.is_some() {
            return estimate_recurrent(dir, settings, context_tokens);
        }
    }
    let (mut config, weights) = config_and_weight_bytes(files, settings)?;
    overrides.apply(&mut config);
    let context_tokens = context_tokens.min(config.max_position_embeddings.max(1));
    Ok(MemoryEstimate { weights_bytes: weights, runtime_bytes: RUNTIME_ALLOWANCE_BYTES, ..MemoryEstimate::for_context(&config, settings, context_tokens) })
}

/// A recurrent model before loading: its weights in the compute dtype (from safetensors headers
/// or the pickle of a `.pth`/`.bin`, no tensor data read) and activations at `context_tokens`
/// from `config.json`'s `hidden_size` (the state itself is small and counted per cell).
fn estimate_recurrent(dir: &Path, settings: &RuntimeSettings, context_tokens: usize) -> Result<MemoryEstimate> {
    let elem = settings.dtype.size_in_bytes() as u64;
    let mut weights = 0u64;
    let mut hidden = 0usize;
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => weights = weights.saturating_add(safetensors_elements(&path)?.saturating_mul(elem)),
            // A pickled checkpoint (RWKV .pth, mamba_ssm pytorch_model.bin): its pickle lists the shapes.
            Some("pth" | "bin") => {
                let elements: u64 =
                    crate::ssm::pth::read_index(&path)?.iter().map(|t| t.shape.iter().map(|&d| d.max(0) as u64).product::<u64>()).fold(0, u64::saturating_add);
                weights = weights.saturating_add(elements.saturating_mul(elem));
            }
            _ => {}
        }
    }
    let cfg = dir.join("config.json");
    if cfg.is_file() {
        let v = crate::ssm::read_hf_config(&cfg)?;
        hidden = v.get("hidden_size").or_else(|| v.get("d_model")).and_then(|h| h.as_u64()).unwrap_or(0) as usize;
    }
    // Without a config (RWKV), a 4096-wide stream bounds the models this machine class runs.
    let hidden = if hidden == 0 { 4096 } else { hidden };
    // A recurrent model has no context bound to clamp an open-ended request to (`usize::MAX`:
    // "whatever the model takes"); its activations are then checked per cell, at each cell's
    // longest input, once the model is loaded.
    let context_tokens = if context_tokens == usize::MAX { 0 } else { context_tokens };
    Ok(MemoryEstimate {
        weights_bytes: weights,
        kv_cache_bytes: 0,
        activation_bytes: recurrent_activation_bytes_per_token(hidden).saturating_mul(context_tokens as u64),
        runtime_bytes: RUNTIME_ALLOWANCE_BYTES,
        context_tokens,
    })
}

/// How much memory a run may use now on `device`, and where that figure comes from.
#[derive(Clone, Debug, PartialEq)]
pub struct Available {
    pub bytes: u64,
    pub source: String,
}

fn meminfo_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.trim_start_matches("MemAvailable:").trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// Room left under this process's cgroup v2 memory limit, when it has one.
fn cgroup_available() -> Option<u64> {
    let rel = std::fs::read_to_string("/proc/self/cgroup").ok()?.lines().find_map(|l| l.strip_prefix("0::").map(str::to_string))?;
    let dir = Path::new("/sys/fs/cgroup").join(rel.trim().trim_start_matches('/'));
    let max: u64 = std::fs::read_to_string(dir.join("memory.max")).ok()?.trim().parse().ok()?;
    let current: u64 = std::fs::read_to_string(dir.join("memory.current")).ok()?.trim().parse().ok()?;
    Some(max.saturating_sub(current))
}

fn cuda_free(index: usize) -> Option<u64> {
    let out =
        std::process::Command::new("nvidia-smi").args(["--query-gpu=memory.free", "--format=csv,noheader,nounits", "-i", &index.to_string()]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let mib: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    Some(mib << 20)
}

/// The memory a run may still use on `device`: the device's free memory (host: `MemAvailable`
/// and the cgroup limit; CUDA: `nvidia-smi`'s free memory), capped by `limit` (the user's
/// `--memory-limit` / `KVBENCH_MEMORY_LIMIT`, less what this process already holds). `None`
/// when nothing can be read.
pub fn available(device: Device, limit: Option<u64>) -> Option<Available> {
    let mut best: Option<Available> = None;
    let mut offer = |bytes: u64, source: String| {
        if best.as_ref().is_none_or(|b| bytes < b.bytes) {
            best = Some(Available { bytes, source });
        }
    };
    match device {
        Device::Cuda(i) => {
            if let Some(b) = cuda_free(i) {
                offer(b, format!("free memory of cuda:{i} (nvidia-smi)"));
            }
        }
        _ => {
            if let Some(b) = meminfo_available() {
                offer(b, "MemAvailable in /proc/meminfo".into());
            }
            if let Some(b) = cgroup_available() {
                offer(b, "room under this cgroup's memory.max".into());
            }
        }
    }
    if let Some(l) = limit {
        let held = if device.is_cuda() { 0 } else { crate::memory::current_rss_bytes().unwrap_or(0) };
        offer(l.saturating_sub(held), format!("{MEMORY_LIMIT_ENV}/--memory-limit of {} less {} already held", human(l), human(held)));
    }
    best
}

/// The user's memory limit: `--memory-limit` if given, else `KVBENCH_MEMORY_LIMIT`.
pub fn limit_from(flag: Option<&str>) -> Result<Option<u64>> {
    let env = std::env::var(MEMORY_LIMIT_ENV).ok().filter(|v| !v.trim().is_empty());
    let (what, text) = match (flag, env.as_deref()) {
        (Some(f), _) => ("--memory-limit", f.to_string()),
        (None, Some(e)) => (MEMORY_LIMIT_ENV, e.to_string()),
        (None, None) => return Ok(None),
    };
    parse_size(&text).map(Some).map_err(|e| Error::InvalidArgument {
        what: if what == "--memory-limit" { "--memory-limit" } else { MEMORY_LIMIT_ENV },
        value: text,
        expected: e,
    })
}

/// Refuses (unless `force`) when `estimate` exceeds what `available` says is free; `what` names
/// the work ("loading model `x` on cpu", "cell 1a2b (...)"). With `force` a would-be refusal is
/// logged as a warning. When free memory cannot be read the check is skipped with a warning.
pub fn check(what: &str, estimate: &MemoryEstimate, available: Option<&Available>, force: bool) -> Result<()> {
    let Some(av) = available else {
        tracing::warn!("{what}: free memory cannot be read on this device; the memory guard is skipped (needs {estimate})");
        return Ok(());
    };
    if estimate.total() <= av.bytes {
        tracing::debug!("{what}: memory guard: needs {estimate}; {} available ({})", human(av.bytes), av.source);
        return Ok(());
    }
    let msg = format!(
        "{what}: needs {estimate}, but only {} is available ({}); pass --force to try anyway, or lower the context (a model config's `context_limit`, a task's `max_input_tokens`, --max-new-tokens)",
        human(av.bytes),
        av.source
    );
    if force {
        eprintln!("warning: --force: {msg}");
        return Ok(());
    }
    Err(Error::Other(format!("memory guard: {msg}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_units_and_reject_nonsense() {
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("8G").unwrap(), 8 << 30);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("3 parsecs").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn a_refusal_names_every_number_and_force_lets_it_pass() {
        let est = MemoryEstimate {
            weights_bytes: 3 << 30,
            kv_cache_bytes: 1 << 30,
            activation_bytes: 1 << 20,
            runtime_bytes: RUNTIME_ALLOWANCE_BYTES,
            context_tokens: 8192,
        };
        let av = Available { bytes: 2 << 30, source: "test".into() };
        let e = check("loading model `m` on cpu", &est, Some(&av), false).unwrap_err().to_string();
        for needle in
            ["loading model `m` on cpu", "4.3 GiB", "weights 3.0 GiB", "full KV cache 1.0 GiB at 8192 tokens", "2.0 GiB is available (test)", "--force"]
        {
            assert!(e.contains(needle), "{needle:?} missing from: {e}");
        }
        assert!(check("x", &est, Some(&av), true).is_ok());
        assert!(check("x", &est, Some(&Available { bytes: 5 << 30, source: "t".into() }), false).is_ok());
        assert!(check("x", &est, None, false).is_ok());
        // Huge figures saturate instead of wrapping round to a small total that would pass.
        let huge = MemoryEstimate { activation_bytes: u64::MAX, ..est };
        assert_eq!(huge.total(), u64::MAX);
        assert!(check("x", &huge, Some(&Available { bytes: 5 << 30, source: "t".into() }), false).is_err());
    }

    #[test]
    fn recurrent_estimates_count_weights_and_activations_but_no_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::ssm::mamba::MambaConfig::from_json_str(
            r#"{"model_type":"mamba","vocab_size":100,"hidden_size":32,"num_hidden_layers":2}"#,
            Path::new("c.json"),
        )
        .unwrap();
        std::fs::write(dir.path().join("config.json"), cfg.to_hf_json().to_string()).unwrap();
        let named: Vec<(String, tch::Tensor)> = crate::ssm::mamba::MambaModel::random_tensors(&cfg, 1, Device::Cpu).into_iter().collect();
        let elements: i64 = named.iter().map(|(_, t)| t.numel() as i64).sum();
        tch::Tensor::write_safetensors(&named, dir.path().join("model.safetensors")).unwrap();
        let settings = RuntimeSettings { device: Device::Cpu, dtype: crate::device::DType::F32, kv_dtype: crate::device::DType::F32 };
        let files = ModelFiles::HfDir(dir.path().to_path_buf());
        let e = estimate_model(&files, &settings, &ConfigOverrides::default(), 1000).unwrap();
        assert_eq!(e.weights_bytes, elements as u64 * 4);
        assert_eq!((e.kv_cache_bytes, e.activation_bytes), (0, 1000 * 24 * 32 * 4));
        // An open-ended context (usize::MAX) leaves activations to the per-cell check.
        let open = estimate_model(&files, &settings, &ConfigOverrides::default(), usize::MAX).unwrap();
        assert_eq!((open.activation_bytes, open.context_tokens), (0, 0));
    }
}
