//! The safetensors header and `model.safetensors.index.json` readers, without libtorch, so that
//! every length, shape and offset a checkpoint claims is checked against the file (with checked
//! arithmetic, before anything is allocated or sliced) in code that can be fuzzed; `kvcore` only
//! turns the byte ranges returned here into tensors.
//!
//! Format: an 8-byte little-endian header length N, N bytes of UTF-8 JSON (an object: tensor name
//! → `{"dtype", "shape", "data_offsets": [begin, end]}`, plus an optional `__metadata__` object of
//! strings), then the data section. Offsets are relative to the data section. As in the reference
//! implementation, the tensors must tile the data section exactly: sorted by offset, each begins
//! where the previous one ends, the first at 0 and the last at the end of the file.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Largest header accepted (the reference implementation's limit).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// What is wrong, where: `file` is the path or label given, `key` the JSON key or byte range
/// concerned (`(header length)`, `tensor "x".shape`, `weight_map`, `(file)`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {key}: {problem}")]
pub struct SafetensorsError {
    pub file: String,
    pub key: String,
    pub problem: String,
}

type Result<T> = std::result::Result<T, SafetensorsError>;

/// A safetensors element type.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dtype {
    BOOL,
    F4,
    F6_E2M3,
    F6_E3M2,
    U8,
    I8,
    F8_E5M2,
    F8_E4M3,
    F8_E8M0,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    C64,
    F64,
    I64,
    U64,
}

const DTYPES: &[(Dtype, &str, u64)] = &[
    (Dtype::BOOL, "BOOL", 8),
    (Dtype::F4, "F4", 4),
    (Dtype::F6_E2M3, "F6_E2M3", 6),
    (Dtype::F6_E3M2, "F6_E3M2", 6),
    (Dtype::U8, "U8", 8),
    (Dtype::I8, "I8", 8),
    (Dtype::F8_E5M2, "F8_E5M2", 8),
    (Dtype::F8_E4M3, "F8_E4M3", 8),
    (Dtype::F8_E8M0, "F8_E8M0", 8),
    (Dtype::I16, "I16", 16),
    (Dtype::U16, "U16", 16),
    (Dtype::F16, "F16", 16),
    (Dtype::BF16, "BF16", 16),
    (Dtype::I32, "I32", 32),
    (Dtype::U32, "U32", 32),
    (Dtype::F32, "F32", 32),
    (Dtype::C64, "C64", 64),
    (Dtype::F64, "F64", 64),
    (Dtype::I64, "I64", 64),
    (Dtype::U64, "U64", 64),
];

impl Dtype {
    /// The dtype spelled `name` in a header (`F32`, `BF16`, ...).
    pub fn from_name(name: &str) -> Option<Dtype> {
        DTYPES.iter().find(|d| d.1 == name).map(|d| d.0)
    }

    /// The header spelling.
    pub fn name(&self) -> &'static str {
        DTYPES.iter().find(|d| d.0 == *self).map_or("?", |d| d.1)
    }

    /// Bits per element (4 and 6 for the sub-byte float types).
    pub fn bits(&self) -> u64 {
        DTYPES.iter().find(|d| d.0 == *self).map_or(8, |d| d.2)
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One tensor of the header, validated against the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: Dtype,
    /// Outermost dimension first (torch order).
    pub shape: Vec<u64>,
    /// Byte range relative to the data section; `end - begin` is exactly the shape's size.
    pub begin: u64,
    pub end: u64,
}

impl TensorEntry {
    /// Element count (checked against the byte size when the header was read).
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).unwrap_or(u64::MAX)
    }
}

/// A parsed and validated header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Absolute offset of the data section (8 + the header length).
    pub data_start: u64,
    /// Bytes in the data section (the rest of the file).
    pub data_len: u64,
    /// `__metadata__`, when present.
    pub metadata: BTreeMap<String, String>,
    /// Sorted by name.
    pub tensors: Vec<TensorEntry>,
}

