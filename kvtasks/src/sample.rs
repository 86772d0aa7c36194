//! The sample type every generated task emits (context kept apart from the question so an engine
//! can compress the context once and then append the question), the tokenizer abstraction the
//! generators use to measure lengths, and the string-match metrics that belong to these tasks.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Text ↔ token ids. The engine's tokenizer implements this; tests may use [`ByteTokenizer`].
pub trait TextTokenizer {
    /// Token ids of `text`, without special tokens.
    fn encode(&self, text: &str) -> Vec<u32>;
    /// Text of `ids`.
    fn decode(&self, ids: &[u32]) -> String;
    /// Number of tokens of `text`.
    fn count(&self, text: &str) -> usize {
        self.encode(text).len()
    }
    /// Number of tokens of `sample`'s input as the model will read it. This default has no chat
    /// template: [`Sample::input_text`] with none. The engine's tokenizer renders the model's
    /// chat template around the sample when the run uses one, so that a generator sizing its
    /// haystack to a token budget (RULER) counts the template's tokens inside the budget.
    fn count_input(&self, sample: &Sample) -> usize {
        self.count(&sample.plain_input())
    }
}

/// One token per UTF-8 byte. Exact round trip for whole strings; for tests and rough sizing.
#[derive(Clone, Copy, Debug, Default)]
pub struct ByteTokenizer;

impl TextTokenizer for ByteTokenizer {
    fn encode(&self, text: &str) -> Vec<u32> {
        text.bytes().map(u32::from).collect()
    }
    fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().map(|&i| (i & 0xff) as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
    fn count(&self, text: &str) -> usize {
        text.len()
    }
}

/// How a prediction is scored against [`Sample::answers`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoringKind {
    /// The paper's passkey metrics: `exact_match` (normalised substring) and `partial_match`
    /// (longest common substring / answer length), see [`passkey_exact_match`].
    Passkey,
    /// Fraction of answer phrases found, normalised, in the prediction (Kamradt needle key phrases).
    KeyPhrases,
    /// RULER `string_match_all`: fraction of references found (case-insensitive substring).
    RulerMatchAll,
    /// RULER `string_match_part`: 1 if any reference is found (case-insensitive substring).
    RulerMatchPart,
    /// LongBench `retrieval_score` ("Paragraph N").
    LongbenchRetrieval,
    /// LongBench `count_score`.
    LongbenchCount,
    /// LongBench `code_sim_score`.
    LongbenchCodeSim,
    /// A LongBench v1 subset scored as `eval.py`'s `scorer` does: the prediction is cut to its
    /// first line if `first_line_only` (trec, triviaqa, samsum, lsht), then the best
    /// `metric(prediction, gt, all_classes)` over the answers. Keyed by the metric's Python
    /// function name (`qa_f1_score`, ...). Serialised as
    /// `{"longbench":{"metric":"qa_f1","first_line_only":false}}`. `classification_score` needs
    /// the sample's `all_classes`: score with [`Sample::score`] or [`score_with_classes`].
    Longbench { metric: crate::longbench::metrics::Metric, first_line_only: bool },
}

impl ScoringKind {
    /// The scoring of a LongBench v1 subset (its `eval.py` metric and first-line rule).
    pub fn longbench(subset: &crate::longbench::prompts::Subset) -> ScoringKind {
        ScoringKind::Longbench { metric: subset.metric, first_line_only: subset.first_line_only }
    }
}

/// A worked example shown before the task, as RULER shows `cwe`'s one-shot example: under a
/// chat template a user turn followed by the assistant's answer, without one the two inline
/// (`user`, `assistant`, then a newline).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exchange {
    pub user: String,
    pub assistant: String,
}

/// A generated task instance. Prompt = `prefix_instruction + context + question`, after any
/// worked `examples`; for RULER tasks `answer_prefix` starts the model's reply (placed after the
/// chat template's assistant header).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub id: String,
    pub task: String,
    /// Worked examples before the task (RULER `cwe`); empty for most tasks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub examples: Vec<Exchange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_instruction: Option<String>,
    /// The long part (what a KV-cache method compresses).
    pub context: String,
    /// Text after the context.
    pub question: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_prefix: Option<String>,
    pub answers: Vec<String>,
    pub scoring: ScoringKind,
    pub max_new_tokens: usize,
    /// Construction facts (length, depth, seed, source files...), sorted by key.
    pub metadata: BTreeMap<String, serde_json::Value>,
}

