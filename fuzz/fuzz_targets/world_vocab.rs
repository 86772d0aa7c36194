//! Fuzzes the RWKV World tokenizer. The input up to its first NUL byte holds vocabulary lines
//! (`rwkv_vocab_v20230424.txt` format), added to the 256 single bytes (ids 1..=256); the rest is a
//! text (without a NUL, the whole input is both). When the vocabulary loads, the text is encoded
//! and must decode back to itself, every id having a token.
#![no_main]

use kvformats::world_tokenizer::WorldTokenizer;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let (lines, text) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, data),
    };
    let mut vocab: String = (0u32..256).map(|b| format!("{} b'\\x{b:02x}' 1\n", b + 1)).collect();
    vocab.push_str(&String::from_utf8_lossy(lines));
    let Ok(t) = WorldTokenizer::from_vocab_str(&vocab, Path::new("fuzz_vocab.txt")) else { return };
    let ids = t.encode_bytes(text);
    assert!(ids.len() <= text.len());
    assert!(ids.iter().all(|&id| t.id_to_token(id).is_some()));
    assert_eq!(t.decode(&ids), text);
});
