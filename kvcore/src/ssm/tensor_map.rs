//! The named tensors of a Hugging Face safetensors checkpoint (one file or shards listed in
//! `model.safetensors.index.json`), taken out one by one with shape checks, so every linear-time
//! model family loads its weights the same way and names the file and tensor in every error.

use crate::error::{Error, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Name → tensor, with where the tensors came from (for error messages).
pub struct TensorMap {
    map: HashMap<String, Tensor>,
    source: PathBuf,
}

impl TensorMap {
    /// Every tensor of the safetensors files in `dir` (or, for checkpoints published that way,
    /// its `pytorch_model.bin`), floating tensors converted to `kind` on `device`.
    pub fn load_dir(dir: &Path, kind: Kind, device: Device) -> Result<Self> {
        let bin = dir.join("pytorch_model.bin");
        if !dir.join("model.safetensors").exists() && !dir.join("model.safetensors.index.json").exists() && bin.is_file() {
            return super::pth::load_pth(&bin, kind, device);
        }
        let mut map = HashMap::new();
        for f in safetensors_files(dir)? {
            read_safetensors(&f, kind, device, &mut map)?;
        }
        Ok(TensorMap { map, source: dir.to_path_buf() })
    }

    /// Tensors built in memory; `source` names them in errors (e.g. "(random weights)").
    pub fn from_map(map: HashMap<String, Tensor>, source: &str) -> Self {
        TensorMap { map, source: PathBuf::from(source) }
    }

    /// Where the tensors came from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Whether a tensor is present.
    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// Removes and returns `name`, checking its shape.
    pub fn take(&mut self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let t = self.map.remove(name).ok_or_else(|| Error::MissingTensor { file: self.source.clone(), tensor: name.into() })?;
        check_shape(&t, &self.source, name, shape)?;
        Ok(t)
    }

    /// [`take`](Self::take) for a tensor that may be absent.
    pub fn take_opt(&mut self, name: &str, shape: &[i64]) -> Result<Option<Tensor>> {
        if self.map.contains_key(name) {
            self.take(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Removes `name` whatever its shape (a tensor the model ignores).
    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        self.map.remove(name)
    }

    /// Renames `from` to `to` when `to` is absent (checkpoints that spell a tensor differently).
    pub fn rename(&mut self, from: &str, to: &str) {
        if !self.map.contains_key(to) {
            if let Some(t) = self.map.remove(from) {
                self.map.insert(to.to_string(), t);
            }
        }
    }

    /// Logs the tensors nobody took (a checkpoint with more than the `family` model uses).
    pub fn warn_unused(&self, family: &str) {
        if !self.map.is_empty() {
            let mut left: Vec<&str> = self.map.keys().map(String::as_str).collect();
            left.sort_unstable();
            tracing::warn!("{}: {} tensors not used by {family}: {}", self.source.display(), left.len(), left.join(", "));
        }
    }
}

/// Fails unless `t` has `shape`, naming the file and tensor.
pub fn check_shape(t: &Tensor, file: &Path, name: &str, shape: &[i64]) -> Result<()> {
    if t.size() != shape {
        return Err(Error::Tensor { file: file.to_path_buf(), tensor: name.into(), problem: format!("shape {:?}, expected {:?}", t.size(), shape) });
    }
    Ok(())
}

/// The safetensors files of a Hugging Face directory: the shards named by
/// `model.safetensors.index.json` when present, else `model.safetensors`.
fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if !index.exists() {
        return Ok(vec![dir.join("model.safetensors")]);
    }
    let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| Error::Config { file: index.clone(), key: "(file)".into(), problem: format!("not valid JSON: {e}") })?;
    let map = v.get("weight_map").and_then(Value::as_object).ok_or_else(|| Error::Config {
        file: index.clone(),
        key: "weight_map".into(),
        problem: "missing or not an object".into(),
    })?;
    let mut names: Vec<&str> = Vec::new();
    for (tensor, f) in map {
        let f = f.as_str().ok_or_else(|| Error::Config {
            file: index.clone(),
            key: format!("weight_map.{tensor}"),
            problem: format!("expected a file name, found {f}"),
        })?;
        if f.contains('/') || f.contains('\\') || f == ".." {
            return Err(Error::Config {
                file: index.clone(),
                key: format!("weight_map.{tensor}"),
                problem: format!("shard `{f}` is not a plain file name in the model directory"),
            });
        }
        names.push(f);
    }
    names.sort_unstable();
    names.dedup();
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

/// Reads every tensor of one safetensors file (with `kvformats::safetensors_header`, the reader
/// the engine's loader uses), converting floating tensors to `kind` on `device`.
fn read_safetensors(path: &Path, kind: Kind, device: Device, out: &mut HashMap<String, Tensor>) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: read-only mapping used only inside this function; every tensor is copied out.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let label = path.display().to_string();
    let header = kvformats::safetensors_header::read_header(&mmap, &label)
        .map_err(|e| Error::File { file: path.into(), problem: format!("not a valid safetensors file: {}: {}", e.key, e.problem) })?;
    for entry in &header.tensors {
        use kvformats::safetensors_header::Dtype as D;
        let name = entry.name.as_str();
        let bad = |problem: String| Error::Tensor { file: path.into(), tensor: name.into(), problem };
        let src = match entry.dtype {
            D::F32 => Kind::Float,
            D::F16 => Kind::Half,
            D::BF16 => Kind::BFloat16,
            D::F64 => Kind::Double,
            other => return Err(bad(format!("unsupported dtype {other:?} (expected a float type)"))),
        };
        let shape = entry
            .shape
            .iter()
            .map(|&d| i64::try_from(d))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|_| bad(format!("shape {:?} does not fit in i64", entry.shape)))?;
        let data = header.tensor_data(&mmap, entry, &label).map_err(|e| bad(e.problem))?;
        let t = Tensor::f_from_data_size(data, &shape, src).map_err(|e| bad(e.to_string()))?;
        out.insert(name.to_string(), t.to_kind(kind).to_device(device));
    }
    Ok(())
}
