//! GGUF reader and dequantisation: the SmolLM2 and Qwen model files ship as GGUF, and every
//! weight the engine loads passes through here, so each length and offset read from the file is
//! checked against the bytes that remain before it is used or allocated.
//!
//! Format (v2 and v3, little-endian): magic `GGUF`, version u32, tensor count u64, metadata count
//! u64, the metadata key/value pairs, the tensor infos, padding to `general.alignment` (default
//! 32), then the data section. Tensor offsets are relative to the data section. Block layouts of
//! the quantised types follow ggml (`ggml-common.h`) and gguf-py (`gguf/quants.py`); each kernel
//! evaluates its arithmetic in the same order as gguf-py so results agree bit for bit.

mod dequant;
mod parse;

pub use dequant::dequantize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and of every tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
pub const MAX_DIMS: usize = 4;
/// Nesting limit for arrays of arrays (real files use depth 1; this bounds the recursion).
const MAX_ARRAY_DEPTH: usize = 8;
/// Smallest possible encoding of one metadata pair: key length, value type, a one-byte value.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;
/// Smallest possible encoding of one tensor info: name length, n_dims, type, offset.
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8;

/// Everything that can go wrong reading a GGUF file; each variant names the file (its path or the
/// label given to [`GgufFile::from_bytes`]) and the byte offset, key or tensor concerned.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{file}: cannot read file: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: not a GGUF file: the first 4 bytes are {found:02x?}, expected \"GGUF\"")]
    BadMagic { file: String, found: [u8; 4] },
    #[error("{file}: unsupported GGUF version {version} ({hint})")]
    UnsupportedVersion { file: String, version: u32, hint: &'static str },
    #[error("{file}: truncated at byte {offset}: {what} needs {needed} bytes but only {available} remain")]
    Truncated { file: String, offset: u64, what: String, needed: u64, available: u64 },
    #[error("{file}: at byte {offset}: {what} = {count} is impossible ({reason})")]
    BadCount { file: String, offset: u64, what: String, count: u64, reason: String },
    #[error("{file}: at byte {offset}: {what} has unknown value type id {type_id}")]
    BadValueType { file: String, offset: u64, what: String, type_id: u32 },
    #[error("{file}: at byte {offset}: {what} is not valid UTF-8")]
    BadUtf8 { file: String, offset: u64, what: String },
    #[error("{file}: metadata key {key:?} appears twice (second at byte {offset})")]
    DuplicateKey { file: String, key: String, offset: u64 },
    #[error("{file}: tensor name {name:?} appears twice (second at byte {offset})")]
    DuplicateTensor { file: String, name: String, offset: u64 },
    #[error("{file}: metadata key {key:?}: {reason}")]
    BadMetadata { file: String, key: String, reason: String },
    #[error("{file}: tensor {name:?}: {reason}")]
    BadTensor { file: String, name: String, reason: String },
    #[error("{file}: tensors {first:?} (data bytes {first_start}..{first_end}) and {second:?} (data bytes {second_start}..{second_end}) overlap")]
    Overlap { file: String, first: String, first_start: u64, first_end: u64, second: String, second_start: u64, second_end: u64 },
    #[error("{file}: no tensor named {name:?}")]
    NoTensor { file: String, name: String },
    #[error("{file}: metadata key {key:?} is missing (expected {expected})")]
    MissingKey { file: String, key: String, expected: &'static str },
    #[error("{file}: metadata key {key:?} holds {found}, expected {expected}")]
    WrongType { file: String, key: String, expected: &'static str, found: String },
    #[error("{context}: cannot dequantise type {ty}: {reason}")]
    Dequantize { context: String, ty: String, reason: String },
}

type Result<T> = std::result::Result<T, GgufError>;

/// One metadata value, as typed in the file.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// Any integer value that is non-negative and fits in u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer value that fits in i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => i64::try_from(v).ok(),
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v),
            _ => None,
        }
    }

    /// Floating-point values, and integers converted to f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64).or_else(|| self.as_u64().map(|v| v as f64)),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(v) => Some(v),
            _ => None,
        }
    }

    /// The GGUF name of this value's type (`u32`, `string`, `array[string]`, ...).
    pub fn type_name(&self) -> String {
        match self {
            GgufValue::U8(_) => "u8".into(),
            GgufValue::I8(_) => "i8".into(),
            GgufValue::U16(_) => "u16".into(),
            GgufValue::I16(_) => "i16".into(),
            GgufValue::U32(_) => "u32".into(),
            GgufValue::I32(_) => "i32".into(),
            GgufValue::U64(_) => "u64".into(),
            GgufValue::I64(_) => "i64".into(),
            GgufValue::F32(_) => "f32".into(),
            GgufValue::F64(_) => "f64".into(),
            GgufValue::Bool(_) => "bool".into(),
            GgufValue::String(_) => "string".into(),
            GgufValue::Array(v) => match v.first() {
                Some(first) => format!("array[{}; {}]", first.type_name(), v.len()),
                None => "array[0]".into(),
            },
        }
    }
}

