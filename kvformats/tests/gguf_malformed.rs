//! Malformed GGUF input must give an error that says what is wrong, never a panic or a huge
//! allocation. Files are built byte by byte here, independently of the reader under test.

use kvformats::gguf::{dequantize, GgmlType, GgufError, GgufFile, GgufValue};

/// Writes GGUF files field by field.
struct Builder {
    version: u32,
    n_kv: u64,
    kv: Vec<u8>,
    n_tensors: u64,
    infos: Vec<u8>,
    data: Vec<u8>,
    alignment: usize,
}

fn put_str(buf: &mut Vec<u8>, s: &[u8]) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s);
}

impl Builder {
    fn new() -> Builder {
        Builder { version: 3, n_kv: 0, kv: Vec::new(), n_tensors: 0, infos: Vec::new(), data: Vec::new(), alignment: 32 }
    }

    /// A metadata pair with a raw (type id, encoded value).
    fn kv_raw(mut self, key: &[u8], type_id: u32, value: &[u8]) -> Builder {
        put_str(&mut self.kv, key);
        self.kv.extend_from_slice(&type_id.to_le_bytes());
        self.kv.extend_from_slice(value);
        self.n_kv += 1;
        self
    }

    fn kv_u32(self, key: &str, v: u32) -> Builder {
        self.kv_raw(key.as_bytes(), 4, &v.to_le_bytes())
    }

    fn kv_str(self, key: &str, v: &str) -> Builder {
        let mut b = Vec::new();
        put_str(&mut b, v.as_bytes());
        self.kv_raw(key.as_bytes(), 8, &b)
    }

    /// A tensor info with explicit offset; no data is written.
    fn tensor_info(mut self, name: &str, dims: &[u64], type_id: u32, offset: u64) -> Builder {
        put_str(&mut self.infos, name.as_bytes());
        self.infos.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            self.infos.extend_from_slice(&d.to_le_bytes());
        }
        self.infos.extend_from_slice(&type_id.to_le_bytes());
        self.infos.extend_from_slice(&offset.to_le_bytes());
        self.n_tensors += 1;
        self
    }

    /// A tensor whose data is appended (aligned) to the data section.
    fn tensor(mut self, name: &str, dims: &[u64], type_id: u32, bytes: &[u8]) -> Builder {
        let offset = self.data.len() as u64;
        self.data.extend_from_slice(bytes);
        while !self.data.len().is_multiple_of(self.alignment) {
            self.data.push(0);
        }
        self.tensor_info(name, dims, type_id, offset)
    }

    fn build(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.n_tensors.to_le_bytes());
        out.extend_from_slice(&self.n_kv.to_le_bytes());
        out.extend_from_slice(&self.kv);
        out.extend_from_slice(&self.infos);
        while !out.len().is_multiple_of(self.alignment) {
            out.push(0);
        }
        out.extend_from_slice(&self.data);
        out
    }
}

/// One Q8_0 block: scale 0.25 (f16 0x3400), quants -16..16.
fn q8_0_block() -> Vec<u8> {
    let mut b = vec![0x00, 0x34];
    b.extend((0..32).map(|i| (i as i8 - 16) as u8));
    b
}

fn valid() -> Builder {
    let f32s: Vec<u8> = [1.5f32, -2.0, 0.0, 3.25].iter().flat_map(|x| x.to_le_bytes()).collect();
    Builder::new().kv_str("general.architecture", "llama").kv_u32("llama.block_count", 2).tensor("w.q8", &[32, 1], 8, &q8_0_block()).tensor(
        "w.f32",
        &[4],
        0,
        &f32s,
    )
}

fn parse(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
    GgufFile::from_bytes(bytes, "test.gguf")
}

/// Asserts that parsing fails and that the message contains every one of `needles`.
fn expect_error(bytes: Vec<u8>, needles: &[&str]) -> String {
    let msg = match parse(bytes) {
        Ok(_) => panic!("parsed, but expected an error mentioning {needles:?}"),
        Err(e) => e.to_string(),
    };
    for n in needles {
        assert!(msg.contains(n), "error {msg:?} does not mention {n:?}");
    }
    assert!(msg.contains("test.gguf"), "error {msg:?} does not name the file");
    msg
}

#[test]
fn valid_file_parses_and_dequantises() {
    let file = parse(valid().build()).expect("valid file");
    assert_eq!(file.version, 3);
    assert_eq!(file.architecture().expect("arch"), "llama");
    assert_eq!(file.meta("llama.block_count"), Some(&GgufValue::U32(2)));
    let q = file.dequantize_f32("w.q8").expect("q8");
    let want: Vec<f32> = (0..32).map(|i| (i as f32 - 16.0) * 0.25).collect();
    assert_eq!(q, want);
    assert_eq!(file.dequantize_f32("w.f32").expect("f32"), [1.5, -2.0, 0.0, 3.25]);
    assert_eq!(file.tensor_info("w.q8").expect("info").torch_shape(), [1, 32]);
    let e = file.dequantize_f32("nope").expect_err("no such tensor").to_string();
    assert!(e.contains("nope"), "{e}");
}

