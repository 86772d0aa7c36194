//! Real-text long-context tasks built offline from public-domain packages (State of the Union,
//! Moby-Dick, the KJV Bible) and from real Python source (gguf 0.19.0): passage retrieval and
//! passage counting shaped like LongBench's `passage_retrieval_en` / `passage_count`, and next-line
//! code completion shaped like LongBench's `lcc`. Each is generated for a target prompt length in
//! tokens from a seed; construction details are in `kvtasks/TASKS.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::pyrandom::{derive_seed, PyRandom};
use crate::sample::{read_text, sorted_files, split_sentences, Sample, ScoringKind, TaskError, TextTokenizer};

/// A document of a corpus.
#[derive(Clone, Debug, PartialEq)]
pub struct Doc {
    pub id: String,
    pub title: String,
    pub text: String,
}

/// Which public-domain corpus.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CorpusName {
    Sotu,
    MobyDick,
    Kjv,
}

impl CorpusName {
    /// The `kvtasks::data` set holding it.
    pub fn dataset(self) -> &'static str {
        match self {
            CorpusName::Sotu => "sotu",
            CorpusName::MobyDick => "moby_dick",
            CorpusName::Kjv => "kjv",
        }
    }
    fn described(self) -> &'static str {
        match self {
            CorpusName::Sotu => "State of the Union addresses",
            CorpusName::MobyDick => "the novel Moby-Dick",
            CorpusName::Kjv => "the King James Bible",
        }
    }
}

/// Documents of one corpus, in a fixed order.
#[derive(Clone, Debug)]
pub struct Corpus {
    pub name: CorpusName,
    pub docs: Vec<Doc>,
}

fn parse_err(path: &Path, detail: impl Into<String>) -> TaskError {
    TaskError::Parse { path: path.to_path_buf(), detail: detail.into() }
}

impl Corpus {
    /// Load `name` from its data folder (see [`CorpusName::dataset`]).
    pub fn load(name: CorpusName, dir: &Path) -> Result<Self, TaskError> {
        let docs = match name {
            CorpusName::Sotu => {
                let mut docs = Vec::new();
                for p in sorted_files(dir, ".json")? {
                    let v: serde_json::Value = serde_json::from_str(&read_text(&p)?).map_err(|e| parse_err(&p, e.to_string()))?;
                    let text = v.get("text").and_then(|t| t.as_str()).ok_or_else(|| parse_err(&p, "no `text` string"))?;
                    let year = v.get("year").map(|y| y.to_string()).unwrap_or_default();
                    let who = v.get("name").and_then(|n| n.as_str()).unwrap_or("");
                    let id = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                    docs.push(Doc { id, title: format!("{year} {who}"), text: text.to_string() });
                }
                docs
            }
            CorpusName::MobyDick => {
                let mut numbered = Vec::new();
                for p in sorted_files(dir, ".json")? {
                    let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                    let Some(n) = stem.strip_prefix("chapter_").and_then(|n| n.parse::<u32>().ok()) else { continue };
                    let v: serde_json::Value = serde_json::from_str(&read_text(&p)?).map_err(|e| parse_err(&p, e.to_string()))?;
                    let text = v.get("text").and_then(|t| t.as_str()).ok_or_else(|| parse_err(&p, "no `text` string"))?;
                    let title = v.get("title").and_then(|t| t.as_str()).unwrap_or("");
                    numbered.push((n, Doc { id: stem.clone(), title: format!("CHAPTER {n}. {title}"), text: text.to_string() }));
                }
                numbered.sort_by_key(|(n, _)| *n);
                numbered.into_iter().map(|(_, d)| d).collect()
            }
            CorpusName::Kjv => parse_kjv(&read_text(&dir.join("kjv.txt"))?),
        };
        if docs.len() < 4 {
            return Err(TaskError::NotEnoughData { name: name.dataset().into(), detail: format!("{} documents", docs.len()) });
        }
        Ok(Corpus { name, docs })
    }

    /// Load from the fetched data set.
    pub fn from_cache(name: CorpusName) -> Result<Self, TaskError> {
        Self::load(name, &crate::data::data_dir(name.dataset())?)
    }
}

