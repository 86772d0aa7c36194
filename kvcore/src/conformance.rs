//! The conformance suite every method runs, in-tree or external: named trials
//! `<method>/<case>/<property>` over a tiny random GQA model (chunked prefill of 48 tokens,
//! `end_prefill`, 12 greedy decode steps) and over caches driven directly (batch 2, GQA).
//!
//! `cargo test --test conformance knorm` runs one method's trials and one failure hides nothing;
//! `kvbench conformance [METHOD...|--all] [--plugin lib.so]` runs the same trials from the command
//! line, external plugins through their C interface. Every trial can fail:
//!
//! * `budget`: a budgeted case (`ratio > 1` or `tokens`) must declare its budget
//!   (`budget_tokens()`) by the first decode step, and hold no more than that whenever declared. A
//!   retrieval cache (it holds everything and attends to a budget) must instead attend to fewer
//!   bytes than it holds once decoding, on the cases whose blocks/pages are sized for the 48-token
//!   prompt (its defaults attend to all of so short a prompt).
//! * `bytes`: held bytes equal the bytes of the tensors held, each storage counted once, the
//!   tensors named `k`/`v` (dense keys and values) hold exactly one slot per kept position, and
//!   the cache names at least one key tensor (`k…`) and one value tensor (`v…`) or codes.
//! * `fewer-bytes` (`ratio4` case): ratio 4 holds fewer bytes than the full cache (attended bytes
//!   for retrieval caches; a quantized cache at its default settings).
//! * `identical-to-full` (`ratio1` case): ratio 1 gives logits bit-identical to the full cache.
//! * `deterministic`: two runs give bit-identical logits.
//! * `finite`: every logit is finite.
//! * `positions`: one row per (batch, KV head), strictly ascending, within the tokens seen, and
//!   `stored_tokens` is the longest row.
//! * `shapes` (`batch2-gqa` case): batch 2 with 3 query heads per KV head gives `[2, Hq, L, D]`
//!   outputs and 4 rows of positions, and ratio 1 equals the full cache.

use crate::device::{DType, RuntimeSettings};
use crate::generate::new_caches_for;
use crate::loader::{load, LoadedModel};
use crate::model::Logits;
use crate::registry::{parse_settings, MethodError, MethodInfo};
use crate::sources::ModelFiles;
use kvcache::cache::{tensor_bytes, AttentionStep, CacheFactory, CacheSpec, FullCacheFactory, LayerCache};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tch::{Device, Kind, Tensor};

/// Builds a method's cache factory from a parameter table.
pub type BuildMethod = Arc<dyn Fn(&toml::Table) -> Result<Arc<dyn CacheFactory>, MethodError> + Send + Sync>;

/// A method under test.
#[derive(Clone)]
pub struct Subject {
    pub name: String,
    pub family: String,
    /// The parameters it documents, as (name, default) (`ratio` means it takes a budget).
    pub params: Vec<(String, String)>,
    pub build: BuildMethod,
}

impl Subject {
    /// A registered method (in-tree or from a plugin).
    pub fn from_method(m: &MethodInfo) -> Self {
        let info = m.clone();
        Subject {
            name: m.name.clone(),
            family: m.family.clone(),
            params: m.params.iter().map(|(n, d, _)| (n.clone(), d.clone())).collect(),
            build: Arc::new(move |t| info.build(t)),
        }
    }
    fn has(&self, param: &str) -> bool {
        self.params.iter().any(|(n, _)| n == param)
    }
    /// The documented default of a numeric parameter.
    fn default_number(&self, param: &str) -> Option<f64> {
        self.params.iter().find(|(n, _)| n == param).and_then(|(_, d)| d.parse().ok())
    }
    fn takes_budget(&self) -> bool {
        self.has("ratio")
    }
    /// Whether it compresses even at `ratio = 1`: it prunes key channels by default (ThinK).
    fn compresses_at_ratio1(&self) -> bool {
        self.default_number("key_channel_ratio").is_some_and(|r| r > 0.0)
    }
    fn is_retrieval(&self) -> bool {
        self.family == "retrieval"
    }
}

/// One parameter set a method runs with, named for the trial (`default`, `ratio=4`, ...).
#[derive(Clone, Debug)]
pub struct Case {
    pub label: String,
    pub settings: Vec<String>,
}