#[test]
fn every_prefix_is_an_error_until_the_data_is_complete() {
    let bytes = valid().build();
    let file = parse(bytes.clone()).expect("valid");
    let needed = file.tensors.iter().map(|t| file.data_offset() + t.offset + t.n_bytes).max().expect("tensors");
    for len in 0..bytes.len() {
        let r = parse(bytes[..len].to_vec());
        if (len as u64) < needed {
            let e = r.err().unwrap_or_else(|| panic!("prefix of {len} bytes parsed"));
            let msg = e.to_string();
            assert!(msg.contains("test.gguf"), "{msg}");
            // Cuts inside the header say what was being read; cuts inside the data name the tensor.
            if (len as u64) >= file.data_offset() {
                assert!(msg.contains("beyond the end of the file"), "{len}: {msg}");
            } else {
                let known = ["truncated", "impossible", "beyond the end of the file"];
                assert!(known.iter().any(|k| msg.contains(k)), "{len}: {msg}");
            }
        } else {
            assert!(r.is_ok(), "prefix of {len} bytes failed: {:?}", r.err());
        }
    }
}

#[test]
fn bad_magic_and_versions() {
    let mut b = valid().build();
    b[..4].copy_from_slice(b"GGML");
    expect_error(b, &["not a GGUF file"]);
    expect_error(Vec::new(), &["truncated", "magic"]);
    for (version, hint) in [(1u32, "v1"), (4, "supported versions are 2 and 3"), (3u32.swap_bytes(), "big-endian")] {
        let mut v = valid();
        v.version = version;
        expect_error(v.build(), &["unsupported GGUF version", hint]);
    }
    let mut v = valid();
    v.version = 2;
    assert_eq!(parse(v.build()).expect("v2").version, 2);
}

