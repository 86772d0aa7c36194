//! The LLMLingua-2 algorithm of llmlingua 0.2.2 (`compress_prompt_llmlingua2` with one context
//! and no context-level filter), step for step: force tokens the tokenizer splits are swapped for
//! `[NEWi]` placeholders, the text is cut into chunks of at most 510 tokens that end at a chunk-end
//! token, the classifier's keep-probabilities are averaged from tokens to words, consecutive
//! repeated force tokens are dropped, and words above a percentile threshold are kept.
//!
//! One deviation: llmlingua counts GPT-3.5 tokens (tiktoken cl100k_base) to weigh each word in
//! the threshold and to report token counts; that encoding is not available offline, so both use
//! the compressor's own tokenizer here ([`Lingua2::count_tokens`]).

use crate::xlmr::XlmrTokenClassifier;
use kvcore::error::{Error, Result};
use std::collections::HashSet;
use tch::{Kind, Tensor};
use tokenizers::Tokenizer;

/// llmlingua's `max_seq_len`: chunks of 510 tokens plus two framing tokens.
pub const MAX_SEQ_LEN: usize = 512;
/// llmlingua's `max_force_token`: the `[NEW0]`..`[NEW99]` placeholders.
pub const MAX_FORCE_TOKENS: usize = 100;
/// sentencepiece's word-start marker.
const SPIECE: char = '▁';
/// Python's `string.punctuation`.
const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// The knobs of `compress_prompt_llmlingua2` that kvbench exposes.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Keep rate (`1/N`).
    pub rate: f64,
    pub force_tokens: Vec<String>,
    pub chunk_end_tokens: Vec<String>,
    pub drop_consecutive: bool,
    /// Chunks per forward pass (llmlingua's `max_batch_size`).
    pub batch_size: usize,
}

impl Settings {
    /// The paper's call: `force_tokens=['\n','.','!','?',',']`, `chunk_end_tokens=['.','\n']`,
    /// `drop_consecutive=True`.
    pub fn paper(rate: f64) -> Self {
        Settings {
            rate,
            force_tokens: ["\n", ".", "!", "?", ","].map(String::from).to_vec(),
            chunk_end_tokens: [".", "\n"].map(String::from).to_vec(),
            drop_consecutive: true,
            batch_size: 50,
        }
    }
}

/// The result for one text, with llmlingua's per-word labels.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Compression {
    pub text: String,
    /// The words as llmlingua reports them (`fn_labeled_original_prompt`, `▁` stripped).
    pub words: Vec<String>,
    /// 1 = kept.
    pub labels: Vec<u8>,
    /// The chunks the text was cut into (with placeholders).
    pub chunks: Vec<String>,
}

/// A probability as Python holds it: a NumPy float32 from the model, or a Python float (the
/// 1.0 of a forced token, the 0.0 of a dropped repeat). NumPy computes a percentile in float32
/// when every element is float32, in float64 otherwise; kvbench follows it to the last bit.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Prob {
    v: f32,
    py: bool,
}

/// `np.percentile(values, p)` with the default linear method.
fn percentile(values: &[Prob], p: i64) -> f64 {
    let f64_mode = values.iter().any(|x| x.py);
    let mut sorted: Vec<f32> = values.iter().map(|x| x.v).collect();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let n = sorted.len();
    let q = p as f64 / 100.0;
    let vi = (n as f64 - 1.0) * q;
    if vi >= n as f64 - 1.0 {
        return f64::from(sorted[n - 1]);
    }
    let lo = vi.floor();
    let gamma = vi - lo;
    let (a, b) = (sorted[lo as usize], sorted[lo as usize + 1]);
    if f64_mode {
        let (a, b) = (f64::from(a), f64::from(b));
        let d = b - a;
        if gamma >= 0.5 {
            b - d * (1.0 - gamma)
        } else {
            a + d * gamma
        }
    } else {
        let d = b - a;
        f64::from(if gamma >= 0.5 { b - d * ((1.0 - gamma) as f32) } else { a + d * (gamma as f32) })
    }
}

