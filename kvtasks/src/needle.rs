//! Needle-in-a-haystack over the Paul Graham essays: (a) the paper's "PaulGraham passkey" test,
//! reproduced from longctx_bench `eval/passkey_utils` (word-level lengths and depths, pass keys from
//! Python's `random` seeded with 42, exact/partial match), and (b) Greg Kamradt's original test
//! (token-level lengths and depth percents, the San Francisco sandwich needle).
//!
//! Haystack order: both reference implementations read the essay folder in file-system order
//! (`os.listdir` / `glob`), which is unsorted and differs between machines — a known flaw that makes
//! their haystacks irreproducible. Here the files are always read in sorted file-name order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::pyrandom::PyRandom;
use crate::sample::{context_id, read_text, sorted_files, Sample, ScoringKind, TaskError, TextTokenizer, CONTEXT_ID_KEY};

/// The haystack texts, one per file, in sorted file-name order.
#[derive(Clone, Debug)]
pub struct Essays {
    pub dir: PathBuf,
    pub files: Vec<(String, String)>,
}

impl Essays {
    /// Every `*.txt` file of `dir` (the `pg_essays` data set holds 49, including the short `rss.txt`,
    /// exactly like the paper's background folder).
    pub fn load(dir: &Path) -> Result<Self, TaskError> {
        let mut files = Vec::new();
        for p in sorted_files(dir, ".txt")? {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            files.push((name, read_text(&p)?));
        }
        if files.is_empty() {
            return Err(TaskError::NotEnoughData { name: dir.display().to_string(), detail: "no .txt files".into() });
        }
        Ok(Essays { dir: dir.to_path_buf(), files })
    }

    /// Load from the fetched `pg_essays` data set.
    pub fn from_cache() -> Result<Self, TaskError> {
        Self::load(&crate::data::data_dir("pg_essays")?)
    }
}

// ---------------------------------------------------------------------------------------------
// (a) The paper's passkey test
// ---------------------------------------------------------------------------------------------

/// The paper's instruction (prefix).
pub const PASSKEY_INSTRUCTION: &str =
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. I will quiz you about the important information there.\n";
/// The paper's retrieval question (after the content).
pub const PASSKEY_QUESTION: &str = "\nWhat is the pass key? The pass key is ";
/// The needle template; `<PASS KEY>` is replaced by the key.
pub const PASSKEY_TEMPLATE: &str = "The pass key is <PASS KEY>. Remember it. <PASS KEY> is the pass key.";

/// Grid and key settings of the paper's passkey test (defaults = `20480words_10x10x3_7digits`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PasskeyConfig {
    pub background_len_min: usize,
    pub background_len_max: usize,
    pub n_background_lens: usize,
    pub depth_min: f64,
    pub depth_max: f64,
    pub n_depths: usize,
    pub iterations: usize,
    /// 7, or 64 for the `_64digits` variant.
    pub key_digits: usize,
    pub seed: u64,
    pub max_new_tokens: usize,
}

impl Default for PasskeyConfig {
    fn default() -> Self {
        PasskeyConfig {
            background_len_min: 512,
            background_len_max: 20480,
            n_background_lens: 10,
            depth_min: 0.0,
            depth_max: 1.0,
            n_depths: 10,
            iterations: 3,
            key_digits: 7,
            seed: 42,
            max_new_tokens: 256,
        }
    }
}

/// longctx_bench `get_intermediate_values_within_min_max`: `n` evenly spaced values, min and max
/// included (a single value when min == max).
pub fn spaced_values(min: f64, max: f64, n: usize) -> Vec<f64> {
    if min == max || n <= 1 {
        return vec![min];
    }
    let intervals = (n - 1) as f64;
    let mut v = vec![min];
    for i in 1..n - 1 {
        v.push(i as f64 * (max - min) / intervals + min);
    }
    v.push(max);
    v
}

impl PasskeyConfig {
    /// Haystack lengths in words, e.g. [512, 2730, 4949, ..., 20480].
    pub fn background_lens(&self) -> Vec<usize> {
        spaced_values(self.background_len_min as f64, self.background_len_max as f64, self.n_background_lens).into_iter().map(|v| v as usize).collect()
    }
    /// Needle depths in [0, 1].
    pub fn depths(&self) -> Vec<f64> {
        spaced_values(self.depth_min, self.depth_max, self.n_depths)
    }
}