/// Short human-readable form; long arrays and strings are abbreviated.
impl fmt::Display for GgufValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GgufValue::U8(v) => write!(f, "{v}"),
            GgufValue::I8(v) => write!(f, "{v}"),
            GgufValue::U16(v) => write!(f, "{v}"),
            GgufValue::I16(v) => write!(f, "{v}"),
            GgufValue::U32(v) => write!(f, "{v}"),
            GgufValue::I32(v) => write!(f, "{v}"),
            GgufValue::U64(v) => write!(f, "{v}"),
            GgufValue::I64(v) => write!(f, "{v}"),
            GgufValue::F32(v) => write!(f, "{v}"),
            GgufValue::F64(v) => write!(f, "{v}"),
            GgufValue::Bool(v) => write!(f, "{v}"),
            GgufValue::String(s) if s.chars().count() > 80 => {
                write!(f, "{:?}...", s.chars().take(80).collect::<String>())
            }
            GgufValue::String(s) => write!(f, "{s:?}"),
            GgufValue::Array(v) => {
                write!(f, "[")?;
                for (i, x) in v.iter().take(8).enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{x}")?;
                }
                if v.len() > 8 {
                    write!(f, ", ... ({} items)", v.len())?;
                }
                write!(f, "]")
            }
        }
    }
}

/// A ggml tensor element type. Types this crate can name but not dequantise are still sized, so a
/// file holding them can be opened and its other tensors read.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    BF16,
    /// Any other ggml type id (IQ*, integer types, ...).
    Other(u32),
}

/// Names, block sizes and byte sizes of the ggml types without a dedicated variant
/// (from ggml's type traits, as listed in gguf-py's `GGML_QUANT_SIZES`).
const OTHER_TYPES: &[(u32, &str, usize, usize)] = &[
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
    (40, "NVFP4", 64, 36),
    (41, "Q1_0", 128, 18),
];

impl GgmlType {
    /// The type with ggml id `id`; unknown ids become `Other(id)` (with no sizes).
    pub fn from_id(id: u32) -> GgmlType {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            9 => GgmlType::Q8_1,
            10 => GgmlType::Q2_K,
            11 => GgmlType::Q3_K,
            12 => GgmlType::Q4_K,
            13 => GgmlType::Q5_K,
            14 => GgmlType::Q6_K,
            15 => GgmlType::Q8_K,
            30 => GgmlType::BF16,
            other => GgmlType::Other(other),
        }
    }

    /// The ggml type id stored in the file.
    pub fn id(&self) -> u32 {
        match *self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q8_1 => 9,
            GgmlType::Q2_K => 10,
            GgmlType::Q3_K => 11,
            GgmlType::Q4_K => 12,
            GgmlType::Q5_K => 13,
            GgmlType::Q6_K => 14,
            GgmlType::Q8_K => 15,
            GgmlType::BF16 => 30,
            GgmlType::Other(id) => id,
        }
    }

    /// (elements per block, bytes per block), or None for an unknown type id.
    fn sizes(&self) -> Option<(usize, usize)> {
        Some(match *self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q8_0 => (32, 34),
            // Current ggml stores d and s as f16; Q8_1 is an intermediate type not found in files.
            GgmlType::Q8_1 => (32, 36),
            GgmlType::Q2_K => (256, 84),
            GgmlType::Q3_K => (256, 110),
            GgmlType::Q4_K => (256, 144),
            GgmlType::Q5_K => (256, 176),
            GgmlType::Q6_K => (256, 210),
            GgmlType::Q8_K => (256, 292),
            GgmlType::Other(id) => {
                let &(_, _, block, size) = OTHER_TYPES.iter().find(|t| t.0 == id)?;
                (block, size)
            }
        })
    }

    /// Elements per block (1 for plain float types); None for an unknown type id.
    pub fn block_size(&self) -> Option<usize> {
        self.sizes().map(|s| s.0)
    }

    /// Bytes per block; None for an unknown type id.
    pub fn type_size(&self) -> Option<usize> {
        self.sizes().map(|s| s.1)
    }

    /// The ggml name (`Q4_K`, `IQ2_XXS`, ...), or `type#<id>` for an unknown id.
    pub fn name(&self) -> String {
        let fixed = match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q8_1 => "Q8_1",
            GgmlType::Q2_K => "Q2_K",
            GgmlType::Q3_K => "Q3_K",
            GgmlType::Q4_K => "Q4_K",
            GgmlType::Q5_K => "Q5_K",
            GgmlType::Q6_K => "Q6_K",
            GgmlType::Q8_K => "Q8_K",
            GgmlType::BF16 => "BF16",
            GgmlType::Other(id) => {
                return match OTHER_TYPES.iter().find(|t| t.0 == *id) {
                    Some(t) => t.1.to_string(),
                    None => format!("type#{id}"),
                }
            }
        };
        fixed.to_string()
    }

    /// Whether [`dequantize`] handles this type.
    pub fn can_dequantize(&self) -> bool {
        matches!(
            self,
            GgmlType::F32
                | GgmlType::F16
                | GgmlType::BF16
                | GgmlType::Q4_0
                | GgmlType::Q4_1
                | GgmlType::Q5_0
                | GgmlType::Q5_1
                | GgmlType::Q8_0
                | GgmlType::Q4_K
                | GgmlType::Q5_K
                | GgmlType::Q6_K
        )
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Where a tensor lies and what it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// Dimensions as stored: innermost (contiguous) first, the reverse of torch's order.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Byte offset relative to the start of the data section.
    pub offset: u64,
    /// Size of the tensor's data in bytes.
    pub n_bytes: u64,
}