/// Python's `sum(p) / len(p)` over one word's token probabilities.
fn word_mean(ps: &[Prob]) -> Prob {
    if ps.len() == 1 {
        return ps[0];
    }
    // Only the first element can be a Python float (1.0); the sum is float32 from there on.
    let mut acc = ps[0].v;
    for x in &ps[1..] {
        acc += x.v;
    }
    Prob { v: acc / ps.len() as f32, py: false }
}

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

/// LLMLingua-2 over a loaded classifier and its tokenizer.
pub struct Lingua2 {
    pub tokenizer: Tokenizer,
    pub model: XlmrTokenClassifier,
    /// The `[NEWi]` placeholders.
    added_tokens: Vec<String>,
    /// llmlingua's `special_tokens`: the tokenizer's special tokens other than the placeholders.
    special_tokens: HashSet<String>,
    /// What llmlingua frames every chunk with (its dataset's `[CLS]`/`[SEP]`; see [`Lingua2::frame_ids`]).
    cls_id: u32,
    sep_id: u32,
}

impl Lingua2 {
    /// Wraps a classifier and its tokenizer, adding llmlingua's `[NEW0]`..`[NEW99]` placeholders
    /// to the tokenizer when it lacks them (the released models already have them; their
    /// embeddings must then exist in the model, see [`XlmrTokenClassifier::resize_vocab`]).
    pub fn new(mut tokenizer: Tokenizer, mut model: XlmrTokenClassifier) -> Result<Self> {
        let added_tokens: Vec<String> = (0..MAX_FORCE_TOKENS).map(|i| format!("[NEW{i}]")).collect();
        let missing: Vec<tokenizers::AddedToken> =
            added_tokens.iter().filter(|t| tokenizer.token_to_id(t).is_none()).map(|t| tokenizers::AddedToken::from(t.clone(), true)).collect();
        if !missing.is_empty() {
            tokenizer.add_special_tokens(&missing);
        }
        let n = tokenizer.get_vocab_size(true) as i64;
        if n > model.config.vocab_size {
            model.resize_vocab(n)?;
        }
        let placeholders: HashSet<&str> = added_tokens.iter().map(String::as_str).collect();
        let special_tokens: HashSet<String> = tokenizer
            .get_added_vocabulary()
            .get_added_tokens_decoder()
            .values()
            .filter(|t| t.special && !placeholders.contains(t.content.as_str()))
            .map(|t| t.content.clone())
            .collect();
        let unk = ["<unk>", "[UNK]"].iter().find_map(|t| tokenizer.token_to_id(t)).ok_or_else(|| tok_err("the tokenizer has no <unk> token"))?;
        // llmlingua 0.2.2 builds its dataset without the model name, so it frames chunks with
        // multilingual BERT's "[CLS]"/"[SEP]"; XLM-R's vocabulary maps both to <unk>.
        let cls_id = tokenizer.token_to_id("[CLS]").unwrap_or(unk);
        let sep_id = tokenizer.token_to_id("[SEP]").unwrap_or(unk);
        Ok(Lingua2 { tokenizer, model, added_tokens, special_tokens, cls_id, sep_id })
    }

    /// Token strings and ids of `text` (`tokenizer.tokenize`, no special tokens).
    fn tokenize(&self, text: &str) -> Result<(Vec<String>, Vec<u32>)> {
        let enc = self.tokenizer.encode(text, false).map_err(tok_err)?;
        Ok((enc.get_tokens().to_vec(), enc.get_ids().to_vec()))
    }

    /// `convert_tokens_to_string`: the tokenizer's decoder over token strings.
    fn detokenize(&self, tokens: &[String]) -> Result<String> {
        use tokenizers::Decoder;
        match self.tokenizer.get_decoder() {
            Some(d) => d.decode(tokens.to_vec()).map_err(tok_err),
            None => Ok(tokens.join(" ")),
        }
    }

