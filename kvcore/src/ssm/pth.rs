//! Reads PyTorch `.pth` checkpoints written by `torch.save(dict_of_tensors)` (the zip format of
//! torch >= 1.6), the format RWKV models are published in, without Python: a small pickle
//! interpreter that accepts only what such a file holds (a `dict`/`OrderedDict` of name →
//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`, storages as persistent
//! ids naming `<archive>/data/<key>`), and refuses anything else (no arbitrary globals run).
//!
//! libtorch's own readers do not fit: `Tensor::load_multi` reads TorchScript modules and
//! `loadz_multi` the mobile parameter format, neither a Python `torch.save` dict.

use super::tensor_map::TensorMap;
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// A pickle value, restricted to what a state dict needs.
#[derive(Clone, Debug)]
enum Value {
    None,
    /// Values a state dict may carry but this reader never looks into (flags, floats, bytes).
    Opaque,
    Int(i64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// `module.name`, from GLOBAL / STACK_GLOBAL: only ever called through the allow-list below.
    Global(String, String),
    Storage(StorageRef),
    Tensor(TensorRef),
}

#[derive(Clone, Debug)]
struct StorageRef {
    kind: Kind,
    /// The record name under `<archive>/data/`.
    key: String,
    /// Elements of `kind`.
    numel: i64,
}

#[derive(Clone, Debug)]
struct TensorRef {
    storage: StorageRef,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

fn storage_kind(class: &str) -> Option<Kind> {
    Some(match class {
        "FloatStorage" => Kind::Float,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "DoubleStorage" => Kind::Double,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        _ => return None,
    })
}

/// The pickle interpreter's state over one `data.pkl`.
struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

impl<'a> Unpickler<'a> {
    fn bytes(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or("truncated pickle")?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> std::result::Result<u8, String> {
        Ok(self.bytes(1)?[0])
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.bytes(4)?.try_into().expect("4 bytes")))
    }
    fn line(&mut self) -> std::result::Result<String, String> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or("truncated pickle (GLOBAL)")?;
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| "GLOBAL name is not UTF-8")?.to_string();
        self.pos += n + 1;
        Ok(s)
    }
    fn pop(&mut self) -> std::result::Result<Value, String> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err("pickle pops past a MARK".into());
        }
        self.stack.pop().ok_or_else(|| "pickle stack underflow".into())
    }
    fn pop_mark(&mut self) -> std::result::Result<Vec<Value>, String> {
        let m = self.marks.pop().ok_or("pickle has no MARK to pop to")?;
        Ok(self.stack.split_off(m))
    }
    fn top(&mut self) -> std::result::Result<&mut Value, String> {
        self.stack.last_mut().ok_or_else(|| "pickle stack underflow".into())
    }
    fn utf8(b: &[u8]) -> std::result::Result<Value, String> {
        Ok(Value::Str(std::str::from_utf8(b).map_err(|_| "string is not UTF-8")?.to_string()))
    }
    fn len(&mut self, n: u64) -> std::result::Result<usize, String> {
        usize::try_from(n).ok().filter(|&n| n <= self.data.len() - self.pos).ok_or_else(|| "truncated pickle".into())
    }

    fn run(mut self) -> std::result::Result<Value, String> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    self.u8()?; // PROTO
                }
                0x95 => {
                    self.bytes(8)?; // FRAME
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'}' => self.stack.push(Value::Dict(vec![])),
                b']' => self.stack.push(Value::List(vec![])),
                b')' => self.stack.push(Value::Tuple(vec![])),
                b'N' => self.stack.push(Value::None),
                0x88 | 0x89 => self.stack.push(Value::Opaque), // NEWTRUE, NEWFALSE
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64))
                }
                b'M' => {
                    let b = self.bytes(2)?;
                    self.stack.push(Value::Int(u16::from_le_bytes([b[0], b[1]]) as i64))
                }
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(v as i64))
                }
                0x8a => {
                    // LONG1: little-endian two's complement, up to 8 bytes here.
                    let n = self.u8()? as usize;
                    if n > 8 {
                        return Err(format!("integer of {n} bytes does not fit in 64 bits"));
                    }
                    let b = self.bytes(n)?;
                    let mut v: i64 = 0;
                    for (i, &x) in b.iter().enumerate() {
                        v |= (x as i64) << (8 * i);
                    }
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.stack.push(Value::Int(v))
                }
                b'G' => {
                    self.bytes(8)?; // BINFLOAT
                    self.stack.push(Value::Opaque)
                }
                b'X' => {
                    let n = self.u32()? as u64;
                    let n = self.len(n)?;
                    let v = Self::utf8(self.bytes(n)?)?;
                    self.stack.push(v)
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = Self::utf8(self.bytes(n)?)?;
                    self.stack.push(v)
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.bytes(8)?.try_into().expect("8 bytes"));
                    let n = self.len(n)?;
                    let v = Self::utf8(self.bytes(n)?)?;
                    self.stack.push(v)
                }
                b'C' => {
                    let n = self.u8()? as usize;
                    self.bytes(n)?;
                    self.stack.push(Value::Opaque)
                }
                b'B' => {
                    let n = self.u32()? as u64;
                    let n = self.len(n)?;
                    self.bytes(n)?;
                    self.stack.push(Value::Opaque)
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(module, name))
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.stack.push(Value::Global(m, n)),
                        _ => return Err("STACK_GLOBAL expects two strings".into()),
                    }
                }
                b'q' | b'r' | 0x94 => {
                    let idx = match op {
                        b'q' => self.u8()? as u32,
                        b'r' => self.u32()?,
                        _ => self.memo.len() as u32,
                    };
                    let v = self.stack.last().ok_or("memo of an empty stack")?.clone();
                    self.memo.insert(idx, v);
                }
                b'h' | b'j' => {
                    let idx = if op == b'h' { self.u8()? as u32 } else { self.u32()? };
                    let v = self.memo.get(&idx).ok_or_else(|| format!("memo {idx} is not set"))?.clone();
                    self.stack.push(v)
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.stack.push(Value::Tuple(items))
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top()? {
                        Value::List(l) => l.push(v),
                        _ => return Err("APPEND to a non-list".into()),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::List(l) => l.extend(items),
                        _ => return Err("APPENDS to a non-list".into()),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.top()? {
                        Value::Dict(d) => d.push((k, v)),
                        _ => return Err("SETITEM on a non-dict".into()),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return Err("SETITEMS with an odd number of items".into());
                    }
                    let mut it = items.into_iter();
                    let mut pairs = Vec::new();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        pairs.push((k, v));
                    }
                    match self.top()? {
                        Value::Dict(d) => d.extend(pairs),
                        _ => return Err("SETITEMS on a non-dict".into()),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = persistent_load(pid)?;
                    self.stack.push(v)
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = reduce(callable, args)?;
                    self.stack.push(v)
                }
                b'b' => {
                    // BUILD: only the empty state an `OrderedDict` or a tensor may carry.
                    let state = self.pop()?;
                    let empty = match &state {
                        Value::None => true,
                        Value::Dict(d) => d.is_empty(),
                        Value::Tuple(t) => t.iter().all(|v| matches!(v, Value::None) || matches!(v, Value::Dict(d) if d.is_empty())),
                        _ => false,
                    };
                    if !empty {
                        return Err(format!("BUILD with a state this reader does not apply: {state:?}"));
                    }
                }
                other => return Err(format!("pickle opcode 0x{other:02x} at byte {} is not supported", self.pos - 1)),
            }
        }
    }
}