impl Sample {
    /// The full prompt text without any chat template and without `answer_prefix`: the worked
    /// examples inline, then the task.
    pub fn prompt(&self) -> String {
        let mut s: String = self.examples.iter().map(|e| format!("{}{}\n", e.user, e.assistant)).collect();
        s.push_str(&self.task_prompt());
        s
    }

    /// The task's own prompt, `prefix_instruction + context + question` (the last user turn).
    pub fn task_prompt(&self) -> String {
        let mut s = self.prefix_instruction.clone().unwrap_or_default();
        s.push_str(&self.context);
        s.push_str(&self.question);
        s
    }

    /// The conversation a chat template renders: each worked example as a user turn and the
    /// assistant's answer, then the task as the last user turn.
    pub fn messages(&self) -> Vec<kvformats::chat::ChatMessage> {
        use kvformats::chat::ChatMessage;
        let mut m = Vec::with_capacity(2 * self.examples.len() + 1);
        for e in &self.examples {
            m.push(ChatMessage::new("user", e.user.clone()));
            m.push(ChatMessage::new("assistant", e.assistant.clone()));
        }
        m.push(ChatMessage::new("user", self.task_prompt()));
        m
    }

    /// `prompt() + answer_prefix`: the input text when no chat template is used.
    pub fn plain_input(&self) -> String {
        let mut s = self.prompt();
        s.push_str(self.answer_prefix.as_deref().unwrap_or(""));
        s
    }

    /// The input text the model reads: with `chat`, [`messages`](Sample::messages) rendered by
    /// the template with its generation prompt, then `answer_prefix`; without, [`plain_input`](Sample::plain_input).
    pub fn input_text(&self, chat: Option<&kvformats::chat::ChatTemplate>) -> Result<String, kvformats::chat::ChatError> {
        let Some(tpl) = chat else { return Ok(self.plain_input()) };
        let mut s = tpl.render(&self.messages(), true)?;
        s.push_str(self.answer_prefix.as_deref().unwrap_or(""));
        Ok(s)
    }

    /// `metadata["all_classes"]` as a list of strings (LongBench trec/lsht samples); `None` if
    /// absent, null or not a list of strings.
    pub fn all_classes(&self) -> Option<Vec<String>> {
        self.metadata.get("all_classes")?.as_array()?.iter().map(|v| v.as_str().map(str::to_string)).collect()
    }

    /// Scores of `pred` for this sample: [`score_with_classes`] with the sample's scoring, answers
    /// and `all_classes`. Use this rather than [`score`] for LongBench samples.
    pub fn score(&self, pred: &str) -> Result<BTreeMap<&'static str, f64>, crate::longbench::metrics::MetricError> {
        score_with_classes(self.scoring, pred, &self.answers, self.all_classes().as_deref())
    }
}

/// The metadata key that names the context a sample shares with other samples of its task (a
/// haystack, a document): samples whose contexts are the same text, apart from the needle in it,
/// carry the same value; samples that draw their own context carry none. The report clusters its
/// standard errors on it (`kvreport::paired::CLUSTER_KEY`).
pub const CONTEXT_ID_KEY: &str = "context_id";

/// 64-bit FNV-1a, a stable hash (unlike `std`'s `DefaultHasher`, it does not change between
/// Rust releases): feed bytes with [`write`](Fnv1a64::write), read it with
/// [`finish`](Fnv1a64::finish).
#[derive(Clone, Copy, Debug)]
pub struct Fnv1a64(u64);