#[test]
fn absurd_counts_and_lengths() {
    // Header counts far beyond what the file can hold.
    let mut b = valid().build();
    b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    expect_error(b, &["metadata count", "impossible"]);
    let mut b = valid().build();
    b[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
    expect_error(b, &["tensor count", "impossible"]);

    // A key claiming 2^60 bytes.
    let mut bytes = Builder::new().build();
    bytes[16..24].copy_from_slice(&1u64.to_le_bytes());
    bytes.truncate(24);
    bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
    bytes.extend_from_slice(&[b'x'; 40]);
    expect_error(bytes, &["truncated", "key of metadata pair 0"]);

    // A string value claiming 1 TB.
    let mut v = Vec::new();
    v.extend_from_slice(&(1u64 << 40).to_le_bytes());
    v.extend_from_slice(b"short");
    expect_error(Builder::new().kv_raw(b"s", 8, &v).build(), &["truncated", "\"s\""]);

    // Arrays with 2^60 elements, of bytes and of strings.
    for elem in [0u32, 8, 9] {
        let mut v = elem.to_le_bytes().to_vec();
        v.extend_from_slice(&(1u64 << 60).to_le_bytes());
        v.extend_from_slice(&[0u8; 64]);
        expect_error(Builder::new().kv_raw(b"arr", 9, &v).build(), &["element count", "\"arr\"", "impossible"]);
    }

    // Arrays nested 100 deep.
    let mut v = Vec::new();
    for _ in 0..100 {
        v.extend_from_slice(&9u32.to_le_bytes());
        v.extend_from_slice(&1u64.to_le_bytes());
    }
    v.extend_from_slice(&[0u8; 16]);
    expect_error(Builder::new().kv_raw(b"deep", 9, &v).build(), &["nested deeper"]);
}

#[test]
fn bad_values_and_keys() {
    expect_error(Builder::new().kv_raw(b"k", 13, &[0; 8]).build(), &["unknown value type id 13", "\"k\""]);
    let mut v = 77u32.to_le_bytes().to_vec();
    v.extend_from_slice(&1u64.to_le_bytes());
    expect_error(Builder::new().kv_raw(b"arr", 9, &v).build(), &["unknown value type id 77"]);
    expect_error(Builder::new().kv_raw(b"flag", 7, &[2]).build(), &["bool", "\"flag\""]);
    expect_error(Builder::new().kv_raw(b"bad\xff", 4, &[0; 4]).build(), &["UTF-8", "key of metadata pair 0"]);
    let mut s = Vec::new();
    put_str(&mut s, b"\xc3\x28");
    expect_error(Builder::new().kv_raw(b"str", 8, &s).build(), &["UTF-8", "\"str\""]);
    expect_error(valid().kv_u32("llama.block_count", 3).build(), &["appears twice", "llama.block_count"]);
    expect_error(valid().kv_u32("general.alignment", 48).build(), &["general.alignment", "power of two"]);
    expect_error(valid().kv_str("general.alignment", "32").build(), &["general.alignment", "power of two"]);
}

#[test]
fn bad_tensors_are_named() {
    let base = || Builder::new().kv_str("general.architecture", "llama");
    // Beyond EOF: a 1 TB tensor, and a small tensor at a far offset.
    expect_error(base().tensor_info("huge", &[1 << 20, 1 << 20, 1 << 18], 0, 0).build(), &["\"huge\"", "beyond the end"]);
    expect_error(base().tensor_info("far", &[32], 0, 1 << 40).build(), &["\"far\"", "beyond the end"]);
    // Element count overflow, too many dims, unknown type, block size mismatch, unaligned offset.
    expect_error(base().tensor_info("ovf", &[1 << 32, 1 << 32, 1 << 2], 0, 0).build(), &["\"ovf\"", "overflows"]);
    expect_error(base().tensor_info("d5", &[1, 1, 1, 1, 1], 0, 0).build(), &["\"d5\"", "5 dimensions"]);
    expect_error(base().tensor("odd", &[4], 99, &[0; 32]).build(), &["\"odd\"", "unknown ggml type id 99"]);
    expect_error(base().tensor("part", &[16], 8, &[0; 34]).build(), &["\"part\"", "block size 32"]);
    expect_error(base().tensor_info("mis", &[4], 0, 4).build(), &["\"mis\"", "alignment"]);
    // Overlap and duplicates.
    let f32s = [0u8; 64];
    let overlapping = base().tensor("a", &[16], 0, &f32s).tensor_info("b", &[8], 0, 32);
    expect_error(overlapping.build(), &["\"a\"", "\"b\"", "overlap"]);
    let dup = base().tensor("same", &[4], 0, &f32s[..16]).tensor("same", &[4], 0, &f32s[..16]);
    expect_error(dup.build(), &["\"same\"", "appears twice"]);
}

#[test]
fn unsupported_type_opens_but_does_not_dequantise() {
    // Q2_K (id 10) has a known size, so the file opens; dequantising names the tensor and type.
    let file = parse(valid().tensor("w.q2k", &[256], 10, &[0u8; 84]).build()).expect("file with Q2_K opens");
    assert_eq!(file.tensor_info("w.q2k").expect("info").ggml_type, GgmlType::Q2_K);
    assert_eq!(file.tensor_bytes("w.q2k").expect("bytes").len(), 84);
    let e = file.dequantize_f32("w.q2k").expect_err("Q2_K unsupported").to_string();
    assert!(e.contains("w.q2k") && e.contains("Q2_K") && e.contains("test.gguf"), "{e}");
    let e = dequantize(GgmlType::Other(20), &[0u8; 18], 32, &mut [0f32; 32]).expect_err("IQ4_NL").to_string();
    assert!(e.contains("IQ4_NL"), "{e}");
}

#[test]
fn random_corruption_never_panics() {
    let bytes = valid()
        .kv_raw(b"arr", 9, &{
            let mut v = 8u32.to_le_bytes().to_vec();
            v.extend_from_slice(&2u64.to_le_bytes());
            put_str(&mut v, b"one");
            put_str(&mut v, b"two");
            v
        })
        .tensor("w.q4k", &[256], 12, &[0x11; 144])
        .tensor("w.q6k", &[256], 14, &[0x22; 210])
        .build();
    // xorshift64*: deterministic, no extra dependency.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let (mut ok, mut err) = (0, 0);
    for _ in 0..20_000 {
        let mut b = bytes.clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() % b.len() as u64) as usize;
            b[i] = match next() % 3 {
                0 => next() as u8,
                1 => 0xff,
                _ => b[i] ^ (1 << (next() % 8)),
            };
        }
        match parse(b) {
            Ok(f) => {
                ok += 1;
                for t in &f.tensors {
                    if t.ggml_type.can_dequantize() {
                        let v = f.dequantize_f32(&t.name).expect("checked tensor dequantises");
                        assert_eq!(v.len() as u64, t.n_elements());
                    }
                }
            }
            Err(e) => {
                err += 1;
                assert!(e.to_string().contains("test.gguf"));
            }
        }
    }
    println!("random corruption: {ok} parsed, {err} rejected");
    assert!(ok > 0 && err > 0);
}
