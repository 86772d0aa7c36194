//! A RULER-style synthetic suite (NVIDIA/RULER `scripts/data/synthetic`): the eight NIAH variants,
//! variable tracking, common-words and frequent-words extraction, with RULER's templates, answer
//! prefixes, generation lengths and `string_match_all` scoring, generated for any token length.
//!
//! Built from RULER's documented behaviour, not its code. Differences, all deliberate:
//! - randomness: CPython's MT19937 ([`PyRandom`]) with one stream per sample (`derive_seed(seed, i)`),
//!   so sample *i* does not depend on how many samples are drawn; RULER shares one global stream;
//! - the essay haystack is the `pg_essays` data set in sorted file order (RULER downloads its own
//!   Paul Graham essay collection), split into sentences by [`split_sentences`] (not NLTK punkt);
//! - word keys come from the wonderwords 2.2.0 lists (`wonderwords` data set) as in RULER, but an
//!   adjective and a noun are drawn independently instead of from the materialised product list;
//! - keys (and values) within one sample are kept distinct so every question has one right answer;
//! - common-words extraction uses only the wonderwords lists (RULER falls back to its own
//!   `english_words.json` for very long inputs); a length needing more words than that is an error.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::json;

use crate::pyrandom::{derive_seed, PyRandom};
use crate::sample::{
    context_id, context_id_from_hash, read_text, sorted_files, split_sentences, Exchange, Fnv1a64, Sample, ScoringKind, TaskError, TextTokenizer,
    CONTEXT_ID_KEY,
};

/// RULER's noise haystack sentence.
pub const NOISE: &str = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";

/// Text the generators draw from.
#[derive(Clone, Debug)]
pub struct RulerResources {
    /// The essay haystack as whitespace-separated words.
    pub essay_words: Vec<String>,
    pub nouns: Vec<String>,
    pub adjectives: Vec<String>,
    pub verbs: Vec<String>,
}

fn read_word_list(path: &Path) -> Result<Vec<String>, TaskError> {
    Ok(read_text(path)?.lines().map(|l| l.trim_end().to_string()).filter(|l| !l.is_empty()).collect())
}

impl RulerResources {
    /// From a folder of essays (`*.txt`, sorted) and a wonderwords assets folder.
    pub fn load(essay_dir: &Path, wonderwords_dir: &Path) -> Result<Self, TaskError> {
        let mut text = String::new();
        for p in sorted_files(essay_dir, ".txt")? {
            text.push_str(&read_text(&p)?);
            text.push(' ');
        }
        let essay_words: Vec<String> = text.split_whitespace().map(str::to_string).collect();
        let res = RulerResources {
            essay_words,
            nouns: read_word_list(&wonderwords_dir.join("nounlist.txt"))?,
            adjectives: read_word_list(&wonderwords_dir.join("adjectivelist.txt"))?,
            verbs: read_word_list(&wonderwords_dir.join("verblist.txt"))?,
        };
        if res.essay_words.is_empty() || res.nouns.is_empty() || res.adjectives.is_empty() {
            return Err(TaskError::NotEnoughData { name: "ruler resources".into(), detail: "empty essays or word lists".into() });
        }
        Ok(res)
    }

    /// From the fetched `pg_essays` and `wonderwords` data sets.
    pub fn from_cache() -> Result<Self, TaskError> {
        Self::load(&crate::data::data_dir("pg_essays")?, &crate::data::data_dir("wonderwords")?)
    }
}

/// What fills the space around the needles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Haystack {
    Noise,
    Essay,
    /// Distractor needles with random keys and values.
    Needle,
}

/// Kind of a needle key or value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NeedleType {
    Numbers,
    Words,
    Uuids,
}

impl NeedleType {
    fn plural(self) -> &'static str {
        match self {
            NeedleType::Numbers => "numbers",
            NeedleType::Words => "words",
            NeedleType::Uuids => "uuids",
        }
    }
}

/// NIAH configuration (RULER `niah.py` arguments).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NiahSpec {
    pub haystack: Haystack,
    pub key: NeedleType,
    pub value: NeedleType,
    pub num_k: usize,
    pub num_v: usize,
    pub num_q: usize,
}