fn case(label: &str, settings: &[&str]) -> Case {
    Case { label: label.to_string(), settings: settings.iter().map(|s| s.to_string()).collect() }
}

/// The tiny model has head_dim 16 and a 48-token prompt, so quantizers use groups of 8 and a
/// short KIVI residual, retrieval caches small blocks and pages. Unknown methods (external
/// plugins) get the generic budget cases when they take a `ratio`.
fn cases(s: &Subject) -> Vec<Case> {
    let evicting = || {
        // ratio 32 on the 48-token prompt keeps one token per head (kvpress's 32:1, and the
        // short-prompt floor).
        let mut v = vec![case("default", &[]), case("ratio=4", &["ratio=4"]), case("tokens=10", &["tokens=10"]), case("ratio=32", &["ratio=32"])];
        if s.has("decode_evict") {
            v.push(case("ratio=3,decode_evict,interval=3", &["ratio=3", "decode_evict=true", "decode_interval=3"]));
        }
        // The shared schedules of scoring methods, for those that compress after prefill.
        if s.has("block_size") && !matches!(s.name.as_str(), "h2o" | "streamingllm") {
            v.push(case("ratio=4,block_size=8", &["ratio=4", "block_size=8"]));
            v.push(case("target_size=20,interval=4", &["target_size=20", "interval=4"]));
        }
        v
    };
    match (s.name.as_str(), s.family.as_str()) {
        ("full", _) => vec![case("default", &[])],
        ("kivi", _) => vec![case("bits=2", &["group_size=8", "residual_length=16"]), case("bits=4", &["bits=4", "group_size=8", "residual_length=8"])],
        ("flexgen", _) => vec![case("bits=4", &["group_size=8"]), case("fake", &["group_size=8", "fake=true"]), case("bits=2", &["bits=2", "group_size=16"])],
        (_, "quant") => vec![case("default", &[])],
        ("infllm", _) => vec![
            case("default", &[]),
            case("ratio=4,small-blocks", &["ratio=4", "block_size=4", "n_init=2", "n_local=8", "topk=2", "repr_topk=2", "exc_block_size=4"]),
            case("tokens=24", &["tokens=24", "block_size=4", "min_local=4", "exc_block_size=8", "shared_blocks=false"]),
        ],
        ("quest", _) => vec![
            case("default", &[]),
            case("ratio=4,pages=4", &["ratio=4", "page_size=4", "skip_layers=0"]),
            case("tokens=10", &["tokens=10", "page_size=2", "skip_layers=1", "gqa=mean"]),
        ],
        _ if s.takes_budget() => evicting(),
        _ => vec![case("default", &[])],
    }
}

/// The ratio-4 settings of a method: its `ratio=4…` case (sized for the tiny model for
/// retrieval caches), or `None` when it takes no budget.
fn ratio4(s: &Subject) -> Option<Vec<String>> {
    cases(s).into_iter().find(|c| c.label.starts_with("ratio=4")).map(|c| c.settings)
}

/// Eviction methods whose survivors can be stored quantized, with the settings that allow it.
const COMPOSABLE: &[(&str, &[&str])] = &[
    ("random", &[]),
    ("snapkv", &[]),
    ("pyramidkv", &[]),
    ("knorm", &[]),
    ("keydiff", &[]),
    ("chunkkv", &["decode_evict=false"]),
    ("tova", &["decode_evict=false"]),
    ("streamingllm", &["decode_evict=false"]),
    ("h2o", &["mode=prefill", "decode_evict=false"]),
];

/// Whether a case is budgeted: `tokens`, or a ratio above 1 (the default ratio of a budget-taking
/// method is 4).
fn budgeted(s: &Subject, settings: &[String]) -> bool {
    if !s.takes_budget() {
        return false;
    }
    if settings.iter().any(|k| k.starts_with("tokens=")) {
        return true;
    }
    match settings.iter().find_map(|k| k.strip_prefix("ratio=")) {
        Some(r) => r.parse::<f64>().map_or(true, |r| r > 1.0),
        // The documented default ratio (4 for most; ThinK's is 1: it prunes channels, not tokens).
        None => s.default_number("ratio").is_none_or(|r| r > 1.0),
    }
}