/// Split the `bible` program's output into chapters: a header line such as `Genesis 1` stands
/// between blank lines; verse lines start with spaces and the verse number, which is dropped.
pub fn parse_kjv(text: &str) -> Vec<Doc> {
    let lines: Vec<&str> = text.lines().collect();
    let verse = regex::Regex::new(r"^\s+\d+ (.*)$").unwrap_or_else(|_| unreachable!());
    let header = regex::Regex::new(r"^\S.* \d+$").unwrap_or_else(|_| unreachable!());
    let mut docs: Vec<Doc> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let blank_before = i == 0 || lines[i - 1].trim().is_empty();
        let blank_after = lines.get(i + 1).is_none_or(|l| l.trim().is_empty());
        if header.is_match(line) && blank_before && blank_after {
            docs.push(Doc { id: line.to_string(), title: line.to_string(), text: String::new() });
            continue;
        }
        let Some(doc) = docs.last_mut() else { continue };
        let piece = match verse.captures(line) {
            Some(c) => c.get(1).map(|m| m.as_str()).unwrap_or(""),
            None => line.trim(),
        };
        if piece.is_empty() {
            continue;
        }
        if !doc.text.is_empty() {
            doc.text.push(' ');
        }
        doc.text.push_str(piece);
    }
    docs
}

/// Settings shared by the passage tasks.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PassageConfig {
    pub corpus: CorpusName,
    /// Upper bound on the prompt's tokens (instruction + context + question).
    pub target_tokens: usize,
    /// Approximate tokens per passage (whole sentences, at least this many).
    pub passage_tokens: usize,
    pub num_samples: usize,
    pub seed: u64,
}

/// A passage: whole consecutive sentences of one document, at least `min_tokens` long, on one
/// line (whitespace runs collapsed to one space).
fn draw_passage(doc: &Doc, min_tokens: usize, tok: &dyn TextTokenizer, rng: &mut PyRandom) -> Option<String> {
    let flat = doc.text.split_whitespace().collect::<Vec<_>>().join(" ");
    let sents = split_sentences(&flat);
    if sents.is_empty() {
        return None;
    }
    let start = rng.randbelow(sents.len() as u64) as usize;
    // Back up so the passage can reach its length before the document ends.
    let mut begin = start;
    let mut total = 0usize;
    let mut out: Vec<&str> = Vec::new();
    for s in &sents[begin..] {
        out.push(s);
        total += tok.count(s) + 1;
        if total >= min_tokens {
            return Some(out.join(" "));
        }
    }
    while begin > 0 && total < min_tokens {
        begin -= 1;
        out.insert(0, &sents[begin]);
        total += tok.count(&sents[begin]) + 1;
    }
    (total >= min_tokens / 2).then(|| out.join(" "))
}

fn paragraphs(ps: &[String]) -> String {
    ps.iter().enumerate().map(|(i, p)| format!("Paragraph {}: {p}", i + 1)).collect::<Vec<_>>().join("\n\n")
}

/// Distinct passages from distinct documents, added while `fits(passages)` holds.
fn fill_passages(
    corpus: &Corpus,
    cfg: &PassageConfig,
    tok: &dyn TextTokenizer,
    rng: &mut PyRandom,
    fits: &dyn Fn(&[String]) -> bool,
) -> (Vec<String>, Vec<String>) {
    let order = rng.sample_indices(corpus.docs.len(), corpus.docs.len());
    let mut ps: Vec<String> = Vec::new();
    let mut ids = Vec::new();
    let mut misses = 0;
    for di in order {
        let doc = &corpus.docs[di];
        let Some(p) = draw_passage(doc, cfg.passage_tokens, tok, rng) else { continue };
        ps.push(p);
        if fits(&ps) {
            ids.push(doc.id.clone());
            misses = 0;
        } else {
            // Too long for the room left: try a few other documents before giving up.
            ps.pop();
            misses += 1;
            if misses >= 8 {
                break;
            }
        }
    }
    (ps, ids)
}

/// "Which paragraph is this quote from?" over passages of distinct documents; answer "Paragraph N",
/// scored with LongBench `retrieval_score`.
pub fn passage_retrieval_samples(corpus: &Corpus, cfg: &PassageConfig, tok: &dyn TextTokenizer) -> Result<Vec<Sample>, TaskError> {
    passage_retrieval_samples_where(corpus, cfg, tok, &|_| true)
}

/// The id of passage retrieval's sample `i`.
pub fn passage_retrieval_id(corpus: CorpusName, target_tokens: usize, i: usize) -> String {
    format!("passage_retrieval-{}-{target_tokens}-{i}", corpus.dataset())
}