impl Default for Fnv1a64 {
    fn default() -> Self {
        Fnv1a64(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a64 {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn write(&mut self, bytes: &[u8]) -> &mut Self {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// 64-bit FNV-1a of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    Fnv1a64::new().write(bytes).finish()
}

/// A [`CONTEXT_ID_KEY`] value from a hash of the shared text: `<kind>-<16 hex digits>`.
pub fn context_id_from_hash(kind: &str, hash: u64) -> String {
    format!("{kind}-{hash:016x}")
}

/// A [`CONTEXT_ID_KEY`] value naming `text` (the shared context without any needle):
/// `<kind>-<FNV-1a 64 of its UTF-8 bytes, 16 hex digits>`.
pub fn context_id(kind: &str, text: &str) -> String {
    context_id_from_hash(kind, fnv1a64(text.as_bytes()))
}

/// Serialise samples as JSON lines (stable: struct field order and sorted metadata).
pub fn to_jsonl(samples: &[Sample]) -> Result<String, serde_json::Error> {
    let mut out = String::new();
    for s in samples {
        out.push_str(&serde_json::to_string(s)?);
        out.push('\n');
    }
    Ok(out)
}

/// The passkey normaliser of longctx_bench `eval_metrics.normalize_answer`: lower case, drop ASCII
/// punctuation, delete the words a/an/the (replaced by nothing), collapse whitespace.
pub fn normalize_passkey(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punct: String = lower.chars().filter(|c| !c.is_ascii_punctuation()).collect();
    let re = articles_regex();
    let no_articles = re.replace_all(&no_punct, "");
    no_articles.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn articles_regex() -> &'static regex::Regex {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| regex::Regex::new(r"\b(a|an|the)\b").unwrap_or_else(|_| unreachable!()))
}

/// Paper `exact_match` for one sample: 1.0 if the normalised answer is a substring of the normalised
/// response, else 0.0.
pub fn passkey_exact_match(answer: &str, response: &str) -> f64 {
    f64::from(u8::from(normalize_passkey(response).contains(&normalize_passkey(answer))))
}

/// Paper `partial_match`: longest common substring of the raw strings (in characters) divided by
/// the answer's length; 0.0 for an empty answer (Python would raise).
pub fn passkey_partial_match(answer: &str, response: &str) -> f64 {
    let a: Vec<char> = answer.chars().collect();
    let b: Vec<char> = response.chars().collect();
    if a.is_empty() {
        return 0.0;
    }
    let mut best = 0usize;
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for &ca in &a {
        for (j, &cb) in b.iter().enumerate() {
            cur[j + 1] = if ca == cb { prev[j] + 1 } else { 0 };
            best = best.max(cur[j + 1]);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    best as f64 / a.len() as f64
}

/// RULER `postprocess_pred`: strip, turn control characters into newlines, strip again.
pub fn ruler_postprocess(pred: &str) -> String {
    let t: String = pred.trim().chars().map(|c| if (c as u32) < 0x20 { '\n' } else { c }).collect();
    t.trim().to_string()
}

/// RULER `string_match_all` for one sample, in [0, 1].
pub fn string_match_all(pred: &str, refs: &[String]) -> f64 {
    if refs.is_empty() {
        return 0.0;
    }
    let p = ruler_postprocess(pred).to_lowercase();
    let hits = refs.iter().filter(|r| p.contains(&r.to_lowercase())).count();
    hits as f64 / refs.len() as f64
}

/// RULER `string_match_part` for one sample, in {0, 1}.
pub fn string_match_part(pred: &str, refs: &[String]) -> f64 {
    let p = ruler_postprocess(pred).to_lowercase();
    f64::from(u8::from(refs.iter().any(|r| p.contains(&r.to_lowercase()))))
}

/// Fraction of key phrases present in the prediction after [`normalize_passkey`].
pub fn key_phrase_match(pred: &str, phrases: &[String]) -> f64 {
    if phrases.is_empty() {
        return 0.0;
    }
    let p = normalize_passkey(pred);
    let hits = phrases.iter().filter(|k| p.contains(&normalize_passkey(k))).count();
    hits as f64 / phrases.len() as f64
}

/// Scores of one prediction, by metric name, each in [0, 1]. The LongBench kinds call
/// `crate::longbench::metrics` and, like LongBench's scorer, take the best over the answers.
/// Same as [`score_with_classes`] without `all_classes`, so a [`ScoringKind::Longbench`] kind
/// with `classification_score` fails with [`MissingClasses`](crate::longbench::MetricError):
/// use [`Sample::score`] for LongBench samples.
pub fn score(kind: ScoringKind, pred: &str, answers: &[String]) -> Result<BTreeMap<&'static str, f64>, crate::longbench::metrics::MetricError> {
    score_with_classes(kind, pred, answers, None)
}

/// [`score`] with LongBench's `all_classes` (used by `classification_score` only).
pub fn score_with_classes(
    kind: ScoringKind,
    pred: &str,
    answers: &[String],
    all_classes: Option<&[String]>,
) -> Result<BTreeMap<&'static str, f64>, crate::longbench::metrics::MetricError> {
    use crate::longbench::metrics as lb;
    let best = |f: &dyn Fn(&str) -> Result<f64, lb::MetricError>| -> Result<f64, lb::MetricError> {
        let mut m = 0.0f64;
        for a in answers {
            m = m.max(f(a)?);
        }
        Ok(m)
    };
    let mut m = BTreeMap::new();
    match kind {
        ScoringKind::Passkey => {
            let ans = answers.first().map(String::as_str).unwrap_or("");
            m.insert("exact_match", passkey_exact_match(ans, pred));
            m.insert("partial_match", passkey_partial_match(ans, pred));
        }
        ScoringKind::KeyPhrases => {
            m.insert("key_phrase_match", key_phrase_match(pred, answers));
        }
        ScoringKind::RulerMatchAll => {
            m.insert("string_match_all", string_match_all(pred, answers));
        }
        ScoringKind::RulerMatchPart => {
            m.insert("string_match_part", string_match_part(pred, answers));
        }
        ScoringKind::LongbenchRetrieval => {
            m.insert("retrieval_score", best(&|a| lb::retrieval_score(pred, a))?);
        }
        ScoringKind::LongbenchCount => {
            m.insert("count_score", best(&|a| Ok(lb::count_score(pred, a)))?);
        }
        ScoringKind::LongbenchCodeSim => {
            m.insert("code_sim_score", best(&|a| Ok(lb::code_sim_score(pred, a)))?);
        }
        ScoringKind::Longbench { metric, first_line_only } => {
            let s = crate::longbench::score::score_with_metric(metric, first_line_only, pred, answers, all_classes)?;
            m.insert(metric.function_name(), s);
        }
    }
    Ok(m)
}

/// Errors of the task generators.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("reading {path}: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error("parsing {path}: {detail}")]
    Parse { path: std::path::PathBuf, detail: String },
    #[error("invalid task config: {key}: {detail}")]
    Config { key: String, detail: String },
    #[error("data set `{name}` has too little text: {detail}")]
    NotEnoughData { name: String, detail: String },
    #[error("target length {target} tokens is too small: the fixed parts alone need {needed}")]
    TooShort { target: usize, needed: usize },
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    #[error(transparent)]
    LongBench(#[from] crate::longbench::dataset::DataError),
}

/// Read a UTF-8 text file with path context.
pub(crate) fn read_text(path: &std::path::Path) -> Result<String, TaskError> {
    std::fs::read_to_string(path).map_err(|source| TaskError::Io { path: path.to_path_buf(), source })
}

/// Sorted regular files of `dir` whose names end with `ext` (e.g. ".txt").
pub(crate) fn sorted_files(dir: &std::path::Path, ext: &str) -> Result<Vec<std::path::PathBuf>, TaskError> {
    let rd = std::fs::read_dir(dir).map_err(|source| TaskError::Io { path: dir.to_path_buf(), source })?;
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|source| TaskError::Io { path: dir.to_path_buf(), source })?;
        let p = e.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if p.is_file() && !name.starts_with('.') && name.ends_with(ext) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// Split text into sentences: a sentence ends at `.`, `!` or `?` (optionally followed by closing
/// quotes/brackets) followed by whitespace. A simple stand-in for NLTK's `sent_tokenize`.
pub fn split_sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut start = 0usize;
    let mut i = 0usize;
    while i < chars.len() {
        let (_, c) = chars[i];
        if matches!(c, '.' | '!' | '?') {
            let mut j = i + 1;
            while j < chars.len() && matches!(chars[j].1, '"' | '\'' | ')' | ']' | '”' | '’') {
                j += 1;
            }
            if j >= chars.len() || chars[j].1.is_whitespace() {
                let end = if j < chars.len() { chars[j].0 } else { text.len() };
                let s = text[start..end].trim();
                if !s.is_empty() {
                    out.push(s.to_string());
                }
                start = end;
                i = j;
                continue;
            }
        }
        i += 1;
    }
    let tail = text[start..].trim();
    if !tail.is_empty() {
        out.push(tail.to_string());
    }
    out
}