fn word_regex() -> &'static regex::Regex {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| regex::Regex::new(r"[^\s]+[\s]*").unwrap_or_else(|_| unreachable!()))
}

/// The paper's "words": maximal non-space runs with their trailing whitespace.
pub fn words(text: &str) -> Vec<&str> {
    word_regex().find_iter(text).map(|m| m.as_str()).collect()
}

/// longctx_bench `truncate_string_by_word_count`: words `[start, end)` joined and stripped.
pub fn truncate_words(text: &str, start: usize, end: usize) -> String {
    if start >= end {
        return String::new();
    }
    let w = words(text);
    let end = end.min(w.len());
    let start = start.min(end);
    w[start..end].concat().trim().to_string()
}

/// `make_background` with `ordered_repetition`: cycle through the essays until at least `len`
/// words are collected, then keep exactly the first `len` words.
pub fn make_background(essays: &Essays, len: usize) -> String {
    let counts: Vec<usize> = essays.files.iter().map(|(_, t)| words(t).len()).collect();
    if counts.iter().all(|&c| c == 0) {
        return String::new();
    }
    let mut text = String::new();
    let mut have = 0usize;
    'outer: loop {
        for ((_, t), c) in essays.files.iter().zip(&counts) {
            text.push_str(t);
            have += c;
            if have >= len {
                break 'outer;
            }
        }
    }
    truncate_words(&text, 0, len)
}

/// `make_content` for one needle: the needle goes after `int(words * depth)` words, joined with
/// single spaces and a trailing space (`' '.join([before, needle, after, ''])`).
pub fn make_content(background: &str, needle: &str, depth: f64) -> (String, usize) {
    let n = words(background).len();
    let pos = (n as f64 * depth) as usize;
    let before = truncate_words(background, 0, pos);
    let after = truncate_words(background, pos, n);
    (format!("{before} {needle} {after} "), pos)
}

/// A random key of `digits` decimal digits drawn like the paper (`random.choice('0123456789')`).
pub fn draw_pass_key(rng: &mut PyRandom, digits: usize) -> String {
    let cand = b"0123456789";
    (0..digits).map(|_| char::from(*rng.choice(cand).unwrap_or(&b'0'))).collect()
}

/// All samples of the paper's grid, in the paper's loop order (length → depth → iteration), with
/// keys drawn from one `PyRandom(seed)` stream in that order.
///
/// Every sample of one length shares one haystack ([`make_background`] depends on the essays and
/// the length only, not on the seed, the depth or the iteration), so its metadata carry
/// [`CONTEXT_ID_KEY`] = [`passkey_context_id`] of that haystack.
pub fn passkey_samples(essays: &Essays, cfg: &PasskeyConfig) -> Result<Vec<Sample>, TaskError> {
    if cfg.key_digits == 0 || cfg.iterations == 0 {
        return Err(TaskError::Config { key: "key_digits/iterations".into(), detail: "must be positive".into() });
    }
    let mut rng = PyRandom::new(cfg.seed);
    let mut out = Vec::new();
    for len in cfg.background_lens() {
        let background = make_background(essays, len);
        let cid = passkey_context_id(&background);
        for (di, depth) in cfg.depths().into_iter().enumerate() {
            for it in 0..cfg.iterations {
                let key = draw_pass_key(&mut rng, cfg.key_digits);
                let needle = PASSKEY_TEMPLATE.replace("<PASS KEY>", &key);
                let (content, word_pos) = make_content(&background, &needle, depth);
                let mut metadata = BTreeMap::new();
                metadata.insert("background_len_words".into(), json!(len));
                metadata.insert("depth".into(), json!(depth));
                metadata.insert("depth_index".into(), json!(di));
                metadata.insert("iteration".into(), json!(it));
                metadata.insert("needle_word_position".into(), json!(word_pos));
                metadata.insert("seed".into(), json!(cfg.seed));
                metadata.insert("key_digits".into(), json!(cfg.key_digits));
                metadata.insert("haystack_order".into(), json!("sorted"));
                metadata.insert(CONTEXT_ID_KEY.into(), json!(cid));
                out.push(Sample {
                    examples: Vec::new(),
                    id: format!("passkey-{}d-{len}w-{di}-{it}", cfg.key_digits),
                    task: "paulgraham_passkey".into(),
                    prefix_instruction: Some(PASSKEY_INSTRUCTION.into()),
                    context: content,
                    question: PASSKEY_QUESTION.into(),
                    answer_prefix: None,
                    answers: vec![key],
                    scoring: ScoringKind::Passkey,
                    max_new_tokens: cfg.max_new_tokens,
                    metadata,
                });
            }
        }
    }
    Ok(out)
}