/// [`passage_retrieval_samples`] whose id `keep` accepts, the others not built at all (each
/// sample draws from its own seeded stream, so the kept ones are the same either way).
pub fn passage_retrieval_samples_where(
    corpus: &Corpus,
    cfg: &PassageConfig,
    tok: &dyn TextTokenizer,
    keep: &dyn Fn(&str) -> bool,
) -> Result<Vec<Sample>, TaskError> {
    let mut out = Vec::new();
    for i in 0..cfg.num_samples {
        let id = passage_retrieval_id(corpus.name, cfg.target_tokens, i);
        if !keep(&id) {
            continue;
        }
        let mut rng = PyRandom::new(derive_seed(cfg.seed, i as u64));
        let prefix = |n: usize| {
            format!(
                "Here are {n} paragraphs from {}, along with a quote from one of them. Please determine which paragraph the quote is from.\n\n",
                corpus.name.described()
            )
        };
        let question = |q: &str| {
            format!("\n\nThe following is a quote.\n\n{q}\n\nPlease enter the number of the paragraph that the quote is from. The answer format must be like \"Paragraph 1\", \"Paragraph 2\", etc.\n\nThe answer is: ")
        };
        // Reserve room for a quote of up to 80 words.
        let reserve = tok.count(&question(&"word ".repeat(80)));
        let fits = |ps: &[String]| tok.count(&prefix(ps.len())) + tok.count(&paragraphs(ps)) + reserve <= cfg.target_tokens;
        let (ps, ids) = fill_passages(corpus, cfg, tok, &mut rng, &fits);
        if ps.len() < 2 {
            return Err(TaskError::TooShort { target: cfg.target_tokens, needed: reserve + 2 * cfg.passage_tokens });
        }
        let mut chosen = None;
        for _ in 0..64 {
            let k = rng.randbelow(ps.len() as u64) as usize;
            let cands: Vec<String> = split_sentences(&ps[k])
                .into_iter()
                .filter(|s| (8..=80).contains(&s.split_whitespace().count()))
                .filter(|s| ps.iter().enumerate().all(|(j, p)| j == k || !p.contains(s.as_str())))
                .collect();
            if let Some(q) = rng.choice(&cands) {
                chosen = Some((k, q.clone()));
                break;
            }
        }
        let Some((k, quote)) = chosen else {
            return Err(TaskError::NotEnoughData { name: corpus.name.dataset().into(), detail: "no unique quotable sentence".into() });
        };
        let context = paragraphs(&ps);
        let mut metadata = BTreeMap::new();
        metadata.insert("corpus".into(), json!(corpus.name.dataset()));
        metadata.insert("documents".into(), json!(ids));
        metadata.insert("num_paragraphs".into(), json!(ps.len()));
        metadata.insert("target_tokens".into(), json!(cfg.target_tokens));
        metadata.insert("seed".into(), json!(cfg.seed));
        metadata.insert("index".into(), json!(i));
        let s = Sample {
            examples: Vec::new(),
            id,
            task: format!("passage_retrieval_{}", corpus.name.dataset()),
            prefix_instruction: Some(prefix(ps.len())),
            context,
            question: question(&quote),
            answer_prefix: None,
            answers: vec![format!("Paragraph {}", k + 1)],
            scoring: ScoringKind::LongbenchRetrieval,
            max_new_tokens: 32,
            metadata,
        };
        let mut s = s;
        let n = tok.count(&s.prompt());
        s.metadata.insert("prompt_tokens".into(), json!(n));
        out.push(s);
    }
    Ok(out)
}

/// "How many unique paragraphs?" over passages with duplicates; scored with LongBench `count_score`.
pub fn passage_count_samples(corpus: &Corpus, cfg: &PassageConfig, tok: &dyn TextTokenizer) -> Result<Vec<Sample>, TaskError> {
    passage_count_samples_where(corpus, cfg, tok, &|_| true)
}

/// The id of passage count's sample `i`.
pub fn passage_count_id(corpus: CorpusName, target_tokens: usize, i: usize) -> String {
    format!("passage_count-{}-{target_tokens}-{i}", corpus.dataset())
}

