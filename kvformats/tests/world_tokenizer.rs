//! The World tokenizer against the reference `TRIE_TOKENIZER` of BlinkDL's `rwkv` package, on the
//! real `rwkv_vocab_v20230424.txt` that ships inside it: identical ids on English prose, source
//! code, Chinese, emoji, random Unicode and random (invalid UTF-8) bytes, decoding back to the
//! input, and the time to encode a 30,000-character prompt.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use kvformats::world_tokenizer::WorldTokenizer;
use serde_json::{json, Value};

mod common;
use common::{python, workspace_root};

/// A small deterministic generator (64-bit LCG), so the random cases are the same on every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
}

/// Random text drawn from ASCII, Latin-1, Cyrillic, CJK, emoji and control characters.
fn random_text(rng: &mut Lcg, chars: usize) -> String {
    let ranges: [(u32, u32); 7] = [(0x20, 0x7f), (0x00, 0x20), (0xa0, 0x180), (0x400, 0x500), (0x4e00, 0x9fff), (0x1f300, 0x1fa00), (0x3000, 0x3100)];
    let mut s = String::new();
    while s.chars().count() < chars {
        let (lo, hi) = ranges[rng.next() as usize % ranges.len()];
        if let Some(c) = char::from_u32(lo + rng.next() % (hi - lo)) {
            s.push(c);
        }
    }
    s
}

fn texts() -> Vec<String> {
    let root = workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let code = std::fs::read_to_string(root.join("kvformats/src/world_tokenizer.rs")).expect("world_tokenizer.rs");
    let mut rng = Lcg(20230424);
    let mut v = vec![
        "Hello world! The quick brown fox jumps over the lazy dog.".to_string(),
        "User: What is the capital of France?\n\nAssistant: The capital of France is Paris.".to_string(),
        readme.chars().take(6000).collect(),
        code.chars().take(6000).collect(),
        "人工智能是计算机科学的一个分支，它企图了解智能的实质，并生产出一种新的能以人类智能相似的方式做出反应的智能机器。\
         该领域的研究包括机器人、语言识别、图像识别、自然语言处理和专家系统等。RWKV 是一种结合了 RNN 和 Transformer 优点的模型。"
            .to_string(),
        "日本語のテキストも試します。これはテストです。한국어 문장도 있습니다.".to_string(),
        "Emoji: 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇫🇷🇯🇵 ❤️ 🧑‍💻 — and “quotes”, ‘single’, … ellipsis, tabs\tand\r\nCRLF".to_string(),
        "    fn main() {\n        println!(\"{}\", 1 + 2);\n    }\n\n\n\n                                 spaces".to_string(),
        "#".repeat(200) + &"-".repeat(90) + &" ".repeat(300),
        String::new(),
        "\u{0}\u{1}\u{7f}\u{80}\u{ff}\u{100}\u{ffff}\u{10ffff}".to_string(),
    ];
    for n in [10, 100, 1000, 3000] {
        v.push(random_text(&mut rng, n));
    }
    v
}

fn byte_strings() -> Vec<Vec<u8>> {
    let mut rng = Lcg(7);
    let mut v = vec![vec![0xff, 0xfe, 0x80, 0xc3], "héllo".as_bytes()[..2].to_vec(), (0..=255u8).collect()];
    for n in [1, 17, 500, 4000] {
        v.push((0..n).map(|_| rng.next() as u8).collect());
    }
    // Mostly valid UTF-8 with single bytes cut out.
    let mut s = random_text(&mut rng, 500).into_bytes();
    for i in (3..s.len()).step_by(37).rev() {
        s.remove(i);
    }
    v.push(s);
    v
}

fn reference(texts: &[String], byte_strings: &[Vec<u8>]) -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let (inp, out) = (dir.path().join("in.json"), dir.path().join("out.json"));
    let hex: Vec<String> = byte_strings.iter().map(hex::encode).collect();
    std::fs::write(&inp, json!({"texts": texts, "byte_strings": hex}).to_string()).expect("write input");
    let script = workspace_root().join("scripts/reference/world_tokenizer_reference.py");
    let status = Command::new(python()).arg(&script).arg(&inp).arg(&out).status().unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(status.success(), "{} failed ({status}); its stderr is above", script.display());
    serde_json::from_slice(&std::fs::read(&out).expect("read reference")).expect("reference is JSON")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().expect("id list").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

#[test]
fn world_tokenizer_matches_rwkv_package() {
    let texts = texts();
    let byte_strings = byte_strings();
    let r = reference(&texts, &byte_strings);
    let vocab = PathBuf::from(r["vocab"].as_str().expect("vocab path"));
    let t0 = Instant::now();
    let tok = WorldTokenizer::from_vocab_file(&vocab).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("loaded {} in {:.1} ms, vocab_size {}", vocab.display(), t0.elapsed().as_secs_f64() * 1e3, tok.vocab_size());
    assert_eq!(tok.vocab_size(), 65530);
    assert_eq!(tok.id_to_token(0), None);
    assert_eq!(tok.id_to_token(1), Some(&[0u8][..]));
    assert_eq!(tok.token_to_id("\n\n"), Some(261));
    assert_eq!(tok.id_to_token(65529), Some(&[b' '; 128][..]));

    let mut tokens = 0;
    for (i, (text, want)) in texts.iter().zip(r["texts"].as_array().unwrap()).enumerate() {
        let got = tok.encode(text);
        let want = ids(want);
        assert_eq!(got, want, "text {i} ({:?}…): ids differ from TRIE_TOKENIZER", text.chars().take(40).collect::<String>());
        assert_eq!(tok.decode(&got), text.as_bytes(), "text {i}: decode(encode(s)) != s");
        assert_eq!(tok.decode_lossy(&got), *text);
        assert_eq!(hex::encode(tok.decode(&got)), r["decoded_hex"][i].as_str().unwrap(), "text {i}: decode differs");
        tokens += got.len();
    }
    for (i, (bytes, want)) in byte_strings.iter().zip(r["byte_strings"].as_array().unwrap()).enumerate() {
        let got = tok.encode_bytes(bytes);
        assert_eq!(got, ids(want), "byte string {i}: ids differ from TRIE_TOKENIZER");
        assert_eq!(tok.decode(&got), *bytes, "byte string {i}: decode(encode(b)) != b");
    }
    eprintln!("{} texts ({tokens} tokens) and {} byte strings identical to TRIE_TOKENIZER", texts.len(), byte_strings.len());

    // A 30,000-character prompt: prose, code and Chinese mixed.
    let long: String = texts[2..8].concat().chars().cycle().take(30_000).collect();
    let t0 = Instant::now();
    let ids = tok.encode(&long);
    let dt = t0.elapsed().as_secs_f64();
    eprintln!("30,000 characters ({} bytes) -> {} tokens in {:.2} ms", long.len(), ids.len(), dt * 1e3);
    assert_eq!(tok.decode(&ids), long.as_bytes());
}

#[test]
fn bad_vocab_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("vocab.txt");
    std::fs::write(&p, "1 'a' 1\n2 'b 1\n").unwrap();
    let e = WorldTokenizer::from_vocab_file(&p).err().expect("must fail").to_string();
    assert!(e.contains("vocab.txt: line 2"), "{e}");
    let e = WorldTokenizer::from_vocab_file(&dir.path().join("missing.txt")).err().expect("must fail").to_string();
    assert!(e.contains("missing.txt"), "{e}");
}