/// What one layer's cache looked like after a step.
#[derive(Clone, Debug)]
struct LayerObs {
    rows: Vec<Vec<i64>>,
    stored: usize,
    budget: Option<usize>,
    held: u64,
    attended: u64,
    allocated: u64,
    /// (name, bytes, storage pointer, elements)
    tensors: Vec<(String, u64, usize, Vec<i64>)>,
}

#[derive(Clone, Debug)]
struct StepObs {
    when: String,
    /// Tokens that went through.
    pos: usize,
    after_prefill: bool,
    layers: Vec<LayerObs>,
}

/// A run of one method and case on the tiny model.
struct RunRecord {
    logits: Vec<Tensor>,
    steps: Vec<StepObs>,
}

// Tensors are only read, never written, after a run: sharing the record between trial threads is sound.
unsafe impl Send for RunRecord {}
unsafe impl Sync for RunRecord {}

fn observe(caches: &[Box<dyn LayerCache>]) -> Vec<LayerObs> {
    caches
        .iter()
        .map(|c| LayerObs {
            rows: c.kept_positions(),
            stored: c.stored_tokens(),
            budget: c.budget_tokens(),
            held: c.bytes_held(),
            attended: c.bytes_attended(),
            allocated: c.bytes_allocated(),
            tensors: c.held_tensors().into_iter().map(|(n, t)| (n.to_string(), tensor_bytes(&t), t.data_ptr() as usize, t.size())).collect(),
        })
        .collect()
}

/// The tiny random model and the records of the runs made on it.
pub struct Bench {
    lm: Mutex<LoadedModel>,
    runs: Mutex<HashMap<String, Arc<Result<RunRecord, String>>>>,
}

const PROMPT: usize = 48;
const DECODE: usize = 12;

impl Bench {
    /// Writes a tiny random GQA Llama (tokenizer from `tokenizer_gguf`) into a temporary folder
    /// and loads it on the CPU in f32. The folder is removed once the model is loaded (a bench
    /// kept in a static is never dropped, and each left folder was 14 MB in the temp dir).
    pub fn new(tokenizer_gguf: &Path) -> crate::Result<Bench> {
        let dir = std::env::temp_dir().join(format!(
            "kvbench-conformance-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
        ));
        let preset = crate::random_init::PRESETS.iter().find(|p| p.name == "tiny").copied().ok_or_else(|| crate::Error::Other("no tiny preset".into()))?;
        let opts = crate::random_init::InitOptions {
            arch: crate::config::Architecture::Llama,
            preset,
            seed: 3,
            dtype: Kind::Float,
            tokenizer_gguf: tokenizer_gguf.to_path_buf(),
            sliding_window: None,
        };
        let written = crate::random_init::write_random_model(&opts, &dir);
        let loaded =
            written.and_then(|_| load(&ModelFiles::HfDir(dir.clone()), RuntimeSettings { device: Device::Cpu, dtype: DType::F32, kv_dtype: DType::F32 }));
        let _ = std::fs::remove_dir_all(&dir);
        let lm = loaded?;
        let cfg = &lm.transformer("conformance")?.config;
        if cfg.num_attention_heads <= cfg.num_key_value_heads {
            return Err(crate::Error::Other("the conformance model must use GQA".into()));
        }
        Ok(Bench { lm: Mutex::new(lm), runs: Mutex::new(HashMap::new()) })
    }

    /// The run of `factory` under `key`, made once and shared by the trials that read it.
    fn run(&self, key: &str, factory: &dyn Fn() -> Result<Arc<dyn CacheFactory>, String>) -> Arc<Result<RunRecord, String>> {
        if let Some(r) = self.runs.lock().unwrap_or_else(|e| e.into_inner()).get(key) {
            return r.clone();
        }
        let made = factory().and_then(|f| {
            let mut lm = self.lm.lock().unwrap_or_else(|e| e.into_inner());
            run_model(&mut lm, f.as_ref()).map_err(|e| e.to_string())
        });
        let r = Arc::new(made);
        self.runs.lock().unwrap_or_else(|e| e.into_inner()).insert(key.to_string(), r.clone());
        r
    }
}

