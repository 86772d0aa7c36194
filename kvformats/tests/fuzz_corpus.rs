//! Replays the fuzz seeds and crash reproducers (`fuzz/corpus/<target>`, `fuzz/regressions/<target>`)
//! of the GGUF, safetensors, plugin-handshake, torch-pickle and World-vocabulary targets through the same readers, so a fixed crash
//! stays fixed without cargo-fuzz; and checks what the seeds made from real files should give
//! (the SmolLM2 header, the reference safetensors writer), and that absurd sizes are refused
//! before anything is allocated.

use kvformats::gguf::{GgmlType, GgufFile};
use kvformats::plugin_header::{check_handshake, method_info, Expected};
use kvformats::safetensors_header::{read_header, shard_names_from_json, Dtype};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Every seed and reproducer of `target`, by file name.
fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(dir).join(target)) else { continue };
        for e in entries.flatten() {
            if e.path().is_file() {
                out.push((format!("{dir}/{target}/{}", e.file_name().to_string_lossy()), std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn seed(target: &str, name: &str) -> Vec<u8> {
    std::fs::read(fuzz_dir().join("corpus").join(target).join(name)).unwrap()
}

/// What the gguf fuzz target does with a whole file, minus its element budget.
fn exercise_gguf(bytes: &[u8]) {
    let Ok(f) = GgufFile::from_bytes(bytes.to_vec(), "input.gguf") else { return };
    for t in &f.tensors {
        assert_eq!(f.tensor_bytes(&t.name).unwrap().len() as u64, t.n_bytes);
        if t.n_elements() <= 1 << 22 {
            assert_eq!(f.dequantize_f32(&t.name).is_ok(), t.ggml_type.can_dequantize(), "{}", t.name);
        }
    }
    for k in f.metadata.keys() {
        let _ = (f.meta_u64(k), f.meta_f64(k), f.meta_str(k), f.meta_bool(k), f.meta_string_array(k));
    }
    if let Ok(spec) = kvformats::tokenizer::GgufTokenizerSpec::from_gguf(&f) {
        let _ = kvformats::tokenizer::tokenizer_json(&spec);
    }
}

#[test]
fn gguf_seeds_and_reproducers_do_not_panic() {
    let all = inputs("gguf");
    assert!(all.len() > 20, "the gguf corpus is missing: {} files", all.len());
    for (name, bytes) in &all {
        if bytes.starts_with(b"GGUF") {
            let r = std::panic::catch_unwind(|| exercise_gguf(bytes));
            assert!(r.is_ok(), "{name} panicked");
        }
    }
}

#[test]
fn smollm2_seeds_read_as_expected() {
    let tiny = GgufFile::from_bytes(seed("gguf", "smollm2-tiny.gguf"), "smollm2-tiny.gguf").unwrap();
    assert_eq!(tiny.architecture().unwrap(), "llama");
    assert_eq!(tiny.meta_u64("llama.block_count").unwrap(), 30);
    assert_eq!(tiny.meta_string_array("tokenizer.ggml.tokens").unwrap().len(), 64);
    let types: Vec<GgmlType> = tiny.tensors.iter().map(|t| t.ggml_type).collect();
    for ty in [GgmlType::Q8_0, GgmlType::Q4_1, GgmlType::F32] {
        assert!(types.contains(&ty), "{ty} missing from {types:?}");
    }
    for t in &tiny.tensors {
        let v = tiny.dequantize_f32(&t.name).unwrap();
        assert_eq!(v.len() as u64, t.n_elements());
        assert!(v.iter().all(|x| x.is_finite()), "{}", t.name);
    }
    // The real tensor table without its data: refused, naming the tensor and the file length.
    let e = GgufFile::from_bytes(seed("gguf", "smollm2-header-no-data.gguf"), "head.gguf").unwrap_err().to_string();
    assert!(e.starts_with("head.gguf: tensor ") && e.contains("beyond the end of the file"), "{e}");
}

#[test]
fn every_type_seed_opens_and_dequantises_when_supported() {
    for (name, bytes) in inputs("gguf").iter().filter(|(n, _)| n.contains("/tiny-")) {
        let f = GgufFile::from_bytes(bytes.clone(), name).unwrap();
        let t = &f.tensors[0];
        assert_eq!(f.dequantize_f32(&t.name).is_ok(), t.ggml_type.can_dequantize(), "{name}");
    }
}

/// A GGUF v3 with one tensor info and no data.
fn gguf_claiming(dims: &[u64], type_id: u32) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.push(b'w');
    b.extend((dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend(d.to_le_bytes());
    }
    b.extend(type_id.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.resize(b.len().next_multiple_of(32) + 64, 0);
    b
}

#[test]
fn a_gguf_claiming_a_terabyte_tensor_is_refused() {
    // 2^38 f32 values = 1 TiB; a Q8_0 tensor of 2^40 elements; a product that overflows u64.
    for (dims, ty) in [(vec![1u64 << 20, 1 << 18], 0u32), (vec![1 << 20, 1 << 20], 8), (vec![1 << 32, 1 << 32, 1 << 8], 0)] {
        let e = GgufFile::from_bytes(gguf_claiming(&dims, ty), "big.gguf").unwrap_err().to_string();
        assert!(e.starts_with("big.gguf: tensor \"w\"") && (e.contains("beyond the end") || e.contains("overflows")), "{e}");
    }
}

// --- safetensors -----------------------------------------------------------------------------

fn safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend(header.as_bytes());
    b.extend(data);
    b
}

#[test]
fn safetensors_seeds_and_reproducers_do_not_panic() {
    let all = inputs("safetensors");
    assert!(all.len() >= 5);
    for (name, bytes) in &all {
        let r = std::panic::catch_unwind(|| {
            if let Ok(h) = read_header(bytes, name) {
                for t in &h.tensors {
                    assert_eq!(h.tensor_data(bytes, t, name).unwrap().len() as u64, t.end - t.begin);
                }
            }
            if let Ok(text) = std::str::from_utf8(bytes) {
                let _ = shard_names_from_json(text, name);
            }
        });
        assert!(r.is_ok(), "{name} panicked");
    }
    for name in ["llama-like.safetensors", "ints-bool-empty.safetensors", "subbyte-fp8.safetensors", "no-tensors.safetensors"] {
        read_header(&seed("safetensors", name), name).unwrap();
    }
}

#[test]
fn the_reference_writers_file_reads_back() {
    let bytes = seed("safetensors", "reference-writer.safetensors");
    let h = read_header(&bytes, "ref").unwrap();
    assert_eq!(h.metadata.get("format").map(String::as_str), Some("pt"));
    let names: Vec<&str> = h.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["model.layers.0.mlp.up_proj.weight", "model.layers.0.self_attn.k_proj.bias", "position_ids"]);
    let up = h.tensor("model.layers.0.mlp.up_proj.weight").unwrap();
    assert_eq!((up.dtype, up.shape.as_slice()), (Dtype::F16, &[3u64, 2][..]));
    let bias = h.tensor_data(&bytes, h.tensor("model.layers.0.self_attn.k_proj.bias").unwrap(), "ref").unwrap();
    assert_eq!(bias, [1.5f32.to_le_bytes(), (-1.5f32).to_le_bytes()].concat());
    let ids = h.tensor_data(&bytes, h.tensor("position_ids").unwrap(), "ref").unwrap();
    assert_eq!(ids, [0i64, 1, 2].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>());
}

#[test]
fn malformed_safetensors_are_refused_with_the_key() {
    let cases: Vec<(Vec<u8>, &[&str])> = vec![
        (vec![1, 2, 3], &["(header length)", "3 bytes"]),
        (u64::MAX.to_le_bytes().to_vec(), &["(header length)", "over the 100000000-byte limit"]),
        ([&64u64.to_le_bytes()[..], b"{}"].concat(), &["(header length)", "only 2 bytes follow"]),
        (safetensors(r#"[1]"#, b""), &["(header)", "does not start with '{'"]),
        (safetensors("{\"a\":", b""), &["(header)", "not valid JSON"]),
        ([&2u64.to_le_bytes()[..], b"{\xff"].concat(), &["(header)", "UTF-8 at byte 9"]),
        // 1 TiB claimed by a file of a few bytes: refused from the header alone.
        (
            safetensors(r#"{"w":{"dtype":"F32","shape":[262144,1048576],"data_offsets":[0,1099511627776]}}"#, &[0; 8]),
            &["tensor \"w\".data_offsets", "beyond the 8-byte data section"],
        ),
        (
            safetensors(r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,8]}}"#, &[0; 8]),
            &["tensor \"w\".shape", "overflows"],
        ),
        (safetensors(r#"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, &[0; 8]), &["tensor \"w\".data_offsets", "needs 12"]),
        (safetensors(r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}"#, &[0; 8]), &["begin 4 is after end 0"]),
        (safetensors(r#"{"w":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}}"#, &[0]), &["12 bits"]),
        (safetensors(r#"{"w":{"dtype":"Q4","shape":[1],"data_offsets":[0,1]}}"#, &[0]), &["tensor \"w\".dtype", "unknown dtype \"Q4\""]),
        (safetensors(r#"{"w":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}"#, &[0]), &["tensor \"w\".shape", "item 0 is -1"]),
        (safetensors(r#"{"w":{"dtype":"U8","shape":[1],"data_offsets":[0]}}"#, &[0]), &["expected [begin, end]"]),
        (safetensors(r#"{"w":{"dtype":"U8","shape":[1]}}"#, &[0]), &["tensor \"w\".data_offsets", "missing"]),
        (safetensors(r#"{"w":[]}"#, &[]), &["tensor \"w\"", "expected an object"]),
        (safetensors(r#"{"__metadata__":{"a":1}}"#, &[]), &["__metadata__.a", "expected a string"]),
        (
            safetensors(r#"{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"w":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#, &[0, 0]),
            &["\"w\"", "appears twice"],
        ),
        (
            safetensors(r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}"#, &[0; 3]),
            &["tensor \"b\".data_offsets", "inside tensor \"a\""],
        ),
        (safetensors(r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#, &[0; 2]), &["tensor \"a\".data_offsets", "data bytes 0..1 unused"]),
        (safetensors(r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}"#, &[0; 3]), &["(data)", "end at data byte 1", "holds 3 bytes"]),
    ];
    for (bytes, needles) in cases {
        let e = read_header(&bytes, "m.safetensors").unwrap_err().to_string();
        assert!(e.starts_with("m.safetensors: "), "{e}");
        for n in needles {
            assert!(e.contains(n), "{e:?} lacks {n:?}");
        }
    }
}

#[test]
fn every_prefix_of_a_safetensors_file_is_an_error() {
    let bytes = seed("safetensors", "llama-like.safetensors");
    assert!(read_header(&bytes, "x").is_ok());
    for n in 0..bytes.len() {
        assert!(read_header(&bytes[..n], "x").is_err(), "prefix of {n} bytes accepted");
    }
}

#[test]
fn shard_index_errors_name_the_key() {
    let e = shard_names_from_json("{", "i.json").unwrap_err();
    assert_eq!(e.key, "(file)");
    assert!(e.problem.starts_with("not valid JSON"), "{e}");
    let e = shard_names_from_json(r#"{"weight_map": []}"#, "i.json").unwrap_err();
    assert_eq!((e.key.as_str(), e.problem.as_str()), ("weight_map", "missing or not an object"));
    let e = shard_names_from_json(&String::from_utf8(seed("safetensors", "index-escapes.json")).unwrap(), "i.json").unwrap_err();
    assert!(e.problem.contains("shard name `../x.safetensors` leaves the directory"), "{e}");
    let names = shard_names_from_json(&String::from_utf8(seed("safetensors", "model.safetensors.index.json")).unwrap(), "i.json").unwrap();
    assert_eq!(names, ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]);
}

// --- plugin handshake ----------------------------------------------------------------------------

#[test]
fn plugin_handshake_seeds_and_reproducers_do_not_panic() {
    let host = Expected { abi_version: 1, kvcore_version: "0.1.0", libtorch_version: "2.13.0" };
    let all = inputs("plugin_handshake");
    assert!(all.len() >= 5);
    for (name, bytes) in &all {
        let r = std::panic::catch_unwind(|| {
            let (Some(abi), Some(n), Some(rest)) = (bytes.get(0..4), bytes.get(4..8), bytes.get(8..)) else { return None };
            let abi = u32::from_le_bytes(abi.try_into().unwrap());
            let n = u32::from_le_bytes(n.try_into().unwrap());
            let s: Vec<Option<&[u8]>> = rest.split(|&b| b == 0).map(|s| if s == [0xff] { None } else { Some(s) }).collect();
            let f = |i: usize| s.get(i).copied().flatten();
            check_handshake(abi, f(0), f(1), n, &host).ok()?;
            Some(method_info(0, [f(2), f(3), f(4), f(5), f(6)]))
        });
        assert!(r.is_ok(), "{name} panicked");
    }
    let ok = seed("plugin_handshake", "example-external");
    let s: Vec<&[u8]> = ok[8..].split(|&b| b == 0).collect();
    let m = method_info(0, [Some(s[2]), Some(s[3]), Some(s[4]), Some(s[5]), Some(s[6])]).unwrap();
    assert_eq!(m.name, "example-recent");
    assert_eq!(m.params.len(), 4);
    assert_eq!(m.params[0].0, "ratio");
}

// --- torch.save pickles --------------------------------------------------------------------------

#[test]
fn torch_pickle_seeds_read_as_torch_wrote_them() {
    use kvformats::torch_pickle::{read_state_dict, StorageDtype};
    let all = inputs("torch_pickle");
    assert!(all.len() >= 4);
    for (name, bytes) in &all {
        let r = std::panic::catch_unwind(|| read_state_dict(bytes).map(|t| t.len()));
        assert!(r.is_ok(), "{name} panicked");
    }
    let names = |seed_name: &str| read_state_dict(&seed("torch_pickle", seed_name)).unwrap();
    let rwkv = names("rwkv-like");
    let dtypes: Vec<(&str, StorageDtype, &[i64])> = rwkv.iter().map(|(n, t)| (n.as_str(), t.storage.dtype, t.size.as_slice())).collect();
    assert_eq!(
        dtypes,
        [
            ("emb.weight", StorageDtype::F32, &[8, 4][..]),
            ("blocks.0.att.time_maa_x", StorageDtype::F32, &[1, 1, 4][..]),
            ("blocks.0.att.key.weight", StorageDtype::BF16, &[4, 4][..]),
            ("head.weight", StorageDtype::F16, &[8, 4][..]),
        ]
    );
    let tied = names("tied");
    assert_eq!(tied[0].1.storage, tied[1].1.storage, "a tied head views the embedding's storage");
    let views = names("views");
    let get = |n: &str| &views.iter().find(|(k, _)| k == n).unwrap().1;
    assert_eq!((get("t").size.as_slice(), get("t").stride.as_slice()), (&[6, 4][..], &[1, 6][..]));
    assert_eq!((get("row").offset, get("tail").offset, get("tail").size.as_slice()), (12, 5, &[12][..]));
    assert_eq!(get("empty").size, [0, 3]);
    assert_eq!(names("ordered-dict").iter().map(|(_, t)| t.storage.dtype).collect::<Vec<_>>(), [StorageDtype::F32, StorageDtype::I64, StorageDtype::Bool]);
}

// --- RWKV World vocabulary -----------------------------------------------------------------------

#[test]
fn world_vocab_seeds_round_trip() {
    use kvformats::world_tokenizer::WorldTokenizer;
    let all = inputs("world_vocab");
    assert!(all.len() >= 4);
    let mut loaded = 0;
    for (name, data) in &all {
        let (lines, text) = match data.iter().position(|&b| b == 0) {
            Some(i) => (&data[..i], &data[i + 1..]),
            None => (&data[..], &data[..]),
        };
        let mut vocab: String = (0u32..256).map(|b| format!("{} b'\\x{b:02x}' 1\n", b + 1)).collect();
        vocab.push_str(&String::from_utf8_lossy(lines));
        let Ok(t) = WorldTokenizer::from_vocab_str(&vocab, Path::new("seed.txt")) else { continue };
        loaded += 1;
        let ids = t.encode_bytes(text);
        assert_eq!(t.decode(&ids), text, "{name}");
        if name.ends_with("/ascii") {
            // "abc the abcab the": abc, " the", " ", abc, ab, " the" (longest match first).
            assert_eq!(ids, [258, 259, 33, 258, 257, 259], "{name}");
        }
    }
    assert_eq!(loaded, all.len(), "every committed seed is a loadable vocabulary");
}