/// [`passage_count_samples`] whose id `keep` accepts, the others not built at all.
pub fn passage_count_samples_where(
    corpus: &Corpus,
    cfg: &PassageConfig,
    tok: &dyn TextTokenizer,
    keep: &dyn Fn(&str) -> bool,
) -> Result<Vec<Sample>, TaskError> {
    const PREFIX_HEAD: &str = "There are some paragraphs below sourced from ";
    let prefix = format!("{PREFIX_HEAD}{}. Some of them may be duplicates. Please carefully read these paragraphs and determine how many unique paragraphs there are after removing duplicates. In other words, how many non-repeating paragraphs are there in total?\n\n", corpus.name.described());
    let question = "\n\nPlease enter the final count of unique paragraphs after removing duplicates. The output format should only contain the number, such as 1, 2, 3, and so on.\n\nThe final answer is: ";
    let fixed = tok.count(&prefix) + tok.count(question);
    let mut out = Vec::new();
    for i in 0..cfg.num_samples {
        let id = passage_count_id(corpus.name, cfg.target_tokens, i);
        if !keep(&id) {
            continue;
        }
        let mut rng = PyRandom::new(derive_seed(cfg.seed, i as u64));
        let fits = |ps: &[String]| fixed + tok.count(&paragraphs(ps)) <= cfg.target_tokens;
        let (pool, ids) = fill_passages(corpus, cfg, tok, &mut rng, &fits);
        let n = pool.len();
        if n < 2 {
            return Err(TaskError::TooShort { target: cfg.target_tokens, needed: fixed + 2 * cfg.passage_tokens });
        }
        let unique = rng.randint(n.div_ceil(3) as i64, n as i64) as usize;
        let mut slots: Vec<usize> = (0..unique).collect();
        while slots.len() < n {
            slots.push(rng.randbelow(unique as u64) as usize);
        }
        rng.shuffle(&mut slots);
        let mut ps: Vec<String> = slots.iter().map(|&j| pool[j].clone()).collect();
        while ps.len() > 1 && !fits(&ps) {
            ps.pop();
        }
        let count = ps.iter().collect::<BTreeSet<_>>().len();
        let mut metadata = BTreeMap::new();
        metadata.insert("corpus".into(), json!(corpus.name.dataset()));
        metadata.insert("documents".into(), json!(ids));
        metadata.insert("num_paragraphs".into(), json!(ps.len()));
        metadata.insert("target_tokens".into(), json!(cfg.target_tokens));
        metadata.insert("seed".into(), json!(cfg.seed));
        metadata.insert("index".into(), json!(i));
        let mut s = Sample {
            examples: Vec::new(),
            id,
            task: format!("passage_count_{}", corpus.name.dataset()),
            prefix_instruction: Some(prefix.clone()),
            context: paragraphs(&ps),
            question: question.into(),
            answer_prefix: None,
            answers: vec![count.to_string()],
            scoring: ScoringKind::LongbenchCount,
            max_new_tokens: 32,
            metadata,
        };
        let t = tok.count(&s.prompt());
        s.metadata.insert("prompt_tokens".into(), json!(t));
        out.push(s);
    }
    Ok(out)
}

/// Python source files of a package folder (recursive, sorted by relative path).
#[derive(Clone, Debug)]
pub struct CodeRepo {
    /// Name shown in `# Path:` headers, e.g. `gguf`.
    pub package: String,
    pub files: Vec<(String, String)>,
}

fn collect_py(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), TaskError> {
    let rd = std::fs::read_dir(dir).map_err(|source| TaskError::Io { path: dir.to_path_buf(), source })?;
    for e in rd {
        let p = e.map_err(|source| TaskError::Io { path: dir.to_path_buf(), source })?.path();
        if p.is_dir() {
            collect_py(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "py") {
            out.push(p);
        }
    }
    Ok(())
}

impl CodeRepo {
    /// Every `.py` file under `dir`.
    pub fn load(package: &str, dir: &Path) -> Result<Self, TaskError> {
        let mut paths = Vec::new();
        collect_py(dir, &mut paths)?;
        let mut files = Vec::new();
        for p in paths {
            let rel = p.strip_prefix(dir).unwrap_or(&p).to_string_lossy().replace('\\', "/");
            files.push((format!("{package}/{rel}"), read_text(&p)?));
        }
        files.sort();
        if files.is_empty() {
            return Err(TaskError::NotEnoughData { name: package.into(), detail: "no .py files".into() });
        }
        Ok(CodeRepo { package: package.into(), files })
    }

    /// The fetched `gguf_py` data set (gguf 0.19.0 from PyPI).
    pub fn from_cache() -> Result<Self, TaskError> {
        Self::load("gguf", &crate::data::data_dir("gguf_py")?)
    }
}

/// Settings of code completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CodeConfig {
    pub target_tokens: usize,
    pub num_samples: usize,
    pub seed: u64,
}

fn is_target_line(line: &str) -> bool {
    let t = line.trim();
    t.len() >= 8
        && !t.starts_with('#')
        && !t.contains("\"\"\"")
        && !t.contains("'''")
        && !t.contains('`')
        && !t.contains("//")
        && t.chars().any(|c| c.is_ascii_alphabetic())
}