fn ids(n: usize) -> Vec<i64> {
    (0..n as i64).map(|i| (i * 37 + 11) % 1000 + 5).collect()
}

/// Chunked prefill of 48 tokens (chunks of 16), `end_prefill`, 12 greedy decode steps, with
/// an observation of every layer's cache after each step.
fn run_model(lm: &mut LoadedModel, f: &dyn CacheFactory) -> crate::Result<RunRecord> {
    let _g = tch::no_grad_guard();
    let prompt = ids(PROMPT);
    let mut caches = new_caches_for(lm, f, PROMPT + DECODE, Some(PROMPT))?;
    let mut logits = Vec::new();
    let mut steps = Vec::new();
    let mut pos = 0;
    for chunk in prompt.chunks(16) {
        let x = Tensor::from_slice(chunk).unsqueeze(0);
        logits.push(lm.transformer_mut("conformance")?.forward(&x, pos, &mut caches, Logits::All)?);
        pos += chunk.len();
        steps.push(StepObs { when: format!("after the prefill chunk ending at {pos}"), pos, after_prefill: false, layers: observe(&caches) });
    }
    let prompt_ids: Vec<u32> = prompt.iter().map(|&t| t as u32).collect();
    crate::reconstruct::finish_prefill(lm, &mut caches, f, &prompt_ids)?;
    steps.push(StepObs { when: "after end_prefill".into(), pos, after_prefill: true, layers: observe(&caches) });
    let mut next = logits.last().map(|l| l.get(0).get(-1).argmax(-1, false).int64_value(&[])).unwrap_or(0);
    for step in 0..DECODE {
        let x = Tensor::from_slice(&[next]).unsqueeze(0);
        let l = lm.transformer_mut("conformance")?.forward(&x, pos, &mut caches, Logits::Last)?;
        pos += 1;
        next = l.argmax(-1, false).int64_value(&[0]);
        logits.push(l);
        steps.push(StepObs { when: format!("after decode step {step}"), pos, after_prefill: true, layers: observe(&caches) });
    }
    Ok(RunRecord { logits, steps })
}

/// A trial's check, run once against the bench.
type CheckFn = Box<dyn FnOnce(&Bench) -> Result<(), String> + Send>;

/// A named check.
pub struct Trial {
    pub name: String,
    check: CheckFn,
}

impl Trial {
    /// Runs the check.
    pub fn run(self, bench: &Bench) -> Result<(), String> {
        (self.check)(bench)
    }
}

impl std::fmt::Debug for Trial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

fn settings_table(kv: &[String]) -> Result<toml::Table, String> {
    parse_settings(kv).map_err(|e| e.to_string())
}

type Check = fn(&Subject, &[String], &RunRecord, &Bench) -> Result<(), String>;

fn record_trial(s: &Subject, label: &str, settings: Vec<String>, property: &str, check: Check) -> Trial {
    let s = s.clone();
    let name = format!("{}/{}/{}", s.name, label, property);
    let key = format!("{}/{}", s.name, settings.join(","));
    Trial {
        name,
        check: Box::new(move |bench| {
            let build = s.build.clone();
            let st = settings.clone();
            let rec = bench.run(&key, &move || build(&settings_table(&st)?).map_err(|e| e.to_string()));
            match rec.as_ref() {
                Ok(r) => check(&s, &settings, r, bench),
                Err(e) => Err(format!("the run failed: {e}")),
            }
        }),
    }
}

