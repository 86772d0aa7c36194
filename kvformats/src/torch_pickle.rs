//! The pickle inside a PyTorch `torch.save` file (`<archive>/data.pkl`), read without Python:
//! a small interpreter that accepts only what a state dict holds — a `dict`/`OrderedDict` of name →
//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`, storages as persistent
//! ids naming `<archive>/data/<key>` — and refuses anything else (no global other than those two is
//! ever called). Bounded: nesting deeper than [`MAX_NESTING`] and memo copies beyond
//! [`MAX_COPIED_VALUES`] are refused, so a hostile file cannot exhaust the stack or memory. No
//! libtorch here (fuzzed); kvcore's `ssm::pth` reads the zip and builds the tensors.

use std::collections::HashMap;

/// Containers nested deeper than this are refused (a state dict needs about five levels).
pub const MAX_NESTING: usize = 32;

/// Values copied out of the memo (GET opcodes) over a whole pickle, at most: repeated GETs of a
/// memoised container could otherwise double memory with each opcode.
pub const MAX_COPIED_VALUES: usize = 1 << 22;

/// The tensors of a state-dict pickle, in file order.
pub fn read_state_dict(pickle: &[u8]) -> Result<Vec<(String, TensorRef)>, String> {
    let root = Unpickler::new(pickle).run()?;
    let Value::Dict(items) = root else { return Err("the top-level object is not a dict of tensors".into()) };
    let mut tensors = Vec::with_capacity(items.len());
    for (name, value) in items {
        let Value::Str(name) = name else { return Err(format!("key {} is not a string", short(&name))) };
        let Value::Tensor(t) = value else { return Err(format!("`{name}` is not a tensor")) };
        tensors.push((name, t));
    }
    Ok(tensors)
}

/// A value for an error message, cut after about 200 bytes (formatting stops there).
fn short(v: &Value) -> String {
    struct Limited(String);
    impl std::fmt::Write for Limited {
        fn write_str(&mut self, part: &str) -> std::fmt::Result {
            if self.0.len() + part.len() > 200 {
                return Err(std::fmt::Error);
            }
            self.0.push_str(part);
            Ok(())
        }
    }
    let mut out = Limited(String::new());
    match std::fmt::write(&mut out, format_args!("{v:?}")) {
        Ok(()) => out.0,
        Err(_) => out.0 + "...",
    }
}

/// Nodes in `v` (itself included), counting no further than `cap`.
fn count_nodes(v: &Value, cap: usize) -> usize {
    let mut n = 1;
    let children: &[Value] = match v {
        Value::Tuple(items) | Value::List(items) => items,
        Value::Dict(pairs) => {
            for (k, x) in pairs {
                if n >= cap {
                    break;
                }
                n += count_nodes(k, cap - n) + count_nodes(x, cap.saturating_sub(n));
            }
            return n;
        }
        _ => return 1,
    };
    for c in children {
        if n >= cap {
            break;
        }
        n += count_nodes(c, cap - n);
    }
    n
}

/// Whether `v` nests containers more than `limit` deep (looks no deeper than that).
fn nests_deeper_than(v: &Value, limit: usize) -> bool {
    let children: Box<dyn Iterator<Item = &Value>> = match v {
        Value::Tuple(items) | Value::List(items) => Box::new(items.iter()),
        Value::Dict(pairs) => Box::new(pairs.iter().flat_map(|(k, x)| [k, x])),
        _ => return false,
    };
    if limit == 0 {
        return true;
    }
    for c in children {
        if nests_deeper_than(c, limit - 1) {
            return true;
        }
    }
    false
}

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

/// The element type of a storage (`torch.<Type>Storage`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageDtype {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl StorageDtype {
    fn from_class(class: &str) -> Option<Self> {
        Some(match class {
            "FloatStorage" => Self::F32,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "DoubleStorage" => Self::F64,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }
}

/// A storage the pickle refers to: its record in the archive and its length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageRef {
    pub dtype: StorageDtype,
    /// The record name under `<archive>/data/`.
    pub key: String,
    /// Elements of `dtype`.
    pub numel: i64,
}

