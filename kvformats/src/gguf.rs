//! GGUF reader and dequantisation: the SmolLM2 and Qwen model files ship as GGUF, and every
//! weight the engine loads passes through here, so each length and offset read from the file is
//! checked against the bytes that remain before it is used or allocated.
//!
//! Format (v2 and v3, little-endian): magic `GGUF`, version u32, tensor count u64, metadata count
//! u64, the metadata key/value pairs, the tensor infos, padding to `general.alignment` (default
//! 32), then the data section. Tensor offsets are relative to the data section. Block layouts of
//! the quantised types follow ggml (`ggml-common.h`) and gguf-py (`gguf/quants.py`); each kernel
//! evaluates its arithmetic in the same order as gguf-py so results agree bit for bit.

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
/// Below this many elements a tensor is dequantised on the calling thread only.
const PARALLEL_MIN_ELEMENTS: usize = 1 << 20;

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
    UnsupportedVersion {
        file: String,
        version: u32,
        hint: &'static str,
    },
    #[error("{file}: truncated at byte {offset}: {what} needs {needed} bytes but only {available} remain")]
    Truncated {
        file: String,
        offset: u64,
        what: String,
        needed: u64,
        available: u64,
    },
    #[error("{file}: at byte {offset}: {what} = {count} is impossible ({reason})")]
    BadCount {
        file: String,
        offset: u64,
        what: String,
        count: u64,
        reason: String,
    },
    #[error("{file}: at byte {offset}: {what} has unknown value type id {type_id}")]
    BadValueType {
        file: String,
        offset: u64,
        what: String,
        type_id: u32,
    },
    #[error("{file}: at byte {offset}: {what} is not valid UTF-8")]
    BadUtf8 {
        file: String,
        offset: u64,
        what: String,
    },
    #[error("{file}: metadata key {key:?} appears twice (second at byte {offset})")]
    DuplicateKey {
        file: String,
        key: String,
        offset: u64,
    },
    #[error("{file}: tensor name {name:?} appears twice (second at byte {offset})")]
    DuplicateTensor {
        file: String,
        name: String,
        offset: u64,
    },
    #[error("{file}: metadata key {key:?}: {reason}")]
    BadMetadata {
        file: String,
        key: String,
        reason: String,
    },
    #[error("{file}: tensor {name:?}: {reason}")]
    BadTensor {
        file: String,
        name: String,
        reason: String,
    },
    #[error("{file}: tensors {first:?} (data bytes {first_start}..{first_end}) and {second:?} (data bytes {second_start}..{second_end}) overlap")]
    Overlap {
        file: String,
        first: String,
        first_start: u64,
        first_end: u64,
        second: String,
        second_start: u64,
        second_end: u64,
    },
    #[error("{file}: no tensor named {name:?}")]
    NoTensor { file: String, name: String },
    #[error("{file}: metadata key {key:?} is missing (expected {expected})")]
    MissingKey {
        file: String,
        key: String,
        expected: &'static str,
    },
    #[error("{file}: metadata key {key:?} holds {found}, expected {expected}")]
    WrongType {
        file: String,
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("{context}: cannot dequantise type {ty}: {reason}")]
    Dequantize {
        context: String,
        ty: String,
        reason: String,
    },
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
            _ => self
                .as_i64()
                .map(|v| v as f64)
                .or_else(|| self.as_u64().map(|v| v as f64)),
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
        self.dims
            .iter()
            .rev()
            .map(|&d| i64::try_from(d).unwrap_or(i64::MAX))
            .collect()
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
        let io = |source| GgufError::Io {
            file: label.clone(),
            source,
        };
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
        Self::from_storage(
            Storage::Owned(bytes),
            PathBuf::from(label),
            label.to_string(),
        )
    }

    fn from_storage(storage: Storage, path: PathBuf, label: String) -> Result<GgufFile> {
        let header = parse(storage.bytes(), &label)?;
        let by_name = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
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
        self.tensor_info(name).ok_or_else(|| GgufError::NoTensor {
            file: self.label.clone(),
            name: name.to_string(),
        })
    }

    /// The raw (still quantised) bytes of tensor `name`.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let info = self.info_or_err(name)?;
        let bad = |reason: String| GgufError::BadTensor {
            file: self.label.clone(),
            name: name.to_string(),
            reason,
        };
        // Ranges were validated at open time; they are re-checked here rather than trusted.
        let start = self
            .data_offset
            .checked_add(info.offset)
            .ok_or_else(|| bad("offset overflows".into()))?;
        let end = start
            .checked_add(info.n_bytes)
            .ok_or_else(|| bad("end offset overflows".into()))?;
        let range = usize::try_from(start).ok().zip(usize::try_from(end).ok());
        range
            .and_then(|(s, e)| self.storage.bytes().get(s..e))
            .ok_or_else(|| bad(format!("bytes {start}..{end} lie outside the file")))
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
            GgufError::Dequantize { ty, reason, .. } => GgufError::Dequantize {
                context: context(),
                ty,
                reason,
            },
            other => other,
        })?;
        Ok(out)
    }

    pub fn meta(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        get: impl FnOnce(&'a GgufValue) -> Option<T>,
    ) -> Result<T> {
        let value = self
            .metadata
            .get(key)
            .ok_or_else(|| GgufError::MissingKey {
                file: self.label.clone(),
                key: key.to_string(),
                expected,
            })?;
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
        self.typed(key, "an array of strings", |v| {
            v.as_array()?
                .iter()
                .map(GgufValue::as_str)
                .collect::<Option<Vec<&str>>>()
        })
    }

    /// `general.architecture` (e.g. `llama`, `qwen2`).
    pub fn architecture(&self) -> Result<&str> {
        self.meta_str("general.architecture")
    }
}