/// Keep the last lines of `text` whose token count is at most `budget` (cut at a line start).
fn tail_lines(text: &str, budget: usize, tok: &dyn TextTokenizer) -> String {
    if tok.count(text) <= budget {
        return text.to_string();
    }
    let starts: Vec<usize> = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
    // Smallest start index whose tail fits (tails shrink as the start grows).
    let (mut lo, mut hi) = (0usize, starts.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if tok.count(&text[starts[mid]..]) <= budget {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    starts.get(lo).map(|&s| text[s..].to_string()).unwrap_or_default()
}

/// LongBench-`lcc`-style next-line completion over real source files: the context is the file up
/// to a chosen line (preceded by other files of the package, `# Path:` headers, when there is room),
/// the answer is that line without surrounding whitespace; scored with `code_sim_score`.
pub fn code_completion_samples(repo: &CodeRepo, cfg: &CodeConfig, tok: &dyn TextTokenizer) -> Result<Vec<Sample>, TaskError> {
    code_completion_samples_where(repo, cfg, tok, &|_| true)
}

/// The id of code completion's sample `i` over `package`.
pub fn code_completion_id(package: &str, target_tokens: usize, i: usize) -> String {
    format!("code_completion-{package}-{target_tokens}-{i}")
}

/// [`code_completion_samples`] whose id `keep` accepts, the others not built at all.
pub fn code_completion_samples_where(
    repo: &CodeRepo,
    cfg: &CodeConfig,
    tok: &dyn TextTokenizer,
    keep: &dyn Fn(&str) -> bool,
) -> Result<Vec<Sample>, TaskError> {
    const PREFIX: &str = "Please complete the code given below. \n";
    const QUESTION: &str = "Next line of code:\n";
    let fixed = tok.count(PREFIX) + tok.count(QUESTION);
    let budget = cfg.target_tokens.checked_sub(fixed).filter(|b| *b > 64).ok_or(TaskError::TooShort { target: cfg.target_tokens, needed: fixed + 64 })?;
    let eligible: Vec<usize> = (0..repo.files.len()).filter(|&i| repo.files[i].1.lines().count() >= 40).collect();
    if eligible.is_empty() {
        return Err(TaskError::NotEnoughData { name: repo.package.clone(), detail: "no file with 40+ lines".into() });
    }
    let mut out = Vec::new();
    for i in 0..cfg.num_samples {
        let id = code_completion_id(&repo.package, cfg.target_tokens, i);
        if !keep(&id) {
            continue;
        }
        let mut rng = PyRandom::new(derive_seed(cfg.seed, i as u64));
        let fi = *rng.choice(&eligible).unwrap_or(&eligible[0]);
        let (path, text) = &repo.files[fi];
        let lines: Vec<&str> = text.lines().collect();
        let cands: Vec<usize> = (20..lines.len()).filter(|&l| is_target_line(lines[l])).collect();
        let Some(&cut) = rng.choice(&cands) else {
            return Err(TaskError::NotEnoughData { name: path.clone(), detail: "no target line".into() });
        };
        let current = format!("# Path: {path}\n{}\n", lines[..cut].join("\n"));
        let mut context = tail_lines(&current, budget, tok);
        let mut used = tok.count(&context);
        let mut others: Vec<usize> = (0..repo.files.len()).filter(|&j| j != fi).collect();
        rng.shuffle(&mut others);
        let mut extra_files = Vec::new();
        for j in others {
            if used + 32 >= budget {
                break;
            }
            let (p, t) = &repo.files[j];
            let block = format!("# Path: {p}\n{t}\n");
            let piece = tail_lines(&block, budget - used, tok);
            if piece.is_empty() {
                break;
            }
            used += tok.count(&piece);
            extra_files.push(p.clone());
            context = format!("{piece}{context}");
        }
        // Re-check after concatenation (token merges at the seams), trimming from the front.
        context = tail_lines(&context, budget, tok);
        let mut metadata = BTreeMap::new();
        metadata.insert("source".into(), json!("PyPI gguf==0.19.0"));
        metadata.insert("file".into(), json!(path));
        metadata.insert("line_index".into(), json!(cut));
        metadata.insert("context_files".into(), json!(extra_files));
        metadata.insert("target_tokens".into(), json!(cfg.target_tokens));
        metadata.insert("seed".into(), json!(cfg.seed));
        metadata.insert("index".into(), json!(i));
        let mut s = Sample {
            examples: Vec::new(),
            id,
            task: "code_completion_py".into(),
            prefix_instruction: Some(PREFIX.into()),
            context,
            question: QUESTION.into(),
            answer_prefix: None,
            answers: vec![lines[cut].trim().to_string()],
            scoring: ScoringKind::LongbenchCodeSim,
            max_new_tokens: 64,
            metadata,
        };
        let t = tok.count(&s.prompt());
        s.metadata.insert("prompt_tokens".into(), json!(t));
        out.push(s);
    }
    Ok(out)
}
