//! Weight loading into a name → tensor map with Hugging Face names, from memory-mapped
//! safetensors (single file or sharded, one tensor copied at a time, so no 2x peak) or from GGUF
//! (dequantised to f32, renamed, and with the Q/K rows of Llama GGUFs un-permuted back to the
//! `rotate_half` layout).

use crate::config::{Architecture, ModelConfig};
use crate::error::{Error, Result};
use kvformats::gguf::GgufFile;
use kvformats::safetensors_header::{read_header, shard_names_from_json, Dtype};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Loaded weights, by Hugging Face tensor name.
pub struct Weights {
    tensors: HashMap<String, Tensor>,
    /// Where they came from, for error messages.
    pub source: PathBuf,
}

impl Weights {
    /// Takes the tensor `name`, failing with the file and tensor name when absent.
    pub fn take(&mut self, name: &str) -> Result<Tensor> {
        self.tensors.remove(name).ok_or_else(|| Error::MissingTensor { file: self.source.clone(), tensor: name.into() })
    }
    /// Takes `name` if present.
    pub fn take_opt(&mut self, name: &str) -> Option<Tensor> {
        self.tensors.remove(name)
    }
    /// Checks `name` has `shape`.
    pub fn check_shape(&self, name: &str, shape: &[i64]) -> Result<()> {
        if let Some(t) = self.tensors.get(name) {
            if t.size() != shape {
                return Err(Error::Tensor { file: self.source.clone(), tensor: name.into(), problem: format!("shape {:?}, expected {:?}", t.size(), shape) });
            }
        }
        Ok(())
    }
    /// Names still held.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        v.sort();
        v
    }

    /// Loads every tensor of a Hugging Face directory's safetensors (sharded or not).
    pub fn from_safetensors_dir(dir: &Path, kind: Kind, device: Device) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> =
            if index.exists() { shard_names(&index)?.into_iter().map(|s| dir.join(s)).collect() } else { vec![dir.join("model.safetensors")] };
        let mut tensors = HashMap::new();
        for f in &files {
            load_safetensors_file(f, kind, device, &mut tensors)?;
        }
        Ok(Weights { tensors, source: dir.to_path_buf() })
    }

    /// Loads and converts a GGUF file's tensors to Hugging Face names and layouts.
    pub fn from_gguf(gguf: &GgufFile, cfg: &ModelConfig, kind: Kind, device: Device) -> Result<Self> {
        let mut tensors = HashMap::new();
        for info in &gguf.tensors {
            let Some(hf_name) = gguf_to_hf_name(&info.name) else {
                if info.name == "rope_freqs.weight" {
                    let data = gguf.dequantize_f32(&info.name)?;
                    tensors.insert("rope_freqs".to_string(), Tensor::from_slice(&data));
                }
                continue;
            };
            let data = gguf.dequantize_f32(&info.name)?;
            let shape = info.torch_shape();
            let mut t = Tensor::from_slice(&data).f_reshape(&shape).map_err(|e| Error::Tensor {
                file: gguf.path.clone(),
                tensor: info.name.clone(),
                problem: format!("cannot shape {} values as {:?}: {e}", data.len(), shape),
            })?;
            drop(data);
            // llama.cpp permutes Q/K rows of Llama checkpoints for its interleaved RoPE.
            if cfg.architecture == Architecture::Llama && shape.len() == 2 {
                let heads = if info.name.ends_with("attn_q.weight") {
                    Some(cfg.num_attention_heads)
                } else if info.name.ends_with("attn_k.weight") {
                    Some(cfg.num_key_value_heads)
                } else {
                    None
                };
                if let Some(h) = heads {
                    t = unpermute_rows(&t, h as i64).map_err(|e| Error::Tensor {
                        file: gguf.path.clone(),
                        tensor: info.name.clone(),
                        problem: format!("cannot un-permute for {h} heads: {e}"),
                    })?;
                }
            }
            let t = if t.dim() >= 2 { t.to_kind(kind) } else { t };
            tensors.insert(hf_name, t.to_device(device));
        }
        Ok(Weights { tensors, source: gguf.path.clone() })
    }
}

/// The shard file names a `model.safetensors.index.json` lists (sorted, each once), refusing any
/// name that would leave the model directory (read by `kvformats::safetensors_header`).
pub fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    shard_names_from_json(&text, &index.display().to_string()).map_err(|e| {
        if e.key == "(file)" {
            Error::File { file: index.into(), problem: e.problem }
        } else {
            Error::Config { file: index.into(), key: e.key, problem: e.problem }
        }
    })
}

/// Reverses llama.cpp's Q/K row permutation: `w.reshape(h, d/2, 2, in).swapaxes(1, 2)`.
fn unpermute_rows(w: &Tensor, heads: i64) -> std::result::Result<Tensor, tch::TchError> {
    let (out, inp) = w.size2()?;
    let hd = out / heads;
    w.f_reshape([heads, hd / 2, 2, inp])?.f_transpose(1, 2)?.f_reshape([out, inp])
}

/// GGUF tensor names → Hugging Face names (None: not a weight kvbench uses).
pub fn gguf_to_hf_name(name: &str) -> Option<String> {
    let (stem, suffix) = name.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let top = match stem {
        "token_embd" => Some("model.embed_tokens".to_string()),
        "output_norm" => Some("model.norm".to_string()),
        "output" => Some("lm_head".to_string()),
        _ => None,
    };
    if let Some(t) = top {
        return Some(format!("{t}.{suffix}"));
    }
    let rest = stem.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match part {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

fn load_safetensors_file(path: &Path, kind: Kind, device: Device, out: &mut HashMap<String, Tensor>) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the mapping is read-only and lives only for this function; a concurrent writer
    // truncating the file is outside what a benchmark can defend against.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let label = path.display().to_string();
    // Every dtype, shape and offset is checked against the file here, before any tensor is built.
    let header = read_header(&mmap, &label)
        .map_err(|e| Error::File { file: path.into(), problem: format!("not a valid safetensors file: {}: {}", e.key, e.problem) })?;
    for entry in &header.tensors {
        let name = entry.name.clone();
        let src_kind = match entry.dtype {
            Dtype::F32 => Kind::Float,
            Dtype::F16 => Kind::Half,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::F64 => Kind::Double,
            Dtype::I64 => Kind::Int64,
            Dtype::I32 => Kind::Int,
            Dtype::U8 => Kind::Uint8,
            Dtype::BOOL => Kind::Bool,
            other => return Err(Error::Tensor { file: path.into(), tensor: name, problem: format!("unsupported dtype {other:?}") }),
        };
        let shape: Vec<i64> = entry.shape.iter().map(|&d| i64::try_from(d)).collect::<std::result::Result<_, _>>().map_err(|_| Error::Tensor {
            file: path.into(),
            tensor: name.clone(),
            problem: format!("shape {:?} does not fit in i64", entry.shape),
        })?;
        let data = header.tensor_data(&mmap, entry, &label).map_err(|e| Error::Tensor { file: path.into(), tensor: name.clone(), problem: e.problem })?;
        let t =
            Tensor::f_from_data_size(data, &shape, src_kind).map_err(|e| Error::Tensor { file: path.into(), tensor: name.clone(), problem: e.to_string() })?;
        let t = if t.is_floating_point() && t.dim() >= 2 { t.to_kind(kind) } else { t };
        out.insert(name, t.to_device(device));
    }
    Ok(())
}