/// What the header parse yields.
struct Header {
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
    data_offset: u64,
    alignment: u64,
}

/// A bounds-checked little-endian reader over the file's bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    file: &'a str,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> u64 {
        self.bytes.len().saturating_sub(self.pos) as u64
    }

    fn offset(&self) -> u64 {
        self.pos as u64
    }

    fn truncated(&self, what: &dyn Fn() -> String, needed: u64) -> GgufError {
        GgufError::Truncated {
            file: self.file.to_string(),
            offset: self.offset(),
            what: what(),
            needed,
            available: self.remaining(),
        }
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let slice = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .and_then(|end| self.bytes.get(self.pos..end).map(|s| (s, end)));
        match slice {
            Some((s, end)) => {
                self.pos = end;
                Ok(s)
            }
            None => Err(self.truncated(what, n)),
        }
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let start = self.pos;
        let s = self.take(N as u64, what)?;
        <[u8; N]>::try_from(s).map_err(|_| {
            self.pos = start;
            self.truncated(what, N as u64)
        })
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let len = self.u64(&|| format!("length of {}", what()))?;
        let start = self.offset();
        let bytes = self.take(len, &|| format!("{} ({len} bytes)", what()))?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => Err(GgufError::BadUtf8 {
                file: self.file.to_string(),
                offset: start,
                what: what(),
            }),
        }
    }

    /// Reads one value of type `type_id`; `what` describes it for errors.
    fn value(
        &mut self,
        type_id: u32,
        depth: usize,
        what: &dyn Fn() -> String,
    ) -> Result<GgufValue> {
        Ok(match type_id {
            0 => GgufValue::U8(u8::from_le_bytes(self.array(what)?)),
            1 => GgufValue::I8(i8::from_le_bytes(self.array(what)?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => GgufValue::U32(u32::from_le_bytes(self.array(what)?)),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => {
                let offset = self.offset();
                match self.array::<1>(what)? {
                    [0] => GgufValue::Bool(false),
                    [1] => GgufValue::Bool(true),
                    [b] => {
                        return Err(GgufError::BadCount {
                            file: self.file.to_string(),
                            offset,
                            what: what(),
                            count: b.into(),
                            reason: "a bool must be 0 or 1".into(),
                        })
                    }
                }
            }
            8 => GgufValue::String(self.string(what)?),
            9 => self.array_value(depth, what)?,
            10 => GgufValue::U64(u64::from_le_bytes(self.array(what)?)),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
            _ => {
                return Err(GgufError::BadValueType {
                    file: self.file.to_string(),
                    offset: self.offset().saturating_sub(4),
                    what: what(),
                    type_id,
                })
            }
        })
    }

    fn array_value(&mut self, depth: usize, what: &dyn Fn() -> String) -> Result<GgufValue> {
        let type_offset = self.offset();
        let elem_type = self.u32(&|| format!("element type of {}", what()))?;
        let count_offset = self.offset();
        let count = self.u64(&|| format!("element count of {}", what()))?;
        let bad_count = |reason: String| GgufError::BadCount {
            file: self.file.to_string(),
            offset: count_offset,
            what: format!("element count of {}", what()),
            count,
            reason,
        };
        if depth >= MAX_ARRAY_DEPTH {
            return Err(bad_count(format!(
                "arrays nested deeper than {MAX_ARRAY_DEPTH} levels"
            )));
        }
        let min_size = min_value_size(elem_type).ok_or_else(|| GgufError::BadValueType {
            file: self.file.to_string(),
            offset: type_offset,
            what: format!("element of {}", what()),
            type_id: elem_type,
        })?;
        let remaining = self.remaining();
        if count > remaining / min_size {
            return Err(bad_count(format!(
                "{count} elements of at least {min_size} bytes each do not fit in the {remaining} bytes left"
            )));
        }
        // The count is bounded by the file size now; still grow gradually so that a large array of
        // small items does not reserve 32 bytes per element up front.
        let mut items = Vec::with_capacity(usize::try_from(count.min(1 << 16)).unwrap_or(0));
        for i in 0..count {
            items.push(self.value(elem_type, depth + 1, &|| {
                format!("element {i} of {}", what())
            })?);
        }
        Ok(GgufValue::Array(items))
    }
}

/// Smallest encoded size of one value of the given type id, or None if the id is unknown.
fn min_value_size(type_id: u32) -> Option<u64> {
    match type_id {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        8 | 10..=12 => Some(8),
        9 => Some(12),
        _ => None,
    }
}

fn parse(bytes: &[u8], file: &str) -> Result<Header> {
    let mut r = Reader {
        bytes,
        pos: 0,
        file,
    };
    let magic: [u8; 4] = r.array(&|| "magic".into())?;
    if magic != GGUF_MAGIC {
        return Err(GgufError::BadMagic {
            file: file.to_string(),
            found: magic,
        });
    }
    let version = r.u32(&|| "version".into())?;
    match version {
        2 | 3 => {}
        v if matches!(v.swap_bytes(), 1..=3) => {
            return Err(GgufError::UnsupportedVersion {
                file: file.to_string(),
                version,
                hint: "this looks like a big-endian GGUF; only little-endian files are supported",
            })
        }
        1 => {
            return Err(GgufError::UnsupportedVersion {
                file: file.to_string(),
                version,
                hint: "GGUF v1 is obsolete; supported versions are 2 and 3",
            })
        }
        _ => {
            return Err(GgufError::UnsupportedVersion {
                file: file.to_string(),
                version,
                hint: "supported versions are 2 and 3",
            })
        }
    }
    let tensor_count_offset = r.offset();
    let tensor_count = r.u64(&|| "tensor count".into())?;
    let kv_count_offset = r.offset();
    let kv_count = r.u64(&|| "metadata count".into())?;
    let remaining = r.remaining();
    if kv_count > remaining / MIN_KV_BYTES {
        return Err(GgufError::BadCount {
            file: file.to_string(),
            offset: kv_count_offset,
            what: "metadata count".into(),
            count: kv_count,
            reason: format!(
                "needs at least {MIN_KV_BYTES} bytes each but only {remaining} bytes follow"
            ),
        });
    }
    if tensor_count > remaining / MIN_TENSOR_INFO_BYTES {
        return Err(GgufError::BadCount {
            file: file.to_string(),
            offset: tensor_count_offset,
            what: "tensor count".into(),
            count: tensor_count,
            reason: format!(
                "needs at least {MIN_TENSOR_INFO_BYTES} bytes each but only {remaining} bytes follow"
            ),
        });
    }

    let mut metadata = BTreeMap::new();
    for i in 0..kv_count {
        let key_offset = r.offset();
        let key = r.string(&|| format!("key of metadata pair {i}"))?;
        let what = || format!("value of metadata key {key:?}");
        let type_id = r.u32(&|| format!("value type of metadata key {key:?}"))?;
        let value = r.value(type_id, 0, &what)?;
        if metadata.contains_key(&key) {
            return Err(GgufError::DuplicateKey {
                file: file.to_string(),
                key,
                offset: key_offset,
            });
        }
        metadata.insert(key, value);
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() => a,
            _ => {
                return Err(GgufError::BadMetadata {
                    file: file.to_string(),
                    key: "general.alignment".into(),
                    reason: format!("{} {v} is not a positive power of two", v.type_name()),
                })
            }
        },
    };

    let remaining = r.remaining();
    if tensor_count > remaining / MIN_TENSOR_INFO_BYTES {
        return Err(GgufError::BadCount {
            file: file.to_string(),
            offset: tensor_count_offset,
            what: "tensor count".into(),
            count: tensor_count,
            reason: format!(
                "needs at least {MIN_TENSOR_INFO_BYTES} bytes each but only {remaining} bytes follow the metadata"
            ),
        });
    }
    let mut tensors: Vec<GgufTensorInfo> =
        Vec::with_capacity(usize::try_from(tensor_count).unwrap_or(0));
    let mut seen: HashMap<String, ()> = HashMap::new();
    for i in 0..tensor_count {
        let info_offset = r.offset();
        let name = r.string(&|| format!("name of tensor {i}"))?;
        let bad = |reason: String| GgufError::BadTensor {
            file: file.to_string(),
            name: name.clone(),
            reason,
        };
        let n_dims_offset = r.offset();
        let n_dims = r.u32(&|| format!("dimension count of tensor {name:?}"))?;
        if n_dims as usize > MAX_DIMS {
            return Err(bad(format!(
                "{n_dims} dimensions at byte {n_dims_offset}; ggml allows at most {MAX_DIMS}"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(r.u64(&|| format!("dimension {d} of tensor {name:?}"))?);
        }
        let type_id = r.u32(&|| format!("type of tensor {name:?}"))?;
        let offset = r.u64(&|| format!("data offset of tensor {name:?}"))?;
        let ggml_type = GgmlType::from_id(type_id);
        let (Some(block), Some(type_size)) = (ggml_type.block_size(), ggml_type.type_size()) else {
            return Err(bad(format!("unknown ggml type id {type_id}")));
        };
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| bad(format!("element count of dims {dims:?} overflows")))?;
        let inner = dims.first().copied().unwrap_or(1);
        if !inner.is_multiple_of(block as u64) {
            return Err(bad(format!(
                "innermost dimension {inner} is not a multiple of the {} block size {block}",
                ggml_type.name()
            )));
        }
        let n_bytes = (n_elements / block as u64)
            .checked_mul(type_size as u64)
            .ok_or_else(|| bad(format!("byte size of dims {dims:?} overflows")))?;
        if !offset.is_multiple_of(alignment) {
            return Err(bad(format!(
                "data offset {offset} is not a multiple of the alignment {alignment}"
            )));
        }
        if seen.insert(name.clone(), ()).is_some() {
            return Err(GgufError::DuplicateTensor {
                file: file.to_string(),
                name,
                offset: info_offset,
            });
        }
        tensors.push(GgufTensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            n_bytes,
        });
    }

    let header_end = r.offset();
    let data_offset = header_end
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| GgufError::BadMetadata {
            file: file.to_string(),
            key: "general.alignment".into(),
            reason: format!("aligning the data section at {header_end} to {alignment} overflows"),
        })?;
    let file_len = bytes.len() as u64;
    let data_len = file_len.saturating_sub(data_offset);
    for t in &tensors {
        let end = t.offset.checked_add(t.n_bytes);
        if data_offset > file_len || end.is_none_or(|end| end > data_len) {
            return Err(GgufError::BadTensor {
                file: file.to_string(),
                name: t.name.clone(),
                reason: format!(
                    "data bytes {}..{} (absolute {}..{}) lie beyond the end of the file ({file_len} bytes; {} {:?} needs {} bytes)",
                    t.offset,
                    t.offset.saturating_add(t.n_bytes),
                    data_offset.saturating_add(t.offset),
                    data_offset.saturating_add(t.offset).saturating_add(t.n_bytes),
                    t.ggml_type.name(),
                    t.dims,
                    t.n_bytes
                ),
            });
        }
    }
    let mut order: Vec<&GgufTensorInfo> = tensors.iter().filter(|t| t.n_bytes > 0).collect();
    order.sort_by_key(|t| t.offset);
    for pair in order.windows(2) {
        if let [a, b] = pair {
            // Both ends were checked above, so the additions cannot overflow.
            let a_end = a.offset.saturating_add(a.n_bytes);
            if a_end > b.offset {
                return Err(GgufError::Overlap {
                    file: file.to_string(),
                    first: a.name.clone(),
                    first_start: a.offset,
                    first_end: a_end,
                    second: b.name.clone(),
                    second_start: b.offset,
                    second_end: b.offset.saturating_add(b.n_bytes),
                });
            }
        }
    }

    Ok(Header {
        version,
        metadata,
        tensors,
        data_offset,
        alignment,
    })
}