/// The [`CONTEXT_ID_KEY`] of passkey samples whose haystack is `background` (the output of
/// [`make_background`]): `passkey-` and the FNV-1a 64 hash of the text, so two samples get the
/// same id exactly when their haystacks are the same text.
pub fn passkey_context_id(background: &str) -> String {
    context_id("passkey", background)
}

// ---------------------------------------------------------------------------------------------
// (b) Kamradt's needle
// ---------------------------------------------------------------------------------------------

/// Kamradt's needle (`run.py`).
pub const KAMRADT_NEEDLE: &str = "\nThe best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.\n";
/// Kamradt's question.
pub const KAMRADT_QUESTION: &str = "What is the best thing to do in San Francisco?";
/// The system message of Kamradt's OpenAI provider, used here as the prefix instruction.
pub const KAMRADT_SYSTEM: &str = "You are a helpful AI bot that answers questions for a user. Keep your response short and direct";
/// Phrases a correct answer contains (scored with [`crate::sample::key_phrase_match`]).
pub const KAMRADT_KEY_PHRASES: [&str; 2] = ["eat a sandwich", "Dolores Park"];

/// Kamradt grid (defaults: lengths 1000..16000 tokens and depths 0..100 %, 35 steps each, buffer 200).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct KamradtConfig {
    pub context_lengths: Vec<usize>,
    pub depth_percents: Vec<f64>,
    pub final_context_length_buffer: usize,
    pub needle: String,
    pub question: String,
    pub max_new_tokens: usize,
}

/// `np.round(np.linspace(min, max, n)).astype(int)` (round half to even, like numpy).
pub fn linspace_rounded(min: f64, max: f64, n: usize) -> Vec<i64> {
    if n == 0 {
        return vec![];
    }
    if n == 1 {
        return vec![min.round_ties_even() as i64];
    }
    let step = (max - min) / (n - 1) as f64;
    (0..n).map(|i| if i == n - 1 { max } else { min + i as f64 * step }).map(|v| v.round_ties_even() as i64).collect()
}

impl Default for KamradtConfig {
    fn default() -> Self {
        KamradtConfig {
            context_lengths: linspace_rounded(1000.0, 16000.0, 35).into_iter().map(|v| v as usize).collect(),
            depth_percents: linspace_rounded(0.0, 100.0, 35).into_iter().map(|v| v as f64).collect(),
            final_context_length_buffer: 200,
            needle: KAMRADT_NEEDLE.into(),
            question: KAMRADT_QUESTION.into(),
            max_new_tokens: 64,
        }
    }
}

/// The haystack of one Kamradt context length, before the needle goes in: the haystack tokens cut
/// to `context_length` and re-encoded (as the reference does), then trimmed so that it and the
/// needle fit in `context_length - buffer`. It does not depend on the depth.
pub fn kamradt_haystack(haystack_tokens: &[u32], tok: &dyn TextTokenizer, context_length: usize, needle: &str, buffer: usize) -> Vec<u32> {
    kamradt_trim(haystack_tokens, tok, context_length, tok.encode(needle).len(), buffer)
}

fn kamradt_trim(haystack_tokens: &[u32], tok: &dyn TextTokenizer, context_length: usize, needle_len: usize, buffer: usize) -> Vec<u32> {
    // encode_and_trim, then re-encode the decoded text as the reference does.
    let trimmed = &haystack_tokens[..context_length.min(haystack_tokens.len())];
    let mut context = tok.encode(&tok.decode(trimmed));
    let budget = context_length.saturating_sub(buffer);
    if context.len() + needle_len > budget {
        context.truncate(budget.saturating_sub(needle_len));
    }
    context
}