/// `('storage', torch.<Type>Storage, key, location, numel)` → a storage reference.
fn persistent_load(pid: Value) -> std::result::Result<Value, String> {
    let Value::Tuple(t) = pid else { return Err(format!("persistent id {pid:?} is not a tuple")) };
    match t.as_slice() {
        [Value::Str(tag), Value::Global(module, class), Value::Str(key), Value::Str(_location), Value::Int(numel)] if tag == "storage" && module == "torch" => {
            let kind = storage_kind(class).ok_or_else(|| format!("storage type torch.{class} is not supported"))?;
            if *numel < 0 {
                return Err(format!("storage {key} has {numel} elements"));
            }
            Ok(Value::Storage(StorageRef { kind, key: key.clone(), numel: *numel }))
        }
        _ => Err(format!("persistent id {t:?} is not a torch storage")),
    }
}

fn ints(v: &Value, what: &str) -> std::result::Result<Vec<i64>, String> {
    match v {
        Value::Tuple(t) | Value::List(t) => t.iter().map(|x| if let Value::Int(i) = x { Ok(*i) } else { Err(format!("{what}: {x:?} is not an integer")) }).collect(),
        _ => Err(format!("{what}: {v:?} is not a tuple")),
    }
}

/// Calls a global: only `collections.OrderedDict()` and `torch._utils._rebuild_tensor_v2`.
fn reduce(callable: Value, args: Value) -> std::result::Result<Value, String> {
    let Value::Global(module, name) = &callable else { return Err(format!("REDUCE on {callable:?}")) };
    let Value::Tuple(args) = args else { return Err(format!("{module}.{name}: arguments are not a tuple")) };
    match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") if args.is_empty() => Ok(Value::Dict(vec![])),
        ("torch._utils", "_rebuild_tensor_v2") if (6..=7).contains(&args.len()) => {
            let Value::Storage(storage) = &args[0] else { return Err(format!("_rebuild_tensor_v2: {:?} is not a storage", args[0])) };
            let Value::Int(offset) = args[1] else { return Err("_rebuild_tensor_v2: the offset is not an integer".into()) };
            let size = ints(&args[2], "tensor size")?;
            let stride = ints(&args[3], "tensor stride")?;
            if size.len() != stride.len() || size.iter().chain(&stride).any(|&d| d < 0) || offset < 0 {
                return Err(format!("tensor size {size:?}, stride {stride:?}, offset {offset} are not a valid view"));
            }
            // The last element the view reaches must lie inside the storage.
            if !size.contains(&0) {
                let last = size.iter().zip(&stride).try_fold(offset, |acc, (&n, &s)| (n - 1).checked_mul(s).and_then(|x| acc.checked_add(x)));
                match last {
                    Some(l) if l < storage.numel => {}
                    _ => return Err(format!("tensor view (size {size:?}, stride {stride:?}, offset {offset}) reaches past its storage of {} elements", storage.numel)),
                }
            }
            Ok(Value::Tensor(TensorRef { storage: storage.clone(), offset, size, stride }))
        }
        _ => Err(format!("the checkpoint calls {module}.{name}, which a tensor file does not need (refused)")),
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

/// Opens the zip, checks the byte order and interprets `<archive>/data.pkl`: the archive, the
/// record prefix, and the tensors in file order.
fn open(path: &Path) -> Result<(Archive, String, Vec<(String, TensorRef)>)> {
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
    let root = Unpickler { data: &pkl, pos: 0, stack: vec![], marks: vec![], memo: HashMap::new() }.run().map_err(|e| bad(format!("{pkl_name}: {e}")))?;
    let Value::Dict(items) = root else { return Err(bad(format!("{pkl_name}: the top-level object is not a dict of tensors"))) };
    let mut tensors = Vec::with_capacity(items.len());
    for (name, value) in items {
        let Value::Str(name) = name else { return Err(bad(format!("{pkl_name}: key {name:?} is not a string"))) };
        let Value::Tensor(t) = value else { return Err(bad(format!("{pkl_name}: `{name}` is not a tensor"))) };
        tensors.push((name, t));
    }
    Ok((zip, prefix, tensors))
}

/// The names, shapes and dtypes of the tensors in `path`, from its pickle only (cheap: no
/// tensor data is read).
pub fn read_index(path: &Path) -> Result<Vec<PthTensor>> {
    let (_, _, tensors) = open(path)?;
    Ok(tensors.into_iter().map(|(name, t)| PthTensor { name, shape: t.size, kind: t.storage.kind }).collect())
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
            let need = (s.numel as u64).checked_mul(s.kind.elt_size_in_bytes() as u64).ok_or_else(|| bad(format!("{record}: size overflows")))?;
            if f.size() < need {
                return Err(bad(format!("{record}: {} bytes, the pickle needs {need}", f.size())));
            }
            let mut buf = Vec::with_capacity(need as usize);
            (&mut f).take(need).read_to_end(&mut buf).map_err(|e| Error::io(path, e))?;
            let storage = Tensor::f_from_data_size(&buf, &[s.numel], s.kind).map_err(|e| bad(format!("{record}: {e}")))?;
            storages.insert(s.key.clone(), storage);
        }
        let storage = &storages[&s.key];
        let view = storage.f_as_strided(&t.size, &t.stride, Some(t.offset)).map_err(|e| Error::Tensor { file: path.into(), tensor: name.clone(), problem: e.to_string() })?;
        let target = if view.is_floating_point() { kind } else { view.kind() };
        map.insert(name, view.to_kind(target).to_device(device).contiguous());
    }
    Ok(TensorMap::from_map(map, &path.display().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_other_globals_and_bad_views() {
        let call = |m: &str, n: &str| reduce(Value::Global(m.into(), n.into()), Value::Tuple(vec![Value::Str("ls".into())]));
        assert!(call("os", "system").unwrap_err().contains("refused"));
        let storage = Value::Storage(StorageRef { kind: Kind::Float, key: "0".into(), numel: 6 });
        let rebuild = |size: Vec<i64>, stride: Vec<i64>, offset: i64| {
            let t = |v: Vec<i64>| Value::Tuple(v.into_iter().map(Value::Int).collect());
            reduce(
                Value::Global("torch._utils".into(), "_rebuild_tensor_v2".into()),
                Value::Tuple(vec![storage.clone(), Value::Int(offset), t(size), t(stride), Value::Opaque, Value::Dict(vec![])]),
            )
        };
        assert!(rebuild(vec![2, 3], vec![3, 1], 0).is_ok());
        assert!(rebuild(vec![3, 2], vec![1, 3], 0).is_ok());
        assert!(rebuild(vec![2, 3], vec![3, 1], 1).unwrap_err().contains("past its storage"));
        assert!(rebuild(vec![0, 3], vec![3, 1], 6).is_ok());
        assert!(rebuild(vec![2], vec![1, 1], 0).is_err());
    }

    #[test]
    fn truncated_and_unknown_pickles_fail_cleanly() {
        let run = |data: &[u8]| Unpickler { data, pos: 0, stack: vec![], marks: vec![], memo: HashMap::new() }.run();
        assert!(run(b"\x80\x02}q\x00(X\x05\x00\x00\x00ab").is_err());
        assert!(run(b"\x80\x02(t0").is_err());
        assert!(run(b"\x80\x02u.").is_err());
        assert!(matches!(run(b"\x80\x02}q\x00(X\x01\x00\x00\x00aK\x07u."), Ok(Value::Dict(d)) if d.len() == 1));
    }
}
