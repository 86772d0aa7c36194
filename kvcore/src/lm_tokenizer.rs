//! The tokenizer of a loaded model, whatever its kind: a Hugging Face `tokenizers` tokenizer (GGUF
//! and HF models) or RWKV's World tokenizer (greedy longest match over bytes, which `tokenizers`
//! cannot express). Its methods mirror `tokenizers::Tokenizer`'s, so callers read the same.

use kvformats::world_tokenizer::WorldTokenizer;
use std::sync::Arc;
use tokenizers::Tokenizer;

/// A model's tokenizer.
#[derive(Clone)]
pub enum LmTokenizer {
    Hf(Box<Tokenizer>),
    /// RWKV World: no special tokens; id 0 (end of text) decodes to nothing.
    World(Arc<WorldTokenizer>),
}

/// Token ids of an encoded text (the part of `tokenizers::Encoding` kvbench uses).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Encoded {
    ids: Vec<u32>,
    /// Byte range of each token in the input text.
    offsets: Vec<(usize, usize)>,
}

impl Encoded {
    pub fn get_ids(&self) -> &[u32] {
        &self.ids
    }
    /// Byte range of each token in the input text.
    pub fn get_offsets(&self) -> &[(usize, usize)] {
        &self.offsets
    }
    pub fn into_ids(self) -> Vec<u32> {
        self.ids
    }
}

/// A tokenizer failure, as text.
#[derive(Clone, Debug)]
pub struct TokenizerError(pub String);

impl std::fmt::Display for TokenizerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TokenizerError {}

impl From<Tokenizer> for LmTokenizer {
    fn from(t: Tokenizer) -> Self {
        LmTokenizer::Hf(Box::new(t))
    }
}

impl LmTokenizer {
    /// Token ids of `text`; `add_special_tokens` adds BOS etc. where the tokenizer defines them.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Encoded, TokenizerError> {
        match self {
            LmTokenizer::Hf(t) => t
                .encode(text, add_special_tokens)
                .map(|e| Encoded { ids: e.get_ids().to_vec(), offsets: e.get_offsets().to_vec() })
                .map_err(|e| TokenizerError(e.to_string())),
            LmTokenizer::World(w) => {
                let ids = w.encode(text);
                let mut offsets = Vec::with_capacity(ids.len());
                let mut at = 0;
                for &id in &ids {
                    let len = w.id_to_token(id).map_or(0, <[u8]>::len);
                    offsets.push((at, at + len));
                    at += len;
                }
                Ok(Encoded { ids, offsets })
            }
        }
    }

    /// Text of `ids`; `skip_special_tokens` drops special tokens.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        match self {
            LmTokenizer::Hf(t) => t.decode(ids, skip_special_tokens).map_err(|e| TokenizerError(e.to_string())),
            LmTokenizer::World(w) => Ok(w.decode_lossy(ids)),
        }
    }

    /// The id of a token given as its vocabulary string.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        match self {
            LmTokenizer::Hf(t) => t.token_to_id(token),
            LmTokenizer::World(w) => w.token_to_id(token),
        }
    }

    /// The vocabulary string of `id`.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        match self {
            LmTokenizer::Hf(t) => t.id_to_token(id),
            LmTokenizer::World(w) => w.id_to_token(id).map(|b| String::from_utf8_lossy(b).into_owned()),
        }
    }

    /// The Hugging Face tokenizer, when it is one.
    pub fn as_hf(&self) -> Option<&Tokenizer> {
        match self {
            LmTokenizer::Hf(t) => Some(t),
            LmTokenizer::World(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn world_tokenizer_ids_offsets_and_decoding() {
        // Every byte as a token (ids 1..=256), plus "ab" and "abc d".
        let mut vocab: String = (0u32..256).map(|b| format!("{} b'\\x{b:02x}' 1\n", b + 1)).collect();
        vocab.push_str("300 'ab' 2\n301 'bc d' 4\n");
        let w = WorldTokenizer::from_vocab_str(&vocab, std::path::Path::new("test_vocab.txt")).unwrap();
        let t = LmTokenizer::World(Arc::new(w));
        let e = t.encode("abc de", true).unwrap();
        // Greedy longest match from the left: "ab", then "c", " ", "d", "e" (not "a" + "bc d").
        assert_eq!(e.get_ids(), &[300, 100, 33, 101, 102]);
        assert_eq!(e.get_offsets(), &[(0, 2), (2, 3), (3, 4), (4, 5), (5, 6)]);
        assert_eq!(t.decode(e.get_ids(), true).unwrap(), "abc de");
        assert_eq!(t.token_to_id("ab"), Some(300));
        assert_eq!(t.id_to_token(301).as_deref(), Some("bc d"));
        assert!(t.as_hf().is_none());
    }
}
