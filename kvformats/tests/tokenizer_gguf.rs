//! The GGUF tokenizer on the real SmolLM2 and Qwen2.5 files (known ids, special tokens, BOS
//! handling, the written tokenizer.json) and on small hand-made GGUFs (error messages).

use kvformats::gguf::GgufFile;
use kvformats::tokenizer::{build_tokenizer, load_tokenizer_file, tokenizer_json, GgufTokenizerSpec, TokenizerError};

mod common;
use common::model;

fn smollm2() -> GgufTokenizerSpec {
    let path = model("smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf");
    GgufTokenizerSpec::from_gguf(&GgufFile::open(&path).expect("open")).expect("spec")
}

fn qwen() -> GgufTokenizerSpec {
    let path = model("qwen2.5-0.5b/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    GgufTokenizerSpec::from_gguf(&GgufFile::open(&path).expect("open")).expect("spec")
}

fn encode(tok: &tokenizers::Tokenizer, text: &str, special: bool) -> Vec<u32> {
    tok.encode(text, special).expect("encode").get_ids().to_vec()
}

#[test]
fn smollm2_metadata_and_known_ids() {
    let spec = smollm2();
    assert_eq!((spec.model.as_str(), spec.pre.as_deref()), ("gpt2", Some("smollm")));
    assert_eq!((spec.tokens.len(), spec.merges.len()), (49152, 48900));
    assert_eq!((spec.bos_token(), spec.eos_token()), (Some("<|im_start|>"), Some("<|im_end|>")));
    assert!(!spec.add_bos_token);
    assert!(spec.chat_template.as_deref().is_some_and(|t| t.contains("<|im_start|>")));
    let tok = build_tokenizer(&spec).expect("build");
    assert_eq!(encode(&tok, "Hello world", true), [19556, 905]);
    // Digits are split one by one, whitespace runs stay whole before them.
    assert_eq!(encode(&tok, "  12", false), [256, 33, 34]);
    // Control tokens are matched whole, and only when special-token handling is on.
    assert_eq!(encode(&tok, "<|im_start|>user", true)[0], 1);
    let mut plain = tok.clone();
    plain.set_encode_special_tokens(true);
    assert!(encode(&plain, "<|im_start|>user", false).len() > 2);
}

#[test]
fn qwen_known_ids_specials_and_nfc() {
    let spec = qwen();
    assert_eq!(spec.pre.as_deref(), Some("qwen2"));
    let tok = build_tokenizer(&spec).expect("build");
    assert_eq!(encode(&tok, "Hello world!", true), [9707, 1879, 0]);
    // User-defined (type 4) and control (type 3) tokens are single ids.
    assert_eq!(encode(&tok, "<tool_call>", true), [151657]);
    assert_eq!(encode(&tok, "<|fim_prefix|>", true), [151659]);
    assert_eq!(encode(&tok, "<|im_end|>", true), [151645]);
    // NFC: a decomposed é encodes like the composed one.
    assert_eq!(encode(&tok, "cafe\u{301}", true), encode(&tok, "caf\u{e9}", true));
    let ids = encode(&tok, "x = 12345\n\tprint('ok') 你好 👍", true);
    assert_eq!(tok.decode(&ids, false).expect("decode"), "x = 12345\n\tprint('ok') 你好 👍");
}

#[test]
fn bos_and_eos_follow_the_flags() {
    let mut spec = smollm2();
    spec.add_bos_token = true;
    let tok = build_tokenizer(&spec).expect("build");
    assert_eq!(encode(&tok, "Hello world", true), [1, 19556, 905]);
    assert_eq!(encode(&tok, "Hello world", false), [19556, 905]);
    spec.add_eos_token = true;
    let tok = build_tokenizer(&spec).expect("build");
    assert_eq!(encode(&tok, "Hello world", true), [1, 19556, 905, 2]);
}

#[test]
fn written_tokenizer_json_loads_back_identically() {
    let spec = qwen();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, tokenizer_json(&spec).expect("json")).expect("write");
    let loaded = load_tokenizer_file(&path).expect("load");
    let built = build_tokenizer(&spec).expect("build");
    let text = "def f(x):\n    return x ** 2  # <|im_start|> 3.14159";
    assert_eq!(encode(&loaded, text, true), encode(&built, text, true));
    let missing = load_tokenizer_file(&dir.path().join("nope.json")).unwrap_err();
    assert!(missing.to_string().contains("nope.json"), "{missing}");
}