/// A tensor as a strided view of a storage (bounds checked against the storage's length).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: i64,
    pub size: Vec<i64>,
    pub stride: Vec<i64>,
}

/// The pickle interpreter's state over one `data.pkl`.
struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    /// Values copied into or out of the memo so far (bounded by [`MAX_COPIED_VALUES`]).
    copied: usize,
}

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8]) -> Self {
        Unpickler { data, pos: 0, stack: vec![], marks: vec![], memo: HashMap::new(), copied: 0 }
    }

    /// A copy of `v` (memo PUT and GET), counted in `copied` against [`MAX_COPIED_VALUES`].
    fn copy_counted(copied: &mut usize, v: &Value) -> std::result::Result<Value, String> {
        let left = MAX_COPIED_VALUES - *copied;
        let n = count_nodes(v, left + 1);
        if n > left {
            return Err(format!("the pickle copies more than {MAX_COPIED_VALUES} values through its memo (not a state dict)"));
        }
        *copied += n;
        Ok(v.clone())
    }

    /// Fails when putting `v` into a container would nest deeper than [`MAX_NESTING`].
    fn check_nesting(v: &Value) -> std::result::Result<(), String> {
        if nests_deeper_than(v, MAX_NESTING - 1) {
            return Err(format!("containers nested more than {MAX_NESTING} deep (not a state dict)"));
        }
        Ok(())
    }

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
                    let top = self.stack.last().ok_or("memo of an empty stack")?;
                    let v = Self::copy_counted(&mut self.copied, top)?;
                    self.memo.insert(idx, v);
                }
                b'h' | b'j' => {
                    let idx = if op == b'h' { self.u8()? as u32 } else { self.u32()? };
                    let v = self.memo.get(&idx).ok_or_else(|| format!("memo {idx} is not set"))?;
                    let v = Self::copy_counted(&mut self.copied, v)?;
                    self.stack.push(v)
                }
                b't' => {
                    let items = self.pop_mark()?;
                    items.iter().try_for_each(Self::check_nesting)?;
                    self.stack.push(Value::Tuple(items))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.iter().try_for_each(Self::check_nesting)?;
                    items.reverse();
                    self.stack.push(Value::Tuple(items))
                }
                b'a' => {
                    let v = self.pop()?;
                    Self::check_nesting(&v)?;
                    match self.top()? {
                        Value::List(l) => l.push(v),
                        _ => return Err("APPEND to a non-list".into()),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    items.iter().try_for_each(Self::check_nesting)?;
                    match self.top()? {
                        Value::List(l) => l.extend(items),
                        _ => return Err("APPENDS to a non-list".into()),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    Self::check_nesting(&k)?;
                    Self::check_nesting(&v)?;
                    match self.top()? {
                        Value::Dict(d) => d.push((k, v)),
                        _ => return Err("SETITEM on a non-dict".into()),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    items.iter().try_for_each(Self::check_nesting)?;
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
                        return Err(format!("BUILD with a state this reader does not apply: {}", short(&state)));
                    }
                }
                other => return Err(format!("pickle opcode 0x{other:02x} at byte {} is not supported", self.pos - 1)),
            }
        }
    }
}

/// `('storage', torch.<Type>Storage, key, location, numel)` → a storage reference.
fn persistent_load(pid: Value) -> std::result::Result<Value, String> {
    let Value::Tuple(t) = pid else { return Err(format!("persistent id {} is not a tuple", short(&pid))) };
    match t.as_slice() {
        [Value::Str(tag), Value::Global(module, class), Value::Str(key), Value::Str(_location), Value::Int(numel)] if tag == "storage" && module == "torch" => {
            let dtype = StorageDtype::from_class(class).ok_or_else(|| format!("storage type torch.{class} is not supported"))?;
            if *numel < 0 {
                return Err(format!("storage {key} has {numel} elements"));
            }
            Ok(Value::Storage(StorageRef { dtype, key: key.clone(), numel: *numel }))
        }
        _ => Err(format!("persistent id {} is not a torch storage", short(&Value::Tuple(t.clone())))),
    }
}