    /// Tokens of `text` under the compressor's tokenizer: what kvbench reports and what weighs
    /// each word in the threshold (llmlingua uses GPT-3.5's tiktoken encoding for both).
    pub fn count_tokens(&self, text: &str) -> Result<usize> {
        Ok(self.tokenizer.encode(text, false).map_err(tok_err)?.get_ids().len())
    }

    /// The input ids llmlingua's dataset builds for one chunk: the chunk re-tokenized, framed,
    /// cut at 512.
    fn frame_ids(&self, chunk: &str) -> Result<Vec<u32>> {
        let (_, ids) = self.tokenize(chunk)?;
        let mut out = Vec::with_capacity(ids.len() + 2);
        out.push(self.cls_id);
        out.extend(ids);
        out.push(self.sep_id);
        out.truncate(MAX_SEQ_LEN);
        Ok(out)
    }

    /// `__chunk_context`: chunks of at most 510 tokens, each ending at the last chunk-end token
    /// within reach.
    pub fn chunk_context(&self, text: &str, chunk_end: &HashSet<String>) -> Result<Vec<String>> {
        let max_len = MAX_SEQ_LEN - 2;
        let (tokens, _) = self.tokenize(text)?;
        let n = tokens.len();
        let mut out = Vec::new();
        let mut st = 0usize;
        while st < n {
            if st + max_len + 1 > n {
                out.push(self.detokenize(&tokens[st..n])?);
                break;
            }
            let mut ed = st + max_len;
            for j in 0..(ed - st) {
                if chunk_end.contains(&tokens[ed - j]) {
                    ed -= j;
                    break;
                }
            }
            out.push(self.detokenize(&tokens[st..=ed])?);
            st = ed + 1;
        }
        Ok(out)
    }

    /// Keep-probabilities (label 1) of every framed chunk, batched with padding.
    fn chunk_probs(&self, framed: &[Vec<u32>], batch_size: usize) -> Result<Vec<Vec<f32>>> {
        let pad = self.model.config.pad_token_id;
        let mut out = Vec::with_capacity(framed.len());
        for batch in framed.chunks(batch_size.max(1)) {
            let l = batch.iter().map(Vec::len).max().unwrap_or(0);
            let mut ids = vec![pad; batch.len() * l];
            let mut mask = vec![0i64; batch.len() * l];
            for (b, seq) in batch.iter().enumerate() {
                for (i, &t) in seq.iter().enumerate() {
                    ids[b * l + i] = i64::from(t);
                    mask[b * l + i] = 1;
                }
            }
            let shape = [batch.len() as i64, l as i64];
            let logits = self.model.forward(&Tensor::from_slice(&ids).view(shape), &Tensor::from_slice(&mask).view(shape))?;
            let probs = logits.f_softmax(-1, Kind::Float)?.select(2, 1).to_device(tch::Device::Cpu).contiguous();
            let flat: Vec<f32> = Vec::<f32>::try_from(probs.view([-1]))?;
            for (b, seq) in batch.iter().enumerate() {
                out.push(flat[b * l..b * l + seq.len()].to_vec());
            }
        }
        Ok(out)
    }