/// The RULER synthetic tasks (names as in RULER's `synthetic.yaml`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RulerTask {
    NiahSingle1,
    NiahSingle2,
    NiahSingle3,
    NiahMultikey1,
    NiahMultikey2,
    NiahMultikey3,
    NiahMultivalue,
    NiahMultiquery,
    Vt,
    Cwe,
    Fwe,
}

/// All tasks in RULER's order.
pub const RULER_TASKS: [RulerTask; 11] = [
    RulerTask::NiahSingle1,
    RulerTask::NiahSingle2,
    RulerTask::NiahSingle3,
    RulerTask::NiahMultikey1,
    RulerTask::NiahMultikey2,
    RulerTask::NiahMultikey3,
    RulerTask::NiahMultivalue,
    RulerTask::NiahMultiquery,
    RulerTask::Vt,
    RulerTask::Cwe,
    RulerTask::Fwe,
];

impl RulerTask {
    /// RULER's task name.
    pub fn name(self) -> &'static str {
        match self {
            RulerTask::NiahSingle1 => "niah_single_1",
            RulerTask::NiahSingle2 => "niah_single_2",
            RulerTask::NiahSingle3 => "niah_single_3",
            RulerTask::NiahMultikey1 => "niah_multikey_1",
            RulerTask::NiahMultikey2 => "niah_multikey_2",
            RulerTask::NiahMultikey3 => "niah_multikey_3",
            RulerTask::NiahMultivalue => "niah_multivalue",
            RulerTask::NiahMultiquery => "niah_multiquery",
            RulerTask::Vt => "vt",
            RulerTask::Cwe => "cwe",
            RulerTask::Fwe => "fwe",
        }
    }

    /// Parse a RULER task name.
    pub fn from_name(name: &str) -> Option<Self> {
        RULER_TASKS.iter().copied().find(|t| t.name() == name)
    }

    /// The NIAH settings of the `niah_*` tasks.
    pub fn niah_spec(self) -> Option<NiahSpec> {
        use Haystack::*;
        use NeedleType::*;
        let s = |haystack, key, value, num_k, num_v, num_q| Some(NiahSpec { haystack, key, value, num_k, num_v, num_q });
        match self {
            RulerTask::NiahSingle1 => s(Noise, Words, Numbers, 1, 1, 1),
            RulerTask::NiahSingle2 => s(Essay, Words, Numbers, 1, 1, 1),
            RulerTask::NiahSingle3 => s(Essay, Words, Uuids, 1, 1, 1),
            RulerTask::NiahMultikey1 => s(Essay, Words, Numbers, 4, 1, 1),
            RulerTask::NiahMultikey2 => s(Needle, Words, Numbers, 1, 1, 1),
            RulerTask::NiahMultikey3 => s(Needle, Uuids, Uuids, 1, 1, 1),
            RulerTask::NiahMultivalue => s(Essay, Words, Numbers, 1, 4, 1),
            RulerTask::NiahMultiquery => s(Essay, Words, Numbers, 1, 1, 4),
            _ => None,
        }
    }

    /// RULER's `tokens_to_generate`.
    pub fn tokens_to_generate(self) -> usize {
        match self {
            RulerTask::Vt => 30,
            RulerTask::Cwe => 120,
            RulerTask::Fwe => 50,
            _ => 128,
        }
    }
}

/// Length and sampling settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RulerConfig {
    /// Input tokens plus `tokens_to_generate` must not exceed this (RULER's `max_seq_length`).
    pub max_seq_length: usize,
    pub num_samples: usize,
    pub seed: u64,
}

/// A generated input, split the way [`Sample`] wants it.
#[derive(Clone, Debug)]
struct Parts {
    /// Worked examples before the task (`cwe`'s one-shot example).
    examples: Vec<Exchange>,
    prefix: String,
    context: String,
    question: String,
    answer_prefix: String,
    answers: Vec<String>,
    meta: BTreeMap<String, serde_json::Value>,
}

impl Parts {
    /// The input text without a chat template (the examples inline).
    fn full(&self) -> String {
        let examples: String = self.examples.iter().map(|e| format!("{}{}\n", e.user, e.assistant)).collect();
        format!("{examples}{}{}{}{}", self.prefix, self.context, self.question, self.answer_prefix)
    }