/// Every trial for `subjects`, in a stable order.
pub fn trials(subjects: &[Subject]) -> Vec<Trial> {
    let mut out = Vec::new();
    for s in subjects {
        let mut all_cases = cases(s);
        if let Some((_, extra)) = COMPOSABLE.iter().find(|(n, _)| *n == s.name) {
            for (label, storage) in
                [("ratio=4,storage=kivi", "storage={method=\"kivi\", group_size=8, residual_length=8}"), ("ratio=4,storage=int4", "storage={method=\"int4\"}")]
            {
                let mut v = vec!["ratio=4".to_string(), storage.to_string()];
                v.extend(extra.iter().map(|e| e.to_string()));
                all_cases.push(Case { label: label.into(), settings: v });
            }
        }
        for c in &all_cases {
            // A retrieval cache's default pages/blocks are sized for real prompts: on the 48-token
            // prompt it attends to everything, so its budget is checked on the cases sized for it.
            let budget = budgeted(s, &c.settings) && !(s.is_retrieval() && c.settings.is_empty());
            if budget {
                out.push(record_trial(s, &c.label, c.settings.clone(), "budget", check_budget));
                out.push(record_trial(s, &c.label, c.settings.clone(), "keeps-one-per-head", check_keeps_one));
            }
            out.push(record_trial(s, &c.label, c.settings.clone(), "bytes", check_bytes));
            out.push(record_trial(s, &c.label, c.settings.clone(), "positions", check_positions));
            out.push(record_trial(s, &c.label, c.settings.clone(), "finite", check_finite));
            out.push(record_trial(s, &c.label, c.settings.clone(), "deterministic", check_deterministic));
        }
        if s.name != "full" {
            if s.takes_budget() {
                // Channel pruning by default (ThinK) is not a token budget: off for this comparison.
                let mut settings = vec!["ratio=1".to_string()];
                if s.compresses_at_ratio1() {
                    settings.push("key_channel_ratio=0".into());
                }
                out.push(record_trial(s, "ratio1", settings, "identical-to-full", check_identical_to_full));
            }
            let fewer = ratio4(s).or_else(|| cases(s).first().map(|c| c.settings.clone()));
            if let Some(v) = fewer {
                out.push(record_trial(s, "ratio4", v, "fewer-bytes", check_fewer_bytes));
            }
        }
        out.push(shapes_trial(s));
    }
    out
}

fn check_budget(s: &Subject, _: &[String], r: &RunRecord, _: &Bench) -> Result<(), String> {
    if s.is_retrieval() {
        let last = r.steps.last().ok_or("no steps")?;
        let (att, held): (u64, u64) = last.layers.iter().fold((0, 0), |(a, h), l| (a + l.attended, h + l.held));
        if att >= held {
            return Err(format!("a retrieval cache must attend to fewer bytes than it holds once decoding: attended {att}, held {held}"));
        }
        return Ok(());
    }
    // Declared from `end_prefill` on, or at the latest from the first decode step (the paper's
    // H2O fixes its budget there), and respected whenever declared (also while prefilling, by
    // caches that compress during prefill).
    for st in &r.steps {
        let decoding = st.when.starts_with("after decode");
        for (l, o) in st.layers.iter().enumerate() {
            let b = match o.budget {
                Some(b) => b,
                None if decoding => return Err(format!("layer {l} {}: a budgeted cache must declare its budget (budget_tokens() is None)", st.when)),
                None => continue,
            };
            let total: usize = o.rows.iter().map(|r| r.len()).sum();
            if total > b * o.rows.len() {
                return Err(format!("layer {l} {}: holds {total} tokens over {} rows, budget {b} per row", st.when, o.rows.len()));
            }
        }
    }
    Ok(())
}

/// However small the budget, every (batch, KV head) row keeps at least one token from
/// `end_prefill` on (kvpress PR #264: AdaKV could empty a head on short prompts).
fn check_keeps_one(s: &Subject, _: &[String], r: &RunRecord, _: &Bench) -> Result<(), String> {
    if s.is_retrieval() {
        return Ok(());
    }
    for st in r.steps.iter().filter(|st| st.after_prefill) {
        for (l, o) in st.layers.iter().enumerate() {
            if let Some(row) = o.rows.iter().position(|r| r.is_empty()) {
                return Err(format!("layer {l} {}: row {row} holds no token", st.when));
            }
        }
    }
    Ok(())
}

