//! The tokenizer of a loaded model, whatever its kind: a Hugging Face `tokenizers` tokenizer (GGUF
//! and HF models) or RWKV's World tokenizer (greedy longest match over bytes, which `tokenizers`
//! cannot express). Its methods mirror `tokenizers::Tokenizer`'s, so callers read the same.

use tokenizers::Tokenizer;

/// A model's tokenizer.
#[derive(Clone)]
pub enum LmTokenizer {
    Hf(Box<Tokenizer>),
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
            LmTokenizer::Hf(t) => t.encode(text, add_special_tokens).map(|e| Encoded { ids: e.get_ids().to_vec(), offsets: e.get_offsets().to_vec() }).map_err(|e| TokenizerError(e.to_string())),
        }
    }

    /// Text of `ids`; `skip_special_tokens` drops special tokens.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        match self {
            LmTokenizer::Hf(t) => t.decode(ids, skip_special_tokens).map_err(|e| TokenizerError(e.to_string())),
        }
    }

    /// The id of a token given as its vocabulary string.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        match self {
            LmTokenizer::Hf(t) => t.token_to_id(token),
        }
    }

    /// The vocabulary string of `id`.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        match self {
            LmTokenizer::Hf(t) => t.id_to_token(id),
        }
    }

    /// The Hugging Face tokenizer, when it is one.
    pub fn as_hf(&self) -> Option<&Tokenizer> {
        match self {
            LmTokenizer::Hf(t) => Some(t),
        }
    }
}