    /// The sample these parts make (`metadata` left to the caller).
    fn into_sample(self, task: RulerTask, max_seq_length: usize, i: usize) -> (Sample, BTreeMap<String, serde_json::Value>) {
        let sample = Sample {
            id: ruler_sample_id(task, max_seq_length, i),
            task: format!("ruler_{}", task.name()),
            examples: self.examples,
            prefix_instruction: Some(self.prefix),
            context: self.context,
            question: self.question,
            answer_prefix: Some(self.answer_prefix),
            answers: self.answers,
            scoring: ScoringKind::RulerMatchAll,
            max_new_tokens: task.tokens_to_generate(),
            metadata: BTreeMap::new(),
        };
        (sample, self.meta)
    }
}

// ----- random keys and values -----

fn random_number(rng: &mut PyRandom) -> String {
    rng.randint(1_000_000, 9_999_999).to_string()
}

fn random_word(rng: &mut PyRandom, res: &RulerResources) -> String {
    let a = rng.choice(&res.adjectives).cloned().unwrap_or_default();
    let n = rng.choice(&res.nouns).cloned().unwrap_or_default();
    format!("{a}-{n}")
}

/// A version-4 UUID from 128 random bits (like `uuid.UUID(int=getrandbits(128), version=4)`).
fn random_uuid(rng: &mut PyRandom) -> String {
    let mut v = rng.getrandbits(128);
    v &= !(0xc000u128 << 48);
    v |= 0x8000u128 << 48;
    v &= !(0xf000u128 << 64);
    v |= 4u128 << 76;
    let h = format!("{v:032x}");
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn random_of(t: NeedleType, rng: &mut PyRandom, res: &RulerResources) -> String {
    match t {
        NeedleType::Numbers => random_number(rng),
        NeedleType::Words => random_word(rng, res),
        NeedleType::Uuids => random_uuid(rng),
    }
}

fn distinct(t: NeedleType, rng: &mut PyRandom, res: &RulerResources, used: &mut BTreeSet<String>) -> String {
    loop {
        let v = random_of(t, rng, res);
        if used.insert(v.clone()) {
            return v;
        }
    }
}

/// `np.round(np.linspace(0, 100, 40)).astype(int)`.
fn depths40() -> Vec<i64> {
    crate::needle::linspace_rounded(0.0, 100.0, 40)
}

/// The [`CONTEXT_ID_KEY`] of the noise haystack of `n` sentences (the niah noise branch and
/// variable tracking, before the needles or the chain go in): `ruler-noise-` and the FNV-1a 64
/// hash of `n` copies of [`NOISE`] joined by newlines. It depends on `n` alone.
pub fn noise_context_id(n: usize) -> String {
    let mut h = Fnv1a64::new();
    for i in 0..n {
        if i > 0 {
            h.write(b"\n");
        }
        h.write(NOISE.as_bytes());
    }
    context_id_from_hash("ruler-noise", h.finish())
}

/// The [`CONTEXT_ID_KEY`] of an essay haystack whose text (before the needles go in) is `text`:
/// `ruler-essay-` and the FNV-1a 64 hash of the text.
pub fn essay_context_id(text: &str) -> String {
    context_id("ruler-essay", text)
}

/// Insert `needles` into the essay sentences at sampled depths (RULER's essay branch); also the
/// [`essay_context_id`] of the haystack (the first `n` words, cycled, without the needles).
fn essay_context(words: &[String], n: usize, needles: &[String], rng: &mut PyRandom) -> (String, Vec<i64>, String) {
    let mut picked = Vec::with_capacity(n);
    if !words.is_empty() {
        for i in 0..n {
            picked.push(words[i % words.len()].as_str());
        }
    }
    let haystack = picked.join(" ");
    let cid = essay_context_id(&haystack);
    let sents = split_sentences(&haystack);
    let depths = rng.sample(&depths40(), needles.len());
    let mut pos: Vec<usize> = depths.iter().map(|d| (sents.len() as f64 * (*d as f64 / 100.0)) as usize).collect();
    pos.sort_unstable();
    let mut bounds = vec![0usize];
    bounds.extend(pos);
    bounds.push(sents.len());
    let mut parts = Vec::new();
    for i in 1..bounds.len() {
        parts.push(sents[bounds[i - 1]..bounds[i]].join(" "));
        if let Some(nd) = needles.get(i - 1) {
            parts.push(nd.clone());
        }
    }
    (parts.join(" "), depths, cid)
}

fn niah_parts(spec: &NiahSpec, n: usize, rng: &mut PyRandom, res: &RulerResources) -> Parts {
    let num_k = spec.num_k.max(spec.num_q);
    let vplural = spec.value.plural();
    let needle_fmt = |k: &str, v: &str| format!("One of the special magic {vplural} for {k} is: {v}.");
    let mut used = BTreeSet::new();
    let mut keys = Vec::new();
    let mut values: Vec<Vec<String>> = Vec::new();
    let mut needles = Vec::new();
    for _ in 0..num_k {
        let k = distinct(spec.key, rng, res, &mut used);
        let mut vs = Vec::new();
        for _ in 0..spec.num_v {
            let v = distinct(spec.value, rng, res, &mut used);
            needles.push(needle_fmt(&k, &v));
            vs.push(v);
        }
        keys.push(k);
        values.push(vs);
    }
    rng.shuffle(&mut needles);
    let mut meta = BTreeMap::new();
    let context = match spec.haystack {
        Haystack::Essay => {
            let (c, depths, cid) = essay_context(&res.essay_words, n, &needles, rng);
            meta.insert("needle_depths_percent".into(), json!(depths));
            meta.insert(CONTEXT_ID_KEY.into(), json!(cid));
            c
        }
        Haystack::Noise | Haystack::Needle => {
            let mut sents: Vec<String> = (0..n)
                .map(|_| match spec.haystack {
                    Haystack::Noise => NOISE.to_string(),
                    _ => {
                        let k = distinct(spec.key, rng, res, &mut used);
                        let v = distinct(spec.value, rng, res, &mut used);
                        needle_fmt(&k, &v)
                    }
                })
                .collect();
            let mut idx = rng.sample_indices(n, needles.len());
            idx.sort_unstable_by(|a, b| b.cmp(a));
            for (i, nd) in idx.into_iter().zip(&needles) {
                sents.insert(i, nd.clone());
            }
            // The noise haystack is the same for every sample with this `n`; distractor needles
            // are drawn per sample, so that haystack is the sample's own (no id).
            if spec.haystack == Haystack::Noise {
                meta.insert(CONTEXT_ID_KEY.into(), json!(noise_context_id(n)));
            }
            sents.join("\n")
        }
    };
    let q_idx = rng.sample_indices(num_k, spec.num_q);
    let queries: Vec<&str> = q_idx.iter().filter_map(|&i| keys.get(i).map(String::as_str)).collect();
    let answers: Vec<String> = q_idx.iter().filter_map(|&i| values.get(i)).flatten().cloned().collect();
    let query = match queries.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{}, and {last}", rest.join(", ")),
        Some((last, _)) => last.to_string(),
        None => String::new(),
    };
    let mut prefix =
        String::from("Some special magic {v} are hidden within the following text. Make sure to memorize it. I will quiz you about the {v} afterwards.\n");
    let mut question = String::from("\nWhat are all the special magic {v} for {q} mentioned in the provided text?");
    let mut answer_prefix = String::from(" The special magic {v} for {q} mentioned in the provided text are");
    let mut v = vplural.to_string();
    if spec.num_q * spec.num_v == 1 {
        for t in [&mut prefix, &mut question, &mut answer_prefix] {
            *t = t.replace("Some", "A").replace("are all", "is").replace("are", "is").replace("answers", "answer");
        }
        v.pop();
    }
    let fill = |t: &str| t.replace("{v}", &v).replace("{q}", &query);
    Parts { examples: Vec::new(), prefix: fill(&prefix), context, question: fill(&question), answer_prefix: fill(&answer_prefix), answers, meta }
}