/// Converts `n_elements` values of type `ty`, stored in `bytes`, to f32 in `out`.
/// `bytes` must hold exactly the blocks for `n_elements` and `out` must have `n_elements` slots.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n_elements: usize, out: &mut [f32]) -> Result<()> {
    let fail = |reason: String| GgufError::Dequantize {
        context: "dequantize".into(),
        ty: ty.name(),
        reason,
    };
    if !ty.can_dequantize() {
        return Err(fail(
            "type not supported (supported: F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K Q5_K Q6_K)"
                .into(),
        ));
    }
    let (Some(block), Some(type_size)) = (ty.block_size(), ty.type_size()) else {
        return Err(fail("type has no known block layout".into()));
    };
    if !n_elements.is_multiple_of(block) {
        return Err(fail(format!(
            "{n_elements} elements is not a multiple of the block size {block}"
        )));
    }
    let expected = (n_elements / block)
        .checked_mul(type_size)
        .ok_or_else(|| fail(format!("byte size of {n_elements} elements overflows")))?;
    if bytes.len() != expected {
        return Err(fail(format!(
            "{n_elements} elements need {expected} bytes but {} were given",
            bytes.len()
        )));
    }
    if out.len() != n_elements {
        return Err(fail(format!(
            "output has {} slots for {n_elements} elements",
            out.len()
        )));
    }
    match ty {
        GgmlType::F32 => run::<1, 4>(bytes, out, |b, o| o[0] = f32::from_le_bytes(*b)),
        GgmlType::F16 => run::<1, 2>(bytes, out, |b, o| o[0] = f16(b[0], b[1])),
        GgmlType::BF16 => run::<1, 2>(bytes, out, |b, o| {
            o[0] = f32::from_bits(u32::from(u16::from_le_bytes(*b)) << 16)
        }),
        GgmlType::Q4_0 => run::<32, 18>(bytes, out, block_q4_0),
        GgmlType::Q4_1 => run::<32, 20>(bytes, out, block_q4_1),
        GgmlType::Q5_0 => run::<32, 22>(bytes, out, block_q5_0),
        GgmlType::Q5_1 => run::<32, 24>(bytes, out, block_q5_1),
        GgmlType::Q8_0 => run::<32, 34>(bytes, out, block_q8_0),
        GgmlType::Q4_K => run::<256, 144>(bytes, out, block_q4_k),
        GgmlType::Q5_K => run::<256, 176>(bytes, out, block_q5_k),
        GgmlType::Q6_K => run::<256, 210>(bytes, out, block_q6_k),
        _ => return Err(fail("type not supported".into())),
    }
    Ok(())
}