impl GgufTensorInfo {
    pub fn n_elements(&self) -> u64 {
        // The product was checked for overflow when the file was read.
        self.dims.iter().product()
    }

    /// The torch/numpy shape: dims reversed (outermost first).
    pub fn torch_shape(&self) -> Vec<i64> {
        self.dims.iter().rev().map(|&d| i64::try_from(d).unwrap_or(i64::MAX)).collect()
    }
}

/// The file's bytes: memory-mapped from disk, or owned (tests, fuzzing).
enum Storage {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// An opened GGUF file: parsed metadata and tensor infos, with tensor data read on demand.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, GgufValue>,
    /// Tensor infos in file order.
    pub tensors: Vec<GgufTensorInfo>,
    storage: Storage,
    label: String,
    data_offset: u64,
    alignment: u64,
    by_name: HashMap<String, usize>,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("data_offset", &self.data_offset)
            .field("alignment", &self.alignment)
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps `path` and parses its header; tensor data is only touched when asked for.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let label = path.display().to_string();
        let io = |source| GgufError::Io { file: label.clone(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let storage = if len == 0 {
            // Mapping an empty file fails on some platforms; an empty buffer gives the real error.
            Storage::Owned(Vec::new())
        } else {
            // SAFETY: the map is read-only and only ever read as plain bytes, with every offset
            // bounds-checked. If another process truncates or rewrites the file while it is mapped,
            // reads may fault or see new bytes; like every mmap-based model loader we accept that
            // model files are not modified while in use.
            Storage::Mapped(unsafe { memmap2::Mmap::map(&file) }.map_err(io)?)
        };
        Self::from_storage(storage, path.to_path_buf(), label)
    }

    /// Parses a GGUF held in memory; `label` names it in errors.
    pub fn from_bytes(bytes: Vec<u8>, label: &str) -> Result<GgufFile> {
        Self::from_storage(Storage::Owned(bytes), PathBuf::from(label), label.to_string())
    }

    fn from_storage(storage: Storage, path: PathBuf, label: String) -> Result<GgufFile> {
        let header = parse::parse(storage.bytes(), &label)?;
        let by_name = header.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(GgufFile {
            path,
            version: header.version,
            metadata: header.metadata,
            tensors: header.tensors,
            storage,
            label,
            data_offset: header.data_offset,
            alignment: header.alignment,
            by_name,
        })
    }

    /// The name used in error messages (the path, or the label given to `from_bytes`).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Absolute file offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Data alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Total size of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.storage.bytes().len() as u64
    }

    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.by_name.get(name).and_then(|&i| self.tensors.get(i))
    }

    fn info_or_err(&self, name: &str) -> Result<&GgufTensorInfo> {
        self.tensor_info(name).ok_or_else(|| GgufError::NoTensor { file: self.label.clone(), name: name.to_string() })
    }

    /// The raw (still quantised) bytes of tensor `name`.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let info = self.info_or_err(name)?;
        let bad = |reason: String| GgufError::BadTensor { file: self.label.clone(), name: name.to_string(), reason };
        // Ranges were validated at open time; they are re-checked here rather than trusted.
        let start = self.data_offset.checked_add(info.offset).ok_or_else(|| bad("offset overflows".into()))?;
        let end = start.checked_add(info.n_bytes).ok_or_else(|| bad("end offset overflows".into()))?;
        let range = usize::try_from(start).ok().zip(usize::try_from(end).ok());
        range.and_then(|(s, e)| self.storage.bytes().get(s..e)).ok_or_else(|| bad(format!("bytes {start}..{end} lie outside the file")))
    }

    /// Tensor `name` converted to f32, in storage order (innermost dimension fastest).
    pub fn dequantize_f32(&self, name: &str) -> Result<Vec<f32>> {
        let info = self.info_or_err(name)?;
        let bytes = self.tensor_bytes(name)?;
        let context = || format!("{}: tensor {:?}", self.label, name);
        let n = usize::try_from(info.n_elements()).map_err(|_| GgufError::Dequantize {
            context: context(),
            ty: info.ggml_type.name(),
            reason: "too many elements for this platform".into(),
        })?;
        if !info.ggml_type.can_dequantize() {
            return Err(GgufError::Dequantize {
                context: context(),
                ty: info.ggml_type.name(),
                reason: "type not supported (supported: F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K Q5_K Q6_K)".into(),
            });
        }
        let mut out = vec![0f32; n];
        dequantize(info.ggml_type, bytes, n, &mut out).map_err(|e| match e {
            GgufError::Dequantize { ty, reason, .. } => GgufError::Dequantize { context: context(), ty, reason },
            other => other,
        })?;
        Ok(out)
    }

    pub fn meta(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    fn typed<'a, T>(&'a self, key: &str, expected: &'static str, get: impl FnOnce(&'a GgufValue) -> Option<T>) -> Result<T> {
        let value = self.metadata.get(key).ok_or_else(|| GgufError::MissingKey { file: self.label.clone(), key: key.to_string(), expected })?;
        get(value).ok_or_else(|| GgufError::WrongType {
            file: self.label.clone(),
            key: key.to_string(),
            expected,
            found: format!("{} {}", value.type_name(), value),
        })
    }

    /// An integer value that is non-negative.
    pub fn meta_u64(&self, key: &str) -> Result<u64> {
        self.typed(key, "a non-negative integer", GgufValue::as_u64)
    }

    /// A float or integer value.
    pub fn meta_f64(&self, key: &str) -> Result<f64> {
        self.typed(key, "a number", GgufValue::as_f64)
    }

    pub fn meta_str(&self, key: &str) -> Result<&str> {
        self.typed(key, "a string", GgufValue::as_str)
    }

    pub fn meta_bool(&self, key: &str) -> Result<bool> {
        self.typed(key, "a bool", GgufValue::as_bool)
    }

    pub fn meta_string_array(&self, key: &str) -> Result<Vec<&str>> {
        self.typed(key, "an array of strings", |v| v.as_array()?.iter().map(GgufValue::as_str).collect::<Option<Vec<&str>>>())
    }

    /// `general.architecture` (e.g. `llama`, `qwen2`).
    pub fn architecture(&self) -> Result<&str> {
        self.meta_str("general.architecture")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_table_matches_ggml_ids() {
        for id in 0..64u32 {
            let ty = GgmlType::from_id(id);
            assert_eq!(ty.id(), id);
            if let Some(bs) = ty.block_size() {
                assert!(ty.type_size().is_some_and(|s| s > 0) && bs > 0, "{ty:?}");
            }
        }
        assert_eq!(GgmlType::from_id(12).name(), "Q4_K");
        assert_eq!(GgmlType::from_id(16).name(), "IQ2_XXS");
        assert_eq!(GgmlType::from_id(63).name(), "type#63");
        assert_eq!(GgmlType::from_id(63).block_size(), None);
    }

    #[test]
    fn q4_0_block_by_hand() {
        // d = 0.5 (f16 0x3800); byte j holds j in its low nibble and 15-j in its high nibble.
        let mut b = [0u8; 18];
        b[0] = 0x00;
        b[1] = 0x38;
        for j in 0..16 {
            b[2 + j] = ((15 - j as u8) << 4) | j as u8;
        }
        let mut o = [0f32; 32];
        dequant::block_q4_0(&b, &mut o);
        for j in 0..16 {
            assert_eq!(o[j], 0.5 * (j as f32 - 8.0));
            assert_eq!(o[j + 16], 0.5 * (15.0 - j as f32 - 8.0));
        }
    }

    #[test]
    fn dequantize_rejects_wrong_sizes() {
        let mut out = vec![0f32; 32];
        assert!(dequantize(GgmlType::Q8_0, &[0u8; 33], 32, &mut out).is_err());
        assert!(dequantize(GgmlType::Q8_0, &[0u8; 34], 31, &mut out).is_err());
        assert!(dequantize(GgmlType::Q8_0, &[0u8; 34], 32, &mut out[..16]).is_err());
        let e = dequantize(GgmlType::Q2_K, &[0u8; 84], 256, &mut vec![0f32; 256]).unwrap_err();
        assert!(e.to_string().contains("Q2_K"), "{e}");
        assert!(dequantize(GgmlType::Q8_0, &[0u8; 34], 32, &mut out).is_ok());
    }
}