fn random_var(rng: &mut PyRandom, len: usize) -> String {
    const UP: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    // random.choices: floor(random() * n) per pick.
    (0..len).map(|_| char::from(UP[((rng.random() * 26.0) as usize).min(25)])).collect()
}

fn vt_core(n_noise: usize, hops: usize, var_len: usize, rng: &mut PyRandom) -> Parts {
    let mut vars: Vec<String> = Vec::new();
    while vars.len() < hops + 1 {
        let v = random_var(rng, var_len);
        if !vars.contains(&v) {
            vars.push(v);
        }
    }
    let value = rng.randint(10000, 99998).to_string();
    let mut chain = vec![format!("VAR {} = {value}", vars[0])];
    for j in 0..hops {
        chain.push(format!("VAR {} = VAR {} ", vars[j + 1], vars[j]));
    }
    let mut sents: Vec<String> = vec![NOISE.to_string(); n_noise];
    let mut pos = rng.sample_indices(sents.len(), chain.len());
    pos.sort_unstable();
    for (j, p) in pos.into_iter().enumerate() {
        sents.insert(p + j, chain[j].clone());
    }
    let context = sents.join("\n").replace(". \n", ".\n");
    Parts {
        examples: Vec::new(),
        prefix: "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n".into(),
        context,
        question: format!("\nQuestion: Find all variables that are assigned the value {value} in the text above."),
        answer_prefix: format!(
            " Answer: According to the chain(s) of variable assignment in the text above, {} variables are assigned the value {value}, they are: ",
            hops + 1
        ),
        answers: vars,
        // The noise around the chain depends on `n_noise` alone (`replace` leaves pure noise as is).
        meta: BTreeMap::from([(CONTEXT_ID_KEY.to_string(), json!(noise_context_id(n_noise)))]),
    }
}

