//! Reads PyTorch checkpoints written by `torch.save(dict_of_tensors)` (the zip format of
//! torch >= 1.6: RWKV's `.pth`, `mamba_ssm`'s `pytorch_model.bin`) without Python: the zip and the
//! tensor data here, the pickle by `kvformats::torch_pickle`, which accepts only what such a file
//! holds and refuses anything else (no arbitrary globals run).
//!
//! libtorch's own readers do not fit: `Tensor::load_multi` reads TorchScript modules and
//! `loadz_multi` the mobile parameter format, neither a Python `torch.save` dict.

use super::tensor_map::TensorMap;
use crate::error::{Error, Result};
use kvformats::torch_pickle::{read_state_dict, StorageDtype, TensorRef};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use tch::{Device, Kind, Tensor};

fn kind_of(dtype: StorageDtype) -> Kind {
    match dtype {
        StorageDtype::F32 => Kind::Float,
        StorageDtype::F16 => Kind::Half,
        StorageDtype::BF16 => Kind::BFloat16,
        StorageDtype::F64 => Kind::Double,
        StorageDtype::I64 => Kind::Int64,
        StorageDtype::I32 => Kind::Int,
        StorageDtype::I16 => Kind::Int16,
        StorageDtype::I8 => Kind::Int8,
        StorageDtype::U8 => Kind::Uint8,
        StorageDtype::Bool => Kind::Bool,
    }
}

/// A tensor of a `.pth` file as its pickle describes it (no data read).
#[derive(Clone, Debug)]
pub struct PthTensor {
    pub name: String,
    pub shape: Vec<i64>,
    /// The stored dtype.
    pub kind: Kind,
}

type Archive = zip::ZipArchive<std::fs::File>;
/// An opened `.pth`: the archive, the record prefix, and the tensors in file order.
type Opened = (Archive, String, Vec<(String, TensorRef)>);

/// Opens the zip, checks the byte order and interprets `<archive>/data.pkl`: the archive, the
/// record prefix, and the tensors in file order.
fn open(path: &Path) -> Result<Opened> {
    let bad = |problem: String| Error::File { file: path.into(), problem };
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| bad(format!("not a zip-format torch.save file ({e}); files from torch < 1.6 must be re-saved with a newer torch")))?;
    let pkl_name = zip
        .file_names()
        .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .map(str::to_string)
        .ok_or_else(|| bad("no `<archive>/data.pkl` record: not a torch.save file".into()))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    if let Ok(mut f) = zip.by_name(&format!("{prefix}byteorder")) {
        let mut order = String::new();
        f.read_to_string(&mut order).map_err(|e| Error::io(path, e))?;
        if order.trim() != "little" {
            return Err(bad(format!("byte order `{}` is not supported (little-endian only)", order.trim())));
        }
    }
    let mut pkl = Vec::new();
    zip.by_name(&pkl_name).map_err(|e| bad(format!("{pkl_name}: {e}")))?.read_to_end(&mut pkl).map_err(|e| Error::io(path, e))?;
    let tensors = read_state_dict(&pkl).map_err(|e| bad(format!("{pkl_name}: {e}")))?;
    Ok((zip, prefix, tensors))
}

/// The names, shapes and dtypes of the tensors in `path`, from its pickle only (cheap: no
/// tensor data is read).
pub fn read_index(path: &Path) -> Result<Vec<PthTensor>> {
    let (_, _, tensors) = open(path)?;
    Ok(tensors.into_iter().map(|(name, t)| PthTensor { name, shape: t.size, kind: kind_of(t.storage.dtype) }).collect())
}

/// Every tensor of the `torch.save`d dict in `path`, floating tensors converted to `kind`, on `device`.
pub fn load_pth(path: &Path, kind: Kind, device: Device) -> Result<TensorMap> {
    let bad = |problem: String| Error::File { file: path.into(), problem };
    let (mut zip, prefix, tensors) = open(path)?;
    // Storages read once each (several tensors may view one storage).
    let mut storages: HashMap<String, Tensor> = HashMap::new();
    let mut map = HashMap::new();
    for (name, t) in tensors {
        let s = &t.storage;
        if !storages.contains_key(&s.key) {
            let record = format!("{prefix}data/{}", s.key);
            let mut f = zip.by_name(&record).map_err(|e| bad(format!("{record}: {e}")))?;
            let need = (s.numel as u64).checked_mul(s.dtype.size_in_bytes() as u64).ok_or_else(|| bad(format!("{record}: size overflows")))?;
            if f.size() < need {
                return Err(bad(format!("{record}: {} bytes, the pickle needs {need}", f.size())));
            }
            let mut buf = Vec::with_capacity(need as usize);
            (&mut f).take(need).read_to_end(&mut buf).map_err(|e| Error::io(path, e))?;
            let storage = Tensor::f_from_data_size(&buf, &[s.numel], kind_of(s.dtype)).map_err(|e| bad(format!("{record}: {e}")))?;
            storages.insert(s.key.clone(), storage);
        }
        let storage = &storages[&s.key];
        let view = storage.f_as_strided(&t.size, &t.stride, Some(t.offset)).map_err(|e| Error::Tensor {
            file: path.into(),
            tensor: name.clone(),
            problem: e.to_string(),
        })?;
        let target = if view.is_floating_point() { kind } else { view.kind() };
        map.insert(name, view.to_kind(target).to_device(device).contiguous());
    }
    Ok(TensorMap::from_map(map, &path.display().to_string()))
}