    /// Compresses one text as `compress_prompt_llmlingua2([text], rate, ...)` does.
    pub fn compress(&self, text: &str, s: &Settings) -> Result<Compression> {
        if s.force_tokens.len() > MAX_FORCE_TOKENS {
            return Err(Error::Other(format!("llmlingua2: at most {MAX_FORCE_TOKENS} force tokens")));
        }
        // Force tokens the tokenizer does not keep as one token are swapped for placeholders.
        let mut token_map: Vec<(String, String)> = Vec::new();
        // (a dict in llmlingua: a repeated force token keeps its first place and its last placeholder)
        for (i, t) in s.force_tokens.iter().enumerate() {
            if self.tokenize(t)?.0.len() != 1 {
                match token_map.iter_mut().find(|(o, _)| o == t) {
                    Some(entry) => entry.1 = self.added_tokens[i].clone(),
                    None => token_map.push((t.clone(), self.added_tokens[i].clone())),
                }
            }
        }
        let mut chunk_end: HashSet<String> = s.chunk_end_tokens.iter().cloned().collect();
        for c in &s.chunk_end_tokens {
            if let Some((_, new)) = token_map.iter().find(|(o, _)| o == c) {
                chunk_end.insert(new.clone());
            }
        }
        let mut replaced = text.to_string();
        for (ori, new) in &token_map {
            replaced = replaced.replace(ori.as_str(), new);
        }
        let chunks = self.chunk_context(&replaced, &chunk_end)?;
        let restore = |t: &str| token_map.iter().fold(t.to_string(), |acc, (ori, new)| acc.replace(new.as_str(), ori));

        let reduce_rate = (1.0 - s.rate).max(0.0);
        if reduce_rate <= 0.0 {
            return Ok(Compression { text: chunks.iter().map(|c| restore(c)).collect(), words: Vec::new(), labels: Vec::new(), chunks });
        }

        let framed = chunks.iter().map(|c| self.frame_ids(c)).collect::<Result<Vec<_>>>()?;
        let probs = self.chunk_probs(&framed, s.batch_size)?;
        let is_force = |w: &str| s.force_tokens.iter().any(|f| f == w);
        let is_placeholder = |w: &str| token_map.iter().any(|(_, n)| n == w);

        let mut out = Compression { chunks: chunks.clone(), ..Default::default() };
        for (ids, token_probs) in framed.iter().zip(&probs) {
            // __merge_token_to_word
            let mut words: Vec<String> = Vec::new();
            let mut word_probs: Vec<Vec<Prob>> = Vec::new();
            for (&id, &p) in ids.iter().zip(token_probs) {
                let token = self.tokenizer.id_to_token(id).unwrap_or_default();
                if self.special_tokens.contains(&token) {
                    continue;
                }
                let pure = token.trim_start_matches(SPIECE);
                let begins = PUNCTUATION.contains(token.as_str()) || is_force(&token) || is_placeholder(&token) || token.starts_with(SPIECE);
                if begins || words.is_empty() {
                    let forced = is_force(pure) || is_placeholder(pure);
                    words.push(restore(&token));
                    word_probs.push(vec![if forced { Prob { v: 1.0, py: true } } else { Prob { v: p, py: false } }]);
                } else {
                    words.last_mut().expect("checked").push_str(pure);
                    word_probs.last_mut().expect("checked").push(Prob { v: p, py: false });
                }
            }
            let mut wp: Vec<Prob> = word_probs.iter().map(|ps| word_mean(ps)).collect();
            if words.is_empty() {
                continue;
            }
            if s.drop_consecutive {
                let threshold = percentile(&wp, (100.0 * reduce_rate) as i64);
                let mut between = false;
                let mut prev: Option<&str> = None;
                for (i, w) in words.iter().enumerate() {
                    if is_force(w) {
                        if between {
                            between = false;
                        } else if prev == Some(w.as_str()) {
                            wp[i] = Prob { v: 0.0, py: true };
                        }
                        prev = Some(w);
                    } else {
                        between |= f64::from(wp[i].v) > threshold;
                    }
                }
            }
            // Each word weighs as many tokens as the counter gives it (at least 1).
            let mut weighted = Vec::new();
            for (w, p) in words.iter().zip(&wp) {
                let n = self.count_tokens(w)?.max(1);
                weighted.extend(std::iter::repeat_n(*p, n));
            }
            let threshold = percentile(&weighted, (100.0 * reduce_rate + 1.0) as i64);
            let mut keep: Vec<String> = Vec::new();
            for (w, p) in words.iter().zip(&wp) {
                let v = f64::from(p.v);
                if v > threshold || (threshold == 1.0 && v == threshold) {
                    if s.drop_consecutive && is_force(w) && keep.last() == Some(w) {
                        out.labels.push(0);
                    } else {
                        keep.push(w.clone());
                        out.labels.push(1);
                    }
                } else {
                    out.labels.push(0);
                }
            }
            out.text.push_str(&self.detokenize(&keep)?);
            out.words.extend(words.iter().map(|w| w.trim_start_matches(SPIECE).to_string()));
        }
        Ok(out)
    }
}