const VT_HOPS: usize = 4;

/// The in-context example RULER prepends to variable tracking (a short instance, up to 500 tokens,
/// followed by its answer and a newline; [`vt_parts`] adds the newline RULER inserts before the
/// task, so the two are separated by a blank line).
fn vt_icl(tok: &dyn TextTokenizer, rng: &mut PyRandom) -> String {
    let probe = rng.clone();
    let fits = |n: usize| tok.count(&vt_core(n, VT_HOPS, 3, &mut probe.clone()).full()) <= 500;
    let mut n = 5;
    while n < 1000 && fits(n + 5) {
        n += 5;
    }
    let ex = vt_core(n, VT_HOPS, 3, rng);
    format!("{} {}\n", ex.full(), ex.answers.join(" "))
}

fn vt_parts(n: usize, rng: &mut PyRandom, icl: &str) -> Parts {
    let mut p = vt_core(n, VT_HOPS, 5, rng);
    // RULER: `input[:cutoff] + icl_example + '\n' + input[cutoff:]`, the example ending in '\n'.
    p.prefix = if icl.is_empty() { p.prefix } else { format!("{icl}\n{}", p.prefix) };
    p
}

const CWE_TEMPLATE_HEAD: &str =
    "Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones that appear most often.\n";
const CWE_QUESTION: &str = "\nQuestion: What are the 10 most common words in the above list?";
const CWE_ANSWER_PREFIX: &str = " Answer: The top 10 words that appear most often in the list are:";

fn numbered(words: &[String]) -> String {
    words.iter().enumerate().map(|(i, w)| format!("{}. {w}", i + 1)).collect::<Vec<_>>().join(" ")
}

fn cwe_example(words: &[String], n: usize, common_rep: usize, uncommon_rep: usize, rng: &mut PyRandom) -> (String, Vec<String>) {
    let full = rng.sample(words, n);
    let (common, uncommon) = full.split_at(10.min(full.len()));
    let mut list = Vec::new();
    for _ in 0..common_rep {
        list.extend_from_slice(common);
    }
    for _ in 0..uncommon_rep {
        list.extend_from_slice(uncommon);
    }
    rng.shuffle(&mut list);
    (numbered(&list), common.to_vec())
}

fn cwe_parts(words: &[String], n: usize, long: bool, rng: &mut PyRandom) -> Parts {
    let (ex_n, ex_c, ex_u, c, u) = if long { (40, 10, 3, 30, 3) } else { (20, 3, 1, 6, 1) };
    let (ex_ctx, ex_ans) = cwe_example(words, ex_n, ex_c, ex_u, rng);
    // RULER formats the example with the whole template, the model's included, and appends its
    // answer after the answer prefix: under a chat template the answer is the assistant's turn.
    let example = Exchange { user: format!("{CWE_TEMPLATE_HEAD}{ex_ctx}{CWE_QUESTION}"), assistant: format!("{CWE_ANSWER_PREFIX} {}", numbered(&ex_ans)) };
    let (ctx, ans) = cwe_example(words, n, c, u, rng);
    Parts {
        examples: vec![example],
        prefix: CWE_TEMPLATE_HEAD.into(),
        context: ctx,
        question: CWE_QUESTION.into(),
        answer_prefix: CWE_ANSWER_PREFIX.into(),
        answers: ans,
        meta: BTreeMap::new(),
    }
}