impl Header {
    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.binary_search_by(|t| t.name.as_str().cmp(name)).ok().and_then(|i| self.tensors.get(i))
    }

    /// The bytes of `t` inside `file` (the bytes the header was read from), re-checked rather than
    /// trusted; `label` names the file in the error.
    pub fn tensor_data<'a>(&self, file: &'a [u8], t: &TensorEntry, label: &str) -> Result<&'a [u8]> {
        let start = self.data_start.checked_add(t.begin);
        let end = self.data_start.checked_add(t.end);
        let range = start.zip(end).and_then(|(s, e)| usize::try_from(s).ok().zip(usize::try_from(e).ok()));
        range.and_then(|(s, e)| file.get(s..e)).ok_or_else(|| SafetensorsError {
            file: label.to_string(),
            key: format!("tensor {:?}.data_offsets", t.name),
            problem: format!("bytes {}..{} of the data section lie outside the {}-byte file", t.begin, t.end, file.len()),
        })
    }
}

/// The JSON object's entries in file order, keeping duplicates so they can be refused.
struct Entries(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> std::result::Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, serde_json::Value>()? {
                    out.push(entry);
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Reads and validates the header of a safetensors file held in `bytes` (the whole file, or a
/// memory map of it); `label` names the file in errors.
pub fn read_header(bytes: &[u8], label: &str) -> Result<Header> {
    let fail = |key: &str, problem: String| SafetensorsError { file: label.to_string(), key: key.to_string(), problem };
    let file_len = bytes.len() as u64;
    let Some(len_bytes) = bytes.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) else {
        return Err(fail("(header length)", format!("the file is {file_len} bytes; a safetensors file starts with an 8-byte header length")));
    };
    let n = u64::from_le_bytes(len_bytes);
    if n > MAX_HEADER_BYTES {
        return Err(fail("(header length)", format!("bytes 0..8 give a header of {n} bytes, over the {MAX_HEADER_BYTES}-byte limit")));
    }
    let data_start = n + 8; // n <= MAX_HEADER_BYTES, so this cannot overflow
    if data_start > file_len {
        return Err(fail("(header length)", format!("bytes 0..8 give a header of {n} bytes but only {} bytes follow", file_len - 8)));
    }
    let data_len = file_len - data_start;
    let header_bytes = usize::try_from(data_start).ok().and_then(|e| bytes.get(8..e)).unwrap_or_default();
    let text = std::str::from_utf8(header_bytes).map_err(|e| fail("(header)", format!("not valid UTF-8 at byte {}", 8 + e.valid_up_to())))?;
    if !text.starts_with('{') {
        return Err(fail("(header)", "the header (byte 8 on) does not start with '{'".into()));
    }
    let Entries(entries) = serde_json::from_str(text).map_err(|e| fail("(header)", format!("not valid JSON: {e}")))?;

    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(entries.len().min(1 << 16));
    let mut seen = BTreeSet::new();
    for (name, value) in entries {
        if !seen.insert(name.clone()) {
            return Err(fail(&format!("{name:?}"), "appears twice in the header".into()));
        }
        if name == "__metadata__" {
            match value {
                serde_json::Value::Null => {}
                serde_json::Value::Object(map) => {
                    for (k, v) in map {
                        match v {
                            serde_json::Value::String(s) => {
                                metadata.insert(k, s);
                            }
                            other => return Err(fail(&format!("__metadata__.{k}"), format!("expected a string, got {}", json_kind(&other)))),
                        }
                    }
                }
                other => return Err(fail("__metadata__", format!("expected an object of strings, got {}", json_kind(&other)))),
            }
            continue;
        }
        tensors.push(tensor_entry(&name, &value, data_len, label)?);
    }

    // The tensors must tile the data section: sorted by offset, no gaps, no overlaps.
    let mut order: Vec<&TensorEntry> = tensors.iter().collect();
    order.sort_by(|a, b| (a.begin, a.end, &a.name).cmp(&(b.begin, b.end, &b.name)));
    let mut at = 0u64;
    let mut previous: Option<&str> = None;
    for t in order {
        if t.begin != at {
            let problem = match previous {
                Some(p) if t.begin < at => format!("begins at data byte {}, inside tensor {p:?} (which ends at {at})", t.begin),
                Some(p) => format!("begins at data byte {} but tensor {p:?} ends at {at}, leaving data bytes {at}..{} unused", t.begin, t.begin),
                None => format!("begins at data byte {}, leaving data bytes 0..{} unused", t.begin, t.begin),
            };
            return Err(fail(&format!("tensor {:?}.data_offsets", t.name), problem));
        }
        at = t.end;
        previous = Some(&t.name);
    }
    if at != data_len {
        return Err(fail(
            "(data)",
            format!("the tensors end at data byte {at} but the data section holds {data_len} bytes (absolute {data_start}..{file_len})"),
        ));
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Header { data_start, data_len, metadata, tensors })
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a bool",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// One tensor's entry, checked against the data section's length.
fn tensor_entry(name: &str, value: &serde_json::Value, data_len: u64, label: &str) -> Result<TensorEntry> {
    let fail = |field: &str, problem: String| SafetensorsError {
        file: label.to_string(),
        key: if field.is_empty() { format!("tensor {name:?}") } else { format!("tensor {name:?}.{field}") },
        problem,
    };
    let Some(obj) = value.as_object() else {
        return Err(fail("", format!("expected an object with dtype, shape and data_offsets, got {}", json_kind(value))));
    };
    let dtype_name = match obj.get("dtype") {
        Some(serde_json::Value::String(s)) => s.as_str(),
        Some(other) => return Err(fail("dtype", format!("expected a string, got {}", json_kind(other)))),
        None => return Err(fail("dtype", "missing".into())),
    };
    let dtype = Dtype::from_name(dtype_name).ok_or_else(|| {
        let known: Vec<&str> = DTYPES.iter().map(|d| d.1).collect();
        fail("dtype", format!("unknown dtype {dtype_name:?} (known: {})", known.join(" ")))
    })?;
    let uints = |field: &str| -> Result<Vec<u64>> {
        match obj.get(field) {
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| v.as_u64().ok_or_else(|| fail(field, format!("item {i} is {v}, expected a non-negative integer"))))
                .collect(),
            Some(other) => Err(fail(field, format!("expected an array of non-negative integers, got {}", json_kind(other)))),
            None => Err(fail(field, "missing".into())),
        }
    };
    let shape = uints("shape")?;
    let offsets = uints("data_offsets")?;
    let [begin, end] = offsets[..] else {
        return Err(fail("data_offsets", format!("expected [begin, end], got {} numbers", offsets.len())));
    };
    if begin > end {
        return Err(fail("data_offsets", format!("begin {begin} is after end {end}")));
    }
    if end > data_len {
        return Err(fail("data_offsets", format!("data bytes {begin}..{end} lie beyond the {data_len}-byte data section")));
    }
    let n_elements = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).ok_or_else(|| fail("shape", format!("element count of {shape:?} overflows")))?;
    let bits = n_elements.checked_mul(dtype.bits()).ok_or_else(|| fail("shape", format!("bit size of {shape:?} {dtype} overflows")))?;
    if bits % 8 != 0 {
        return Err(fail("shape", format!("{shape:?} {dtype} is {bits} bits, not a whole number of bytes")));
    }
    if end - begin != bits / 8 {
        return Err(fail("data_offsets", format!("{begin}..{end} is {} bytes but {shape:?} {dtype} needs {}", end - begin, bits / 8)));
    }
    Ok(TensorEntry { name: name.to_string(), dtype, shape, begin, end })
}

/// The shard file names a `model.safetensors.index.json` (`text`, named `label` in errors) lists:
/// sorted, each once, refusing any name that would leave the model directory. Errors on the
/// whole file have key `(file)`; errors on the map have key `weight_map`.
pub fn shard_names_from_json(text: &str, label: &str) -> Result<Vec<String>> {
    let fail = |key: &str, problem: String| SafetensorsError { file: label.to_string(), key: key.to_string(), problem };
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| fail("(file)", format!("not valid JSON: {e}")))?;
    let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| fail("weight_map", "missing or not an object".into()))?;
    let mut shards: Vec<String> = map.values().filter_map(|s| s.as_str().map(String::from)).collect();
    shards.sort();
    shards.dedup();
    if let Some(s) = shards.iter().find(|s| s.contains('/') || s.contains("..")) {
        return Err(fail("weight_map", format!("shard name `{s}` leaves the directory")));
    }
    Ok(shards)
}