fn check_bytes(_: &Subject, _: &[String], r: &RunRecord, _: &Bench) -> Result<(), String> {
    for st in &r.steps {
        for (l, o) in st.layers.iter().enumerate() {
            let mut seen = BTreeSet::new();
            let mut sum = 0u64;
            for (name, bytes, ptr, _) in &o.tensors {
                if *bytes > 0 && !seen.insert((*ptr, *bytes)) {
                    return Err(format!("layer {l} {}: tensor `{name}` is listed twice (the same storage)", st.when));
                }
                sum += bytes;
            }
            if o.held != sum {
                return Err(format!("layer {l} {}: bytes_held() = {} but the tensors held sum to {sum}", st.when, o.held));
            }
            if o.allocated < o.held {
                return Err(format!("layer {l} {}: bytes_allocated() = {} < bytes_held() = {}", st.when, o.allocated, o.held));
            }
            let kept: i64 = o.rows.iter().map(|r| r.len() as i64).sum();
            for want in ["k", "v"] {
                let slots: i64 =
                    o.tensors.iter().filter(|(n, ..)| n == want).map(|(.., shape)| shape.iter().take(shape.len().saturating_sub(1)).product::<i64>()).sum();
                if o.tensors.iter().any(|(n, ..)| n == want) && slots != kept {
                    return Err(format!("layer {l} {}: `{want}` tensors hold {slots} token slots, the kept positions say {kept}", st.when));
                }
            }
            if kept > 0 && !o.tensors.iter().any(|(n, ..)| n.starts_with('k') || n.starts_with("codes") || n == "plugin") {
                return Err(format!("layer {l} {}: holds {kept} positions but names no key tensor", st.when));
            }
        }
    }
    Ok(())
}

fn check_positions(_: &Subject, _: &[String], r: &RunRecord, _: &Bench) -> Result<(), String> {
    for st in &r.steps {
        for (l, o) in st.layers.iter().enumerate() {
            if o.rows.len() != 2 {
                return Err(format!("layer {l} {}: {} rows of positions, expected one per (batch, KV head) = 2", st.when, o.rows.len()));
            }
            for row in &o.rows {
                if !row.windows(2).all(|w| w[0] < w[1]) {
                    return Err(format!("layer {l} {}: positions not strictly ascending: {row:?}", st.when));
                }
                if !row.iter().all(|&p| p >= 0 && (p as usize) < st.pos) {
                    return Err(format!("layer {l} {}: a position outside 0..{}: {row:?}", st.when, st.pos));
                }
            }
            let longest = o.rows.iter().map(|r| r.len()).max().unwrap_or(0);
            if o.stored != longest {
                return Err(format!("layer {l} {}: stored_tokens() = {} but the longest row holds {longest}", st.when, o.stored));
            }
        }
    }
    Ok(())
}

fn check_finite(_: &Subject, _: &[String], r: &RunRecord, _: &Bench) -> Result<(), String> {
    for (i, l) in r.logits.iter().enumerate() {
        if l.isfinite().all().int64_value(&[]) != 1 {
            return Err(format!("non-finite logits at step {i}"));
        }
    }
    Ok(())
}

fn check_deterministic(s: &Subject, settings: &[String], r: &RunRecord, bench: &Bench) -> Result<(), String> {
    let build = s.build.clone();
    let st = settings.to_vec();
    let again = bench.run(&format!("{}/{}#again", s.name, settings.join(",")), &move || build(&settings_table(&st)?).map_err(|e| e.to_string()));
    let again = again.as_ref().as_ref().map_err(|e| format!("the second run failed: {e}"))?;
    for (i, (a, b)) in r.logits.iter().zip(&again.logits).enumerate() {
        if !a.equal(b) {
            return Err(format!("two runs differ at step {i}"));
        }
    }
    Ok(())
}

fn full_run(bench: &Bench) -> Result<Arc<Result<RunRecord, String>>, String> {
    Ok(bench.run("full#reference", &|| Ok(Arc::new(FullCacheFactory) as Arc<dyn CacheFactory>)))
}

fn check_identical_to_full(_: &Subject, _: &[String], r: &RunRecord, bench: &Bench) -> Result<(), String> {
    let full = full_run(bench)?;
    let full = full.as_ref().as_ref().map_err(|e| format!("the full-cache run failed: {e}"))?;
    for (i, (x, y)) in r.logits.iter().zip(&full.logits).enumerate() {
        if !x.equal(y) {
            return Err(format!("ratio = 1 differs from the full cache at step {i} (max diff {})", (x - y).abs().max().double_value(&[])));
        }
    }
    Ok(())
}