fn fwe_parts(n_words: usize, vocab_size: usize, rng: &mut PyRandom) -> Parts {
    const LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
    let mut set = BTreeSet::new();
    while set.len() < vocab_size.max(4) {
        let w: String = (0..6).map(|_| char::from(LOWER[((rng.random() * 26.0) as usize).min(25)])).collect();
        set.insert(w);
    }
    let mut vocab: Vec<String> = set.into_iter().collect();
    rng.shuffle(&mut vocab);
    vocab[0] = "...".into();
    let zeta2 = std::f64::consts::PI * std::f64::consts::PI / 6.0;
    let mut sampled = Vec::new();
    for (k, w) in vocab.iter().enumerate() {
        let cnt = (n_words as f64 * ((k + 1) as f64).powf(-2.0) / zeta2) as usize;
        for _ in 0..cnt {
            sampled.push(w.clone());
        }
    }
    rng.shuffle(&mut sampled);
    Parts {
        examples: Vec::new(),
        prefix: "Read the following coded text and track the frequency of each coded word. Find the three most frequently appeared coded words. ".into(),
        context: sampled.join(" "),
        question: "\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the three most frequently appeared words in the above coded text?".into(),
        answer_prefix: " Answer: According to the coded text above, the three most frequently appeared words are:".into(),
        answers: vocab[1..4].to_vec(),
        meta: BTreeMap::new(),
    }
}

/// Largest `n` in `[lo, cap]` with `fits(n)` (fits assumed monotone), by doubling then bisection;
/// `None` if `fits(lo)` fails.
fn largest_fitting(lo: usize, cap: usize, fits: &dyn Fn(usize) -> bool) -> Option<usize> {
    if lo > cap || !fits(lo) {
        return None;
    }
    let mut good = lo;
    let mut probe = lo.max(1) * 2;
    let bad = loop {
        if probe >= cap {
            if fits(cap) {
                return Some(cap);
            }
            break cap;
        }
        if fits(probe) {
            good = probe;
            probe *= 2;
        } else {
            break probe;
        }
    };
    let mut bad = bad;
    while bad - good > 1 {
        let mid = good + (bad - good) / 2;
        if fits(mid) {
            good = mid;
        } else {
            bad = mid;
        }
    }
    Some(good)
}

/// Generate `cfg.num_samples` samples of `task`, each as long as possible with
/// `tokens(input) + tokens_to_generate <= max_seq_length`, where the input is what the model
/// reads, its chat template included as RULER counts it ([`TextTokenizer::count_input`]; the
/// haystack size is searched once on sample 0's stream, then shrunk per sample by RULER's
/// increment if needed). `metadata.input_tokens` is that count.
///
/// Where the haystack is a function of its size alone — the noise and essay haystacks of the
/// NIAH tasks, and the noise around variable tracking's chain — the samples with the same
/// haystack size (`haystack_units`) share it, and their metadata carry [`CONTEXT_ID_KEY`]
/// ([`noise_context_id`], [`essay_context_id`]). The distractor-needle haystacks
/// (`niah_multikey_2/3`), `cwe` and `fwe` draw their whole context per sample and carry none.
pub fn ruler_samples(task: RulerTask, cfg: &RulerConfig, res: &RulerResources, tok: &dyn TextTokenizer) -> Result<Vec<Sample>, TaskError> {
    ruler_samples_where(task, cfg, res, tok, &|_| true)
}

/// The id of `task`'s sample `i` at `max_seq_length`.
pub fn ruler_sample_id(task: RulerTask, max_seq_length: usize, i: usize) -> String {
    format!("ruler-{}-{max_seq_length}-{i}", task.name())
}