/// `needle_tokens` inserted into `context` (a [`kamradt_haystack`]) before the token at
/// `depth_percent`, moved back to just after the previous sentence end; the decoded text and the
/// insertion index.
fn kamradt_insert(context: &[u32], tok: &dyn TextTokenizer, depth_percent: f64, needle_tokens: &[u32]) -> (String, usize) {
    let insertion = if depth_percent >= 100.0 {
        context.len()
    } else {
        let mut p = (context.len() as f64 * (depth_percent / 100.0)) as usize;
        let period = tok.encode(".");
        while p > 0 && !period.contains(&context[p - 1]) {
            p -= 1;
        }
        p
    };
    let mut out = context[..insertion].to_vec();
    out.extend_from_slice(needle_tokens);
    out.extend_from_slice(&context[insertion..]);
    (tok.decode(&out), insertion)
}

/// One Kamradt context: the haystack tokens cut to `context_length`, minus the buffer and the
/// needle ([`kamradt_haystack`]), with the needle inserted before the token at `depth_percent` —
/// moved back to just after the previous token that `encode(".")` yields (a sentence end).
/// Returns the decoded text, the needle's token index within the haystack tokens and the
/// haystack's length in tokens.
pub fn kamradt_context(
    haystack_tokens: &[u32],
    tok: &dyn TextTokenizer,
    context_length: usize,
    depth_percent: f64,
    needle: &str,
    buffer: usize,
) -> (String, usize, usize) {
    let needle_tokens = tok.encode(needle);
    let context = kamradt_trim(haystack_tokens, tok, context_length, needle_tokens.len(), buffer);
    let (text, insertion) = kamradt_insert(&context, tok, depth_percent, &needle_tokens);
    (text, insertion, context.len())
}

/// The [`CONTEXT_ID_KEY`] of Kamradt samples whose haystack (a [`kamradt_haystack`]) decodes to
/// `haystack_text`: `kamradt-` and the FNV-1a 64 hash of the text, so two samples get the same id
/// exactly when their haystacks are the same text.
pub fn kamradt_context_id(haystack_text: &str) -> String {
    context_id("kamradt", haystack_text)
}

/// Kamradt samples for every (length, depth) cell. The depths of one length share one haystack,
/// so their metadata carry [`CONTEXT_ID_KEY`] = [`kamradt_context_id`] of its decoded text.
pub fn kamradt_samples(essays: &Essays, tok: &dyn TextTokenizer, cfg: &KamradtConfig) -> Result<Vec<Sample>, TaskError> {
    let max_len = cfg.context_lengths.iter().copied().max().unwrap_or(0);
    // read_context_files: whole passes over the essays until the text has max_len tokens.
    let mut text = String::new();
    let mut tokens = Vec::new();
    while tokens.len() < max_len {
        for (_, t) in &essays.files {
            text.push_str(t);
        }
        tokens = tok.encode(&text);
        if tokens.is_empty() {
            return Err(TaskError::NotEnoughData { name: "pg_essays".into(), detail: "empty haystack".into() });
        }
    }
    let needle_tokens = tok.encode(&cfg.needle);
    let mut out = Vec::new();
    for &len in &cfg.context_lengths {
        // One haystack per length, shared by all its depths (the same as `kamradt_context` builds).
        let haystack = kamradt_trim(&tokens, tok, len, needle_tokens.len(), cfg.final_context_length_buffer);
        let cid = kamradt_context_id(&tok.decode(&haystack));
        let hay_len = haystack.len();
        for &depth in &cfg.depth_percents {
            let (context, pos) = kamradt_insert(&haystack, tok, depth, &needle_tokens);
            let mut metadata = BTreeMap::new();
            metadata.insert("context_length_tokens".into(), json!(len));
            metadata.insert("depth_percent".into(), json!(depth));
            metadata.insert("needle_token_position".into(), json!(pos));
            metadata.insert("haystack_tokens".into(), json!(hay_len));
            metadata.insert("haystack_order".into(), json!("sorted"));
            metadata.insert(CONTEXT_ID_KEY.into(), json!(cid));
            out.push(Sample {
                examples: Vec::new(),
                id: format!("kamradt-{len}t-{depth}pct"),
                task: "kamradt_niah".into(),
                prefix_instruction: Some(format!("{KAMRADT_SYSTEM}\n\n")),
                context,
                question: format!("\n\n{} Don't give information outside the document or repeat your findings", cfg.question),
                answer_prefix: None,
                answers: KAMRADT_KEY_PHRASES.iter().map(|s| s.to_string()).collect(),
                scoring: ScoringKind::KeyPhrases,
                max_new_tokens: cfg.max_new_tokens,
                metadata,
            });
        }
    }
    Ok(out)
}