fn ints(v: &Value, what: &str) -> std::result::Result<Vec<i64>, String> {
    match v {
        Value::Tuple(t) | Value::List(t) => {
            t.iter().map(|x| if let Value::Int(i) = x { Ok(*i) } else { Err(format!("{what}: {} is not an integer", short(x))) }).collect()
        }
        _ => Err(format!("{what}: {} is not a tuple", short(v))),
    }
}

/// Calls a global: only `collections.OrderedDict()` and `torch._utils._rebuild_tensor_v2`.
fn reduce(callable: Value, args: Value) -> std::result::Result<Value, String> {
    let Value::Global(module, name) = &callable else { return Err(format!("REDUCE on {}", short(&callable))) };
    let Value::Tuple(args) = args else { return Err(format!("{module}.{name}: arguments are not a tuple")) };
    match (module.as_str(), name.as_str()) {
        ("collections", "OrderedDict") if args.is_empty() => Ok(Value::Dict(vec![])),
        ("torch._utils", "_rebuild_tensor_v2") if (6..=7).contains(&args.len()) => {
            let Value::Storage(storage) = &args[0] else { return Err(format!("_rebuild_tensor_v2: {} is not a storage", short(&args[0]))) };
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
                    _ => {
                        return Err(format!(
                            "tensor view (size {size:?}, stride {stride:?}, offset {offset}) reaches past its storage of {} elements",
                            storage.numel
                        ))
                    }
                }
            }
            Ok(Value::Tensor(TensorRef { storage: storage.clone(), offset, size, stride }))
        }
        _ => Err(format!("the checkpoint calls {module}.{name}, which a tensor file does not need (refused)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_other_globals_and_bad_views() {
        let call = |m: &str, n: &str| reduce(Value::Global(m.into(), n.into()), Value::Tuple(vec![Value::Str("ls".into())]));
        assert!(call("os", "system").unwrap_err().contains("refused"));
        let storage = Value::Storage(StorageRef { dtype: StorageDtype::F32, key: "0".into(), numel: 6 });
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
        let run = |data: &[u8]| Unpickler::new(data).run();
        assert!(run(b"\x80\x02}q\x00(X\x05\x00\x00\x00ab").is_err());
        assert!(run(b"\x80\x02(t0").is_err());
        assert!(run(b"\x80\x02u.").is_err());
        assert!(matches!(run(b"\x80\x02}q\x00(X\x01\x00\x00\x00aK\x07u."), Ok(Value::Dict(d)) if d.len() == 1));
    }

    #[test]
    fn hostile_nesting_and_memo_doubling_are_refused_quickly() {
        // None wrapped in 100 one-element tuples: refused at MAX_NESTING, no deep recursion.
        let mut deep = b"\x80\x02N".to_vec();
        deep.extend(std::iter::repeat_n(0x85u8, 100));
        deep.push(b'.');
        assert!(read_state_dict(&deep).unwrap_err().contains("nested"));
        // x = []; 60 times: x = (x, x) through the memo (PUT 0, GET 0, TUPLE2): 2^60 values if
        // copied naively; refused by the copy budget or the nesting bound after a few million.
        let mut laughs = b"\x80\x02]".to_vec();
        for _ in 0..60 {
            laughs.extend_from_slice(b"q\x00h\x00\x86");
        }
        laughs.push(b'.');
        let t0 = std::time::Instant::now();
        let e = read_state_dict(&laughs).unwrap_err();
        assert!(e.contains("memo") || e.contains("nested"), "{e}");
        assert!(t0.elapsed().as_secs() < 10, "took {:?}", t0.elapsed());
        // Error messages show at most about 200 bytes of a value: {[7, 7, ... 10,000 times]: 1}.
        let mut wide = b"\x80\x02}]".to_vec();
        for _ in 0..10_000 {
            wide.extend_from_slice(b"K\x07a");
        }
        wide.extend_from_slice(b"K\x01s.");
        let e = read_state_dict(&wide).unwrap_err();
        assert!(e.starts_with("key List([Int(7), Int(7)") && e.contains("...") && e.len() < 300, "{e}");
    }
}