/// Applies `kernel` to every (block bytes, block output) pair, splitting large tensors across
/// threads. Callers have checked that `bytes` and `out` hold the same number of whole blocks.
fn run<const B: usize, const N: usize>(
    bytes: &[u8],
    out: &mut [f32],
    kernel: fn(&[u8; N], &mut [f32; B]),
) {
    let serial = |bytes: &[u8], out: &mut [f32]| {
        for (b, o) in bytes.chunks_exact(N).zip(out.chunks_exact_mut(B)) {
            // chunks_exact yields exactly N and B items, so both conversions always succeed.
            if let (Ok(b), Ok(o)) = (<&[u8; N]>::try_from(b), <&mut [f32; B]>::try_from(o)) {
                kernel(b, o);
            }
        }
    };
    let threads = if out.len() < PARALLEL_MIN_ELEMENTS {
        1
    } else {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(16)
    };
    let n_blocks = out.len() / B;
    if threads <= 1 || n_blocks < 2 {
        serial(bytes, out);
        return;
    }
    let per_thread = n_blocks.div_ceil(threads);
    std::thread::scope(|s| {
        for (b, o) in bytes
            .chunks(per_thread * N)
            .zip(out.chunks_mut(per_thread * B))
        {
            s.spawn(move || serial(b, o));
        }
    });
}