#[test]
fn unsupported_pre_and_model_are_named() {
    let mut spec = smollm2();
    spec.pre = Some("deepseek-llm".into());
    let err = build_tokenizer(&spec).unwrap_err().to_string();
    assert!(err.contains("deepseek-llm") && err.contains("smollm") && err.contains("qwen2"), "{err}");
    spec.model = "llama".into();
    let err = tokenizer_json(&spec).unwrap_err();
    assert!(matches!(err, TokenizerError::UnsupportedModel { .. }), "{err}");
}

#[test]
fn malformed_merge_is_reported_with_its_index() {
    let mut spec = smollm2();
    spec.merges[7] = "nospace".into();
    let err = tokenizer_json(&spec).unwrap_err().to_string();
    assert!(err.contains("tokenizer.ggml.merges[7]") && err.contains("nospace"), "{err}");
}

/// A minimal GGUF v3 file with the given metadata and no tensors.
fn gguf_bytes(kvs: &[(&str, Kv)]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    let string = |b: &mut Vec<u8>, s: &str| {
        b.extend_from_slice(&(s.len() as u64).to_le_bytes());
        b.extend_from_slice(s.as_bytes());
    };
    for (key, value) in kvs {
        string(&mut b, key);
        match value {
            Kv::Str(s) => {
                b.extend_from_slice(&8u32.to_le_bytes());
                string(&mut b, s);
            }
            Kv::Strs(items) => {
                b.extend_from_slice(&9u32.to_le_bytes());
                b.extend_from_slice(&8u32.to_le_bytes());
                b.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for s in items {
                    string(&mut b, s);
                }
            }
            Kv::U32(v) => {
                b.extend_from_slice(&4u32.to_le_bytes());
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    b
}

enum Kv {
    Str(&'static str),
    Strs(Vec<&'static str>),
    U32(u32),
}

#[test]
fn missing_merges_and_bad_ids_name_the_file_and_key() {
    let tokens = || Kv::Strs(vec!["a", "b", "ab"]);
    let bytes = gguf_bytes(&[("tokenizer.ggml.model", Kv::Str("gpt2")), ("tokenizer.ggml.tokens", tokens())]);
    let file = GgufFile::from_bytes(bytes, "tiny.gguf").expect("parse");
    let err = GgufTokenizerSpec::from_gguf(&file).unwrap_err().to_string();
    assert!(err.contains("tiny.gguf") && err.contains("tokenizer.ggml.merges"), "{err}");

    let bytes = gguf_bytes(&[
        ("tokenizer.ggml.model", Kv::Str("gpt2")),
        ("tokenizer.ggml.tokens", tokens()),
        ("tokenizer.ggml.merges", Kv::Strs(vec!["a b"])),
        ("tokenizer.ggml.eos_token_id", Kv::U32(3)),
    ]);
    let file = GgufFile::from_bytes(bytes, "tiny.gguf").expect("parse");
    let err = GgufTokenizerSpec::from_gguf(&file).unwrap_err().to_string();
    assert!(err.contains("tokenizer.ggml.eos_token_id") && err.contains("out of range"), "{err}");

    let bytes = gguf_bytes(&[("tokenizer.ggml.model", Kv::U32(2)), ("tokenizer.ggml.tokens", tokens())]);
    let file = GgufFile::from_bytes(bytes, "tiny.gguf").expect("parse");
    let err = GgufTokenizerSpec::from_gguf(&file).unwrap_err().to_string();
    assert!(err.contains("tokenizer.ggml.model") && err.contains("string"), "{err}");

    // A tiny but complete vocabulary builds and merges "a b".
    let bytes = gguf_bytes(&[
        ("tokenizer.ggml.model", Kv::Str("gpt2")),
        ("tokenizer.ggml.pre", Kv::Str("gpt-2")),
        ("tokenizer.ggml.tokens", tokens()),
        ("tokenizer.ggml.merges", Kv::Strs(vec!["a b"])),
    ]);
    let file = GgufFile::from_bytes(bytes, "tiny.gguf").expect("parse");
    let spec = GgufTokenizerSpec::from_gguf(&file).expect("spec");
    let tok = build_tokenizer(&spec).expect("build");
    assert_eq!(encode(&tok, "abba", false), [2, 1, 0]);
}