fn check_fewer_bytes(s: &Subject, _: &[String], r: &RunRecord, bench: &Bench) -> Result<(), String> {
    let full = full_run(bench)?;
    let full = full.as_ref().as_ref().map_err(|e| format!("the full-cache run failed: {e}"))?;
    let bytes = |rec: &RunRecord, attended: bool| -> u64 {
        rec.steps.last().map_or(0, |st| st.layers.iter().map(|l| if attended { l.attended } else { l.held }).sum())
    };
    let (mine, theirs) = (bytes(r, s.is_retrieval()), bytes(full, false));
    if mine >= theirs {
        let what = if s.is_retrieval() { "attends to" } else { "holds" };
        return Err(format!("at the end it {what} {mine} bytes, not fewer than the full cache's {theirs}"));
    }
    Ok(())
}

/// Cache-level shapes: batch 2, 2 KV heads, 6 query heads; ratio 1 (when the method takes a
/// budget) must equal the full cache.
fn shapes_trial(s: &Subject) -> Trial {
    let s = s.clone();
    Trial {
        name: format!("{}/batch2-gqa/shapes", s.name),
        check: Box::new(move |_| {
            let _g = tch::no_grad_guard();
            tch::manual_seed(7);
            let spec = CacheSpec {
                batch: 2,
                kv_heads: 2,
                head_dim: 8,
                kv_dtype: DType::F32,
                device: Device::Cpu,
                expected_tokens: 40,
                query_heads: 6,
                num_layers: 2,
                context_tokens: Some(32),
                rope: Some(kvcache::rope::Rope::from_theta(8, 10000.0)),
            };
            let settings: Vec<String> = match s.name.as_str() {
                "kivi" => vec!["group_size=8".into(), "residual_length=8".into()],
                "flexgen" => vec!["group_size=8".into()],
                _ if s.takes_budget() => vec!["ratio=1".into()],
                _ => vec![],
            };
            // A method that prunes key channels at ratio 1 too (ThinK): shapes checked, not values.
            let compare = (s.takes_budget() || s.name == "full") && !s.compresses_at_ratio1();
            let f = (s.build)(&settings_table(&settings)?).map_err(|e| e.to_string())?;
            let mut c = f.layer_cache(1, &spec).map_err(|e| e.to_string())?;
            let mut full = FullCacheFactory.layer_cache(1, &spec).map_err(|e| e.to_string())?;
            let mut pos = 0;
            for l in [16usize, 16, 1, 1, 1] {
                let q = Tensor::randn([2, 6, l as i64, 8], (Kind::Float, Device::Cpu));
                let k = Tensor::randn([2, 2, l as i64, 8], (Kind::Float, Device::Cpu));
                let v = Tensor::randn([2, 2, l as i64, 8], (Kind::Float, Device::Cpu));
                let step = AttentionStep { layer: 1, q: &q, k: &k, v: &v, start_pos: pos, sliding_window: None, scale: 8f64.powf(-0.5) };
                let o = c.attend(&step).map_err(|e| e.to_string())?;
                let of = full.attend(&step).map_err(|e| e.to_string())?;
                if o.size() != vec![2, 6, l as i64, 8] {
                    return Err(format!("output shape {:?} at position {pos}, expected [2, 6, {l}, 8]", o.size()));
                }
                if compare && !o.equal(&of) {
                    return Err(format!("{settings:?}: the batch-2 output differs from the full cache at position {pos}"));
                }
                pos += l;
                if pos == 32 {
                    c.end_prefill().map_err(|e| e.to_string())?;
                }
                let rows = c.kept_positions().len();
                if rows != 4 {
                    return Err(format!("{rows} rows of positions for batch 2 x 2 KV heads, expected 4"));
                }
            }
            Ok(())
        }),
    }
}

/// Outcome of one trial.
#[derive(Debug)]
pub struct Outcome {
    pub name: String,
    pub result: Result<(), String>,
}

/// Runs `trials` one after another (panics inside a method are failures of its trial).
pub fn run_all(bench: &Bench, trials: Vec<Trial>, mut report: impl FnMut(&Outcome)) -> Vec<Outcome> {
    let mut out = Vec::new();
    for t in trials {
        let name = t.name.clone();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| t.run(bench))).unwrap_or_else(|p| {
            let msg = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_else(|| "panic".into());
            Err(format!("panicked: {msg}"))
        });
        let o = Outcome { name, result };
        report(&o);
        out.push(o);
    }
    out
}