#[inline]
fn f16(lo: u8, hi: u8) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([lo, hi])).to_f32()
}

/// Q4_0: f16 scale d, then 16 bytes of 4-bit quants (low nibbles are elements 0..16, high nibbles
/// 16..32); x = d * (q - 8).
fn block_q4_0(b: &[u8; 18], o: &mut [f32; 32]) {
    let d = f16(b[0], b[1]);
    for j in 0..16 {
        let q = b[2 + j];
        o[j] = d * f32::from(i16::from(q & 0x0f) - 8);
        o[j + 16] = d * f32::from(i16::from(q >> 4) - 8);
    }
}

/// Q4_1: f16 scale d, f16 minimum m, 16 bytes of nibbles; x = d * q + m.
fn block_q4_1(b: &[u8; 20], o: &mut [f32; 32]) {
    let d = f16(b[0], b[1]);
    let m = f16(b[2], b[3]);
    for j in 0..16 {
        let q = b[4 + j];
        o[j] = d * f32::from(q & 0x0f) + m;
        o[j + 16] = d * f32::from(q >> 4) + m;
    }
}

/// Q5_0: f16 d, a u32 of fifth bits (bit j belongs to element j), 16 bytes of nibbles;
/// x = d * (q - 16).
fn block_q5_0(b: &[u8; 22], o: &mut [f32; 32]) {
    let d = f16(b[0], b[1]);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for j in 0..16 {
        let q = b[6 + j];
        let lo = (q & 0x0f) | ((((qh >> j) & 1) as u8) << 4);
        let hi = (q >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
        o[j] = d * f32::from(i16::from(lo) - 16);
        o[j + 16] = d * f32::from(i16::from(hi) - 16);
    }
}

/// Q5_1: f16 d, f16 m, u32 of fifth bits, 16 bytes of nibbles; x = d * q + m.
fn block_q5_1(b: &[u8; 24], o: &mut [f32; 32]) {
    let d = f16(b[0], b[1]);
    let m = f16(b[2], b[3]);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for j in 0..16 {
        let q = b[8 + j];
        let lo = (q & 0x0f) | ((((qh >> j) & 1) as u8) << 4);
        let hi = (q >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
        o[j] = d * f32::from(lo) + m;
        o[j + 16] = d * f32::from(hi) + m;
    }
}

/// Q8_0: f16 d, 32 signed bytes; x = q * d.
fn block_q8_0(b: &[u8; 34], o: &mut [f32; 32]) {
    let d = f16(b[0], b[1]);
    for j in 0..32 {
        o[j] = f32::from(b[2 + j] as i8) * d;
    }
}

/// The eight 6-bit (scale, min) pairs of a Q4_K/Q5_K super-block, packed into 12 bytes:
/// pairs 0..4 sit in the low 6 bits of bytes 0..4 / 4..8; pairs 4..8 take their low 4 bits from
/// bytes 8..12 and their top 2 bits from the high bits of bytes 0..4 / 4..8.
fn k_scales(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    if let Ok(s) = <&[u8; 12]>::try_from(s) {
        for j in 0..4 {
            sc[j] = s[j] & 0x3f;
            mn[j] = s[j + 4] & 0x3f;
            sc[j + 4] = (s[j + 8] & 0x0f) | ((s[j] >> 6) << 4);
            mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
        }
    }
    (sc, mn)
}

/// Q4_K: f16 d, f16 dmin, 12 bytes of packed scales/mins, 128 bytes of nibbles. Each 32-byte
/// chunk c holds sub-block 2c in its low nibbles and 2c+1 in its high nibbles;
/// x = (d * scale) * q - (dmin * min).
fn block_q4_k(b: &[u8; 144], o: &mut [f32; 256]) {
    let d = f16(b[0], b[1]);
    let dmin = f16(b[2], b[3]);
    let (sc, mn) = k_scales(&b[4..16]);
    for c in 0..4 {
        let (d1, m1) = (d * f32::from(sc[2 * c]), dmin * f32::from(mn[2 * c]));
        let (d2, m2) = (
            d * f32::from(sc[2 * c + 1]),
            dmin * f32::from(mn[2 * c + 1]),
        );
        for l in 0..32 {
            let q = b[16 + 32 * c + l];
            o[64 * c + l] = d1 * f32::from(q & 0x0f) - m1;
            o[64 * c + 32 + l] = d2 * f32::from(q >> 4) - m2;
        }
    }
}

/// Q5_K: as Q4_K plus 32 bytes of fifth bits before the nibbles; bit i of byte l is the fifth
/// bit of element l of sub-block i.
fn block_q5_k(b: &[u8; 176], o: &mut [f32; 256]) {
    let d = f16(b[0], b[1]);
    let dmin = f16(b[2], b[3]);
    let (sc, mn) = k_scales(&b[4..16]);
    for c in 0..4 {
        let (d1, m1) = (d * f32::from(sc[2 * c]), dmin * f32::from(mn[2 * c]));
        let (d2, m2) = (
            d * f32::from(sc[2 * c + 1]),
            dmin * f32::from(mn[2 * c + 1]),
        );
        for l in 0..32 {
            let q = b[48 + 32 * c + l];
            let h = b[16 + l];
            let lo = (q & 0x0f) | (((h >> (2 * c)) & 1) << 4);
            let hi = (q >> 4) | (((h >> (2 * c + 1)) & 1) << 4);
            o[64 * c + l] = d1 * f32::from(lo) - m1;
            o[64 * c + 32 + l] = d2 * f32::from(hi) - m2;
        }
    }
}

/// Q6_K: 128 bytes of low nibbles, 64 bytes of 2-bit high parts, 16 signed 8-bit scales (one per
/// 16 elements), f16 d; x = (d * scale) * (q - 32). Each half h of 128 elements uses
/// ql[64h..64h+64] and qh[32h..32h+32]: element 32k+l takes nibble (k/2) of ql[64h + 32(k%2) + l]
/// and bits 2k..2k+2 of qh[32h + l].
fn block_q6_k(b: &[u8; 210], o: &mut [f32; 256]) {
    let d = f16(b[208], b[209]);
    let mut ds = [0f32; 16];
    for (i, s) in ds.iter_mut().enumerate() {
        *s = d * f32::from(b[192 + i] as i8);
    }
    for h in 0..2 {
        for l in 0..32 {
            let qh = b[128 + 32 * h + l];
            let ql_a = b[64 * h + l];
            let ql_b = b[64 * h + 32 + l];
            let q = [
                (ql_a & 0x0f) | ((qh & 0x03) << 4),
                (ql_b & 0x0f) | (((qh >> 2) & 0x03) << 4),
                (ql_a >> 4) | (((qh >> 4) & 0x03) << 4),
                (ql_b >> 4) | (((qh >> 6) & 0x03) << 4),
            ];
            for (k, &qk) in q.iter().enumerate() {
                let idx = 128 * h + 32 * k + l;
                o[idx] = ds[idx / 16] * f32::from(i16::from(qk) - 32);
            }
        }
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
        block_q4_0(&b, &mut o);
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