/// [`ruler_samples`] whose id `keep` accepts, the others not built at all. Each sample draws
/// from its own seeded stream and the haystack size starts from sample 0's (sized whether or
/// not it is kept), so the kept samples are the same either way.
pub fn ruler_samples_where(
    task: RulerTask,
    cfg: &RulerConfig,
    res: &RulerResources,
    tok: &dyn TextTokenizer,
    keep: &dyn Fn(&str) -> bool,
) -> Result<Vec<Sample>, TaskError> {
    let ttg = task.tokens_to_generate();
    let budget = cfg.max_seq_length.saturating_sub(ttg);
    let mut cwe_words: Vec<String> = Vec::new();
    let mut icls: Vec<String> = Vec::new();
    if task == RulerTask::Cwe {
        let set: BTreeSet<String> = res.nouns.iter().chain(&res.adjectives).chain(&res.verbs).cloned().collect();
        cwe_words = set.into_iter().collect();
        PyRandom::new(cfg.seed).shuffle(&mut cwe_words);
    }
    let vocab_size = budget / 50;
    let (lo, step, cap) = match task {
        RulerTask::Vt => (5, 5, 1 << 20),
        RulerTask::Cwe => (11, 10, cwe_words.len()),
        RulerTask::Fwe => (16, 16, 1 << 24),
        _ => match task.niah_spec().map(|s| s.haystack) {
            Some(Haystack::Essay) => (100, 500, 1 << 24),
            _ if cfg.max_seq_length < 4096 => (5, 5, 1 << 20),
            _ => (5, 25, 1 << 20),
        },
    };
    if task == RulerTask::Vt {
        for i in 0..cfg.num_samples {
            // Sample 0's example sizes the haystack, kept or not.
            if i > 0 && !keep(&ruler_sample_id(task, cfg.max_seq_length, i)) {
                icls.push(String::new());
                continue;
            }
            let mut r = PyRandom::new(derive_seed(cfg.seed ^ 0x1c1, i as u64));
            icls.push(vt_icl(tok, &mut r));
        }
    }
    let long = cfg.max_seq_length >= 4096;
    let gen = |n: usize, i: usize, rng: &mut PyRandom| -> Parts {
        match task {
            RulerTask::Vt => vt_parts(n, rng, icls.get(i).map(String::as_str).unwrap_or("")),
            RulerTask::Cwe => cwe_parts(&cwe_words, n, long, rng),
            RulerTask::Fwe => fwe_parts(n, vocab_size, rng),
            _ => match task.niah_spec() {
                Some(spec) => niah_parts(&spec, n, rng, res),
                None => unreachable!("every other task is a NIAH task"),
            },
        }
    };
    let stream = |i: usize| PyRandom::new(derive_seed(cfg.seed, i as u64));
    // RULER sizes the input with the model's template inside `max_seq_length`.
    let count = |p: Parts, i: usize| tok.count_input(&p.into_sample(task, cfg.max_seq_length, i).0);
    let fits_i = |n: usize, i: usize| count(gen(n, i, &mut stream(i)), i) <= budget;
    let n0 = match largest_fitting(lo, cap, &|n| fits_i(n, 0)) {
        Some(n) => n,
        None => {
            let needed = count(gen(lo, 0, &mut stream(0)), 0) + ttg;
            return Err(TaskError::TooShort { target: cfg.max_seq_length, needed });
        }
    };
    let mut out = Vec::new();
    for i in 0..cfg.num_samples {
        if !keep(&ruler_sample_id(task, cfg.max_seq_length, i)) {
            continue;
        }
        let mut n = n0;
        while n > lo && !fits_i(n, i) {
            n = n.saturating_sub(step).max(lo);
        }
        let (mut sample, meta) = gen(n, i, &mut stream(i)).into_sample(task, cfg.max_seq_length, i);
        let input_tokens = tok.count_input(&sample);
        if input_tokens > budget {
            return Err(TaskError::TooShort { target: cfg.max_seq_length, needed: input_tokens + ttg });
        }
        let mut metadata = meta;
        metadata.insert("max_seq_length".into(), json!(cfg.max_seq_length));
        metadata.insert("input_tokens".into(), json!(input_tokens));
        metadata.insert("haystack_units".into(), json!(n));
        metadata.insert("seed".into(), json!(cfg.seed));
        metadata.insert("index".into(), json!(i));
        sample.metadata = metadata;
        out.push(sample);
    }
    Ok(out)
}
