//! Parsing a GGUF file's header: the metadata key/value pairs and the tensor infos, each length
//! and offset checked against the bytes that remain before it is used or allocated.

use super::*;

/// What the header parse yields.
pub(super) struct Header {
    pub(super) version: u32,
    pub(super) metadata: BTreeMap<String, GgufValue>,
    pub(super) tensors: Vec<GgufTensorInfo>,
    pub(super) data_offset: u64,
    pub(super) alignment: u64,
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
        GgufError::Truncated { file: self.file.to_string(), offset: self.offset(), what: what(), needed, available: self.remaining() }
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let slice = usize::try_from(n).ok().and_then(|n| self.pos.checked_add(n)).and_then(|end| self.bytes.get(self.pos..end).map(|s| (s, end)));
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
            Err(_) => Err(GgufError::BadUtf8 { file: self.file.to_string(), offset: start, what: what() }),
        }
    }

    /// Reads one value of type `type_id`; `what` describes it for errors.
    fn value(&mut self, type_id: u32, depth: usize, what: &dyn Fn() -> String) -> Result<GgufValue> {
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
            _ => return Err(GgufError::BadValueType { file: self.file.to_string(), offset: self.offset().saturating_sub(4), what: what(), type_id }),
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
            return Err(bad_count(format!("arrays nested deeper than {MAX_ARRAY_DEPTH} levels")));
        }
        let min_size = min_value_size(elem_type).ok_or_else(|| GgufError::BadValueType {
            file: self.file.to_string(),
            offset: type_offset,
            what: format!("element of {}", what()),
            type_id: elem_type,
        })?;
        let remaining = self.remaining();
        if count > remaining / min_size {
            return Err(bad_count(format!("{count} elements of at least {min_size} bytes each do not fit in the {remaining} bytes left")));
        }
        // The count is bounded by the file size now; still grow gradually so that a large array of
        // small items does not reserve 32 bytes per element up front.
        let mut items = Vec::with_capacity(usize::try_from(count.min(1 << 16)).unwrap_or(0));
        for i in 0..count {
            items.push(self.value(elem_type, depth + 1, &|| format!("element {i} of {}", what()))?);
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

pub(super) fn parse(bytes: &[u8], file: &str) -> Result<Header> {
    let mut r = Reader { bytes, pos: 0, file };
    let magic: [u8; 4] = r.array(&|| "magic".into())?;
    if magic != GGUF_MAGIC {
        return Err(GgufError::BadMagic { file: file.to_string(), found: magic });
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
        1 => return Err(GgufError::UnsupportedVersion { file: file.to_string(), version, hint: "GGUF v1 is obsolete; supported versions are 2 and 3" }),
        _ => return Err(GgufError::UnsupportedVersion { file: file.to_string(), version, hint: "supported versions are 2 and 3" }),
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
            reason: format!("needs at least {MIN_KV_BYTES} bytes each but only {remaining} bytes follow"),
        });
    }
    if tensor_count > remaining / MIN_TENSOR_INFO_BYTES {
        return Err(GgufError::BadCount {
            file: file.to_string(),
            offset: tensor_count_offset,
            what: "tensor count".into(),
            count: tensor_count,
            reason: format!("needs at least {MIN_TENSOR_INFO_BYTES} bytes each but only {remaining} bytes follow"),
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
            return Err(GgufError::DuplicateKey { file: file.to_string(), key, offset: key_offset });
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
            reason: format!("needs at least {MIN_TENSOR_INFO_BYTES} bytes each but only {remaining} bytes follow the metadata"),
        });
    }
    let mut tensors: Vec<GgufTensorInfo> = Vec::with_capacity(usize::try_from(tensor_count).unwrap_or(0));
    let mut seen: HashMap<String, ()> = HashMap::new();
    for i in 0..tensor_count {
        let info_offset = r.offset();
        let name = r.string(&|| format!("name of tensor {i}"))?;
        let bad = |reason: String| GgufError::BadTensor { file: file.to_string(), name: name.clone(), reason };
        let n_dims_offset = r.offset();
        let n_dims = r.u32(&|| format!("dimension count of tensor {name:?}"))?;
        if n_dims as usize > MAX_DIMS {
            return Err(bad(format!("{n_dims} dimensions at byte {n_dims_offset}; ggml allows at most {MAX_DIMS}")));
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
        let n_elements = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).ok_or_else(|| bad(format!("element count of dims {dims:?} overflows")))?;
        let inner = dims.first().copied().unwrap_or(1);
        if !inner.is_multiple_of(block as u64) {
            return Err(bad(format!("innermost dimension {inner} is not a multiple of the {} block size {block}", ggml_type.name())));
        }
        let n_bytes = (n_elements / block as u64).checked_mul(type_size as u64).ok_or_else(|| bad(format!("byte size of dims {dims:?} overflows")))?;
        if !offset.is_multiple_of(alignment) {
            return Err(bad(format!("data offset {offset} is not a multiple of the alignment {alignment}")));
        }
        if seen.insert(name.clone(), ()).is_some() {
            return Err(GgufError::DuplicateTensor { file: file.to_string(), name, offset: info_offset });
        }
        tensors.push(GgufTensorInfo { name, dims, ggml_type, offset, n_bytes });
    }

    let header_end = r.offset();
    let data_offset = header_end.checked_next_multiple_of(alignment).ok_or_else(|| GgufError::BadMetadata {
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

    Ok(Header { version, metadata, tensors, data_offset, alignment })
}
