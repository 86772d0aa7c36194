//! Experiment configs for `kvbench run`, read and checked before any model loads (no libtorch, so
//! it is fast and fuzzable). A config tree looks like:
//!
//! ```text
//! configs/
//!   models/<name>.toml        source, dtype, context limit, chat template on/off
//!   tasks/<name>.toml         task, lengths, sample count or fraction + seed, truncation, template
//!   methods/<name>.toml       a named preset: method + parameters (e.g. kivi-2bit, h2o-4x)
//!   experiments/**/<x>.toml   a grid: models × methods × ratios × tasks, plus run settings
//! ```
//!
//! An experiment names models, tasks and methods; a method is a preset file, an inline
//! `[[method]]` table (which may start from a preset and override its parameters), or a registered
//! method name used with its defaults. Every problem is reported, each once, with the file, the key
//! path and what was expected ([`ConfigError`]).
//!
//! [`cells`] expands the grid into cells with stable ids (a hash of everything that determines a
//! cell's results), and [`shard`] partitions them deterministically.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Version of what a cell id hashes; bump when the meaning of a cell changes.
pub const CELL_SCHEMA: u32 = 1;

/// One problem in one file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {key}: {problem}", file.display())]
pub struct ConfigError {
    pub file: PathBuf,
    /// Key path (`tasks[1]`, `run.threads`, `method[0].params`), or `(file)` for the whole file.
    pub key: String,
    pub problem: String,
}

/// Every problem found, one per line when displayed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

fn err(file: &Path, key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError { file: file.to_path_buf(), key: key.into(), problem: problem.into() }
}

/// `models/<name>.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// A known model name (`smollm2-135m`), a GGUF file, a Hugging Face directory or `hf:org/name[@rev]`.
    pub source: String,
    /// Compute dtype: f32, bf16 or f16 (default: f32 on CPU, bf16 on CUDA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    /// KV-cache dtype (default: the compute dtype).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_dtype: Option<String>,
    /// Most input tokens fed to the model; longer prompts lose their middle (the paper's rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_limit: Option<usize>,
    /// Wrap prompts in the model's chat template where the task uses one.
    #[serde(default = "yes")]
    pub chat_template: bool,
    /// A conversation format built into kvbench, used as the model's chat template
    /// (`kvformats::chat::BUILTIN_FORMATS`; `vicuna`: fastchat's, which the paper wraps LongChat's
    /// prompts in, the checkpoint shipping no template of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_format: Option<String>,
    /// RoPE base override (replaces the checkpoint's `rope_theta`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// Multiplies the checkpoint's RoPE base (the paper's `rope_theta_factor`, 32 for its
    /// Llama-3 passkey runs: 500000 → 1.6e7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta_factor: Option<f64>,
    /// Linear RoPE position scaling factor (positions divided by it), replacing the checkpoint's scaling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_linear_factor: Option<f64>,
    /// Context length the model may be run at (replaces `max_position_embeddings`; with a RoPE
    /// override this is how far the run goes, e.g. 32000 for the paper's Llama-3 passkey runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_position_embeddings: Option<usize>,
    /// Penalties on the logits before each greedy choice. `rwkv-pipeline`: the `rwkv` package's
    /// `PIPELINE.generate` defaults (presence 0.2, frequency 0.2, decay 0.996; whitespace and
    /// digit tokens count 0), which the paper's RWKV runs keep (`PIPELINE_ARGS(top_p=0)`). Unset:
    /// plain greedy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub penalties: Option<String>,
}

/// The values [`ModelConfig::penalties`] takes.
pub const PENALTIES: &[&str] = &["rwkv-pipeline"];

fn yes() -> bool {
    true
}

/// How an over-long prompt is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Truncation {
    /// Cut the middle (keep the first and last halves), as the paper does.
    Middle,
    /// Fail the cell.
    Error,
}

/// Prompt wrapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Template {
    /// The paper's passkey plain, every other task in the chat template.
    Auto,
    Chat,
    Plain,
}

/// `tasks/<name>.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    /// A `kvbench task` name: passkey, kamradt, ruler/<name>, retrieval/<corpus>, count/<corpus>, code.
    pub task: String,
    /// Leaderboard column (default: needle, ruler or real-text by task family).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Lengths: words for passkey (min and max of an evenly spaced grid), tokens otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lengths: Vec<usize>,
    /// passkey: number of lengths between min and max; kamradt/passkey: depths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depths: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trials: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digits: Option<usize>,
    /// Samples per length (RULER, real-text tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Keep the first N samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Keep this fraction of the samples, chosen with `seed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<f64>,
    /// Most input tokens (overrides the model's limit when smaller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_input_tokens: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncation: Option<Truncation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<Template>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_new_tokens: Option<usize>,
}

impl TaskConfig {
    /// The leaderboard column of this task.
    pub fn category(&self) -> String {
        if let Some(c) = &self.category {
            return c.clone();
        }
        let t = self.task.as_str();
        if t == "passkey" || t == "kamradt" {
            "needle".into()
        } else if let Some(s) = t.strip_prefix("longbench/").or_else(|| t.strip_prefix("longbench_e/")) {
            kvtasks::longbench::category_of(s).into()
        } else if t.starts_with("ruler/") {
            "ruler".into()
        } else {
            "real-text".into()
        }
    }
}

/// `methods/<name>.toml`: a named preset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodPreset {
    /// Registered method name (`kvbench methods`).
    pub method: String,
    /// Display label (default: the preset's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(default)]
    pub params: toml::Table,
    /// `false`: the method's prompts are never cut, neither to the model's `context_limit` nor to
    /// its positions (the paper's `truncation_mode: null` for InfLLM, StreamingLLM and
    /// LLMLingua-2); cache budgets are then sized from the prompt's length up to what the cut
    /// would have left (the paper's `ratio × min(length, model max length)`). Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncate: Option<bool>,
}

/// An inline `[[method]]` of an experiment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InlineMethod {
    /// The label this entry is listed and reported under.
    pub name: String,
    /// Start from this preset (`methods/<preset>.toml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// Registered method name (required without `preset`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Parameters, merged over the preset's.
    #[serde(default)]
    pub params: toml::Table,
    /// Whether prompts are cut to the model's limits ([`MethodPreset::truncate`]; default: the
    /// preset's, else true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncate: Option<bool>,
}

/// `[run]` settings of an experiment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// cpu, cuda, cuda:N or auto.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Seed for sample selection (tasks may set their own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill_chunk: Option<usize>,
    /// Let methods see the question while compressing (default false: compress the context alone).
    #[serde(default)]
    pub query_aware: bool,
}

/// `experiments/<name>.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentFile {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub models: Vec<String>,
    pub tasks: Vec<String>,
    pub methods: Vec<String>,
    /// Budgets (the paper's N×) applied to every method that takes `ratio` and does not fix one.
    #[serde(default)]
    pub ratios: Vec<f64>,
    #[serde(default, rename = "method")]
    pub inline_methods: Vec<InlineMethod>,
    #[serde(default)]
    pub run: RunSettings,
    /// External method plugins (paths relative to the experiment file); loaded only when the
    /// command line allows it (`--allow-plugins`).
    #[serde(default)]
    pub plugins: Vec<String>,
}

/// A method as the grid uses it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MethodRef {
    pub label: String,
    pub method: String,
    pub params: toml::Table,
    /// Prompts are cut to the model's limits (false: [`MethodPreset::truncate`]).
    #[serde(skip_serializing_if = "is_true")]
    pub truncate: bool,
}

fn is_true(b: &bool) -> bool {
    *b
}

/// An experiment with every name resolved.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Experiment {
    pub name: String,
    pub description: Option<String>,
    #[serde(skip)]
    pub file: PathBuf,
    pub models: Vec<(String, ModelConfig)>,
    pub tasks: Vec<(String, TaskConfig)>,
    pub methods: Vec<MethodRef>,
    pub ratios: Vec<f64>,
    pub run: RunSettings,
    pub plugins: Vec<PathBuf>,
}

impl Experiment {
    /// sha256 of the resolved experiment (canonical JSON).
    pub fn hash(&self) -> String {
        sha256_hex(&serde_json::to_string(self).unwrap_or_default())
    }
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Line and column (1-based) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    // The offset comes from the TOML parser: clamp it to the text and to a character boundary
    // rather than trust it (0 is always a boundary, so the loop ends).
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = text.get(..end).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(before.len(), |i| before.len() - i - 1) + 1;
    (line, col)
}

/// Reads and deserializes one TOML file, reporting the key path of a type error.
pub fn read_toml<T: serde::de::DeserializeOwned>(file: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|e| err(file, "(file)", format!("cannot read: {e}")))?;
    parse_toml(file, &text)
}

/// Deserializes TOML `text` (of `file`, for messages).
pub fn parse_toml<T: serde::de::DeserializeOwned>(file: &Path, text: &str) -> Result<T, ConfigError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let at = inner.span().map(|s| line_col(text, s.start)).map(|(l, c)| format!(" (line {l}, column {c})")).unwrap_or_default();
        let key = if path == "." || path.is_empty() { "(file)".to_string() } else { path };
        err(file, key, format!("{}{at}", inner.message().trim()))
    })
}

/// The directory holding `models/`, `tasks/`, `methods/` for an experiment file: the parent of its
/// `experiments` ancestor, else the experiment's own directory.
pub fn config_root(experiment: &Path) -> PathBuf {
    let abs = experiment.to_path_buf();
    for a in abs.ancestors().skip(1) {
        if a.file_name().is_some_and(|n| n == "experiments") {
            return a.parent().map(Path::to_path_buf).unwrap_or_default();
        }
    }
    abs.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The repository's `configs/` folder, where the built-in models, tasks and method presets live:
/// `$KVBENCH_CONFIGS` when set, else the `configs/` of the checkout this kvbench was built from
/// (when it still exists).
pub fn builtin_config_root() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("KVBENCH_CONFIGS").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?.join("configs");
    p.is_dir().then_some(p)
}

/// Where a `kind` (`models`, `tasks`, `methods`) config called `name` is looked for: beside the
/// experiment (its config tree `root`) first, then the built-in configs.
fn config_candidates(root: &Path, kind: &str, name: &str) -> Vec<PathBuf> {
    let mut v = vec![root.join(kind).join(format!("{name}.toml"))];
    if let Some(b) = builtin_config_root() {
        let f = b.join(kind).join(format!("{name}.toml"));
        if !v.contains(&f) {
            v.push(f);
        }
    }
    v
}

/// The first existing candidate of [`config_candidates`], or the list that was searched.
fn find_config(root: &Path, kind: &str, name: &str) -> Result<PathBuf, String> {
    let c = config_candidates(root, kind, name);
    if let Some(f) = c.iter().find(|f| f.is_file()) {
        return Ok(f.clone());
    }
    Err(c.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(" or "))
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) && !s.starts_with('.')
}

const DTYPES: &[&str] = &["f32", "bf16", "f16"];

fn check_model(file: &Path, m: &ModelConfig, out: &mut Vec<ConfigError>) {
    if m.source.trim().is_empty() {
        out.push(err(file, "source", "expected a model name, a path or hf:org/name, got an empty string"));
    }
    for (key, v) in [("dtype", &m.dtype), ("kv_dtype", &m.kv_dtype)] {
        if let Some(d) = v {
            if !DTYPES.contains(&d.as_str()) {
                out.push(err(file, key, format!("expected one of f32, bf16, f16, got \"{d}\"")));
            }
        }
    }
    if m.context_limit == Some(0) {
        out.push(err(file, "context_limit", "expected a positive number of tokens, got 0"));
    }
    for (key, v) in [("rope_theta", m.rope_theta), ("rope_theta_factor", m.rope_theta_factor), ("rope_linear_factor", m.rope_linear_factor)] {
        if let Some(x) = v {
            if !(x.is_finite() && x > 0.0) {
                out.push(err(file, key, format!("expected a positive number, got {x}")));
            }
        }
    }
    if m.rope_theta.is_some() && m.rope_theta_factor.is_some() {
        out.push(err(file, "rope_theta_factor", "expected either rope_theta or rope_theta_factor, not both"));
    }
    if m.max_position_embeddings == Some(0) {
        out.push(err(file, "max_position_embeddings", "expected a positive number of tokens, got 0"));
    }
    if let Some(f) = &m.chat_format {
        if !kvformats::chat::BUILTIN_FORMATS.contains(&f.as_str()) {
            out.push(err(file, "chat_format", format!("expected one of {}, got \"{f}\"", kvformats::chat::BUILTIN_FORMATS.join(", "))));
        }
    }
    if let Some(p) = &m.penalties {
        if !PENALTIES.contains(&p.as_str()) {
            out.push(err(file, "penalties", format!("expected one of {}, got \"{p}\"", PENALTIES.join(", "))));
        }
    }
}

fn check_task(file: &Path, t: &TaskConfig, out: &mut Vec<ConfigError>) {
    let known = t.task == "passkey"
        || t.task == "kamradt"
        || t.task == "code"
        || t.task.strip_prefix("ruler/").is_some_and(|r| !r.is_empty())
        || ["longbench/", "longbench_e/"].iter().any(|p| t.task.strip_prefix(p).is_some_and(|s| kvtasks::longbench::prompts::subset(s).is_some()))
        || ["retrieval/", "count/"].iter().any(|p| t.task.strip_prefix(p).is_some_and(|c| ["sotu", "moby_dick", "kjv"].contains(&c)));
    if !known {
        out.push(err(file, "task", format!("unknown task \"{}\": expected passkey, kamradt, ruler/<name>, retrieval/<sotu|moby_dick|kjv>, count/<sotu|moby_dick|kjv>, code or longbench/<subset>", t.task)));
    }
    if t.lengths.contains(&0) {
        out.push(err(file, "lengths", "expected positive lengths, got 0"));
    }
    for (key, v) in [
        ("samples", t.samples),
        ("depths", t.depths),
        ("trials", t.trials),
        ("limit", t.limit),
        ("steps", t.steps),
        ("max_input_tokens", t.max_input_tokens),
        ("max_new_tokens", t.max_new_tokens),
    ] {
        if v == Some(0) {
            out.push(err(file, key, "expected a positive number, got 0"));
        }
    }
    if let Some(f) = t.fraction {
        if !(f > 0.0 && f <= 1.0) {
            out.push(err(file, "fraction", format!("expected a fraction in (0, 1], got {f}")));
        }
        if t.limit.is_some() {
            out.push(err(file, "fraction", "give either `limit` or `fraction`, not both"));
        }
    }
}

fn merge_params(base: &toml::Table, over: &toml::Table) -> toml::Table {
    let mut out = base.clone();
    for (k, v) in over {
        out.insert(k.clone(), v.clone());
    }
    out
}

/// The problems of a model config (`file` names it in messages), each once.
pub fn validate_model(file: &Path, m: &ModelConfig) -> Vec<ConfigError> {
    let mut out = Vec::new();
    check_model(file, m, &mut out);
    out
}

/// The problems of a task config (`file` names it in messages), each once.
pub fn validate_task(file: &Path, t: &TaskConfig) -> Vec<ConfigError> {
    let mut out = Vec::new();
    check_task(file, t, &mut out);
    out
}

/// Loads an experiment and every file it names; all problems are returned together.
pub fn load_experiment(path: &Path) -> Result<Experiment, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors(vec![err(path, "(file)", format!("cannot read: {e}"))]))?;
    parse_experiment(path, &text)
}

/// [`load_experiment`] with the experiment file's `text` given (the models, tasks, methods and
/// plugins it names are still read from the config tree around `path`).
pub fn parse_experiment(path: &Path, text: &str) -> Result<Experiment, ConfigErrors> {
    let mut errors = Vec::new();
    let exp: ExperimentFile = parse_toml(path, text).map_err(|e| ConfigErrors(vec![e]))?;
    let root = config_root(path);
    if !valid_name(&exp.name) {
        errors.push(err(path, "name", format!("expected a name of letters, digits, '-', '_' or '.', got \"{}\"", exp.name)));
    }
    for (key, list) in [("models", &exp.models), ("tasks", &exp.tasks), ("methods", &exp.methods)] {
        if list.is_empty() {
            errors.push(err(path, key, "expected at least one name"));
        }
        let mut seen = BTreeSet::new();
        for (i, n) in list.iter().enumerate() {
            if !seen.insert(n) {
                errors.push(err(path, format!("{key}[{i}]"), format!("\"{n}\" is listed twice")));
            }
        }
    }
    for (i, r) in exp.ratios.iter().enumerate() {
        if !(r.is_finite() && *r >= 1.0) {
            errors.push(err(path, format!("ratios[{i}]"), format!("expected a ratio N >= 1 (keep 1/N), got {r}")));
        }
    }
    if exp.run.threads == Some(0) {
        errors.push(err(path, "run.threads", "expected a positive number of threads, got 0"));
    }
    if let Some(d) = &exp.run.device {
        let ok = d == "cpu" || d == "auto" || d == "cuda" || d.strip_prefix("cuda:").is_some_and(|n| n.parse::<usize>().is_ok());
        if !ok {
            errors.push(err(path, "run.device", format!("expected cpu, cuda, cuda:N or auto, got \"{d}\"")));
        }
    }

    let mut models = Vec::new();
    for (i, name) in exp.models.iter().enumerate() {
        let f = match find_config(&root, "models", name) {
            Ok(f) if valid_name(name) => f,
            Ok(_) => {
                errors.push(err(path, format!("models[{i}]"), format!("\"{name}\" is not a valid model name")));
                continue;
            }
            Err(searched) => {
                errors.push(err(path, format!("models[{i}]"), format!("unknown model \"{name}\": expected a file {searched}")));
                continue;
            }
        };
        match read_toml::<ModelConfig>(&f) {
            Ok(m) => {
                check_model(&f, &m, &mut errors);
                models.push((name.clone(), m));
            }
            Err(e) => errors.push(e),
        }
    }
    let mut tasks = Vec::new();
    for (i, name) in exp.tasks.iter().enumerate() {
        let f = match find_config(&root, "tasks", name) {
            Ok(f) if valid_name(name) => f,
            Ok(_) => {
                errors.push(err(path, format!("tasks[{i}]"), format!("\"{name}\" is not a valid task config name")));
                continue;
            }
            Err(searched) => {
                errors.push(err(path, format!("tasks[{i}]"), format!("unknown task config \"{name}\": expected a file {searched}")));
                continue;
            }
        };
        match read_toml::<TaskConfig>(&f) {
            Ok(t) => {
                check_task(&f, &t, &mut errors);
                tasks.push((name.clone(), t));
            }
            Err(e) => errors.push(e),
        }
    }
    let preset = |name: &str| -> Option<Result<MethodPreset, ConfigError>> {
        let f = find_config(&root, "methods", name).ok()?;
        valid_name(name).then(|| read_toml::<MethodPreset>(&f))
    };
    let mut inline_names = BTreeSet::new();
    for (i, m) in exp.inline_methods.iter().enumerate() {
        if !inline_names.insert(m.name.clone()) {
            errors.push(err(path, format!("method[{i}].name"), format!("\"{}\" is defined twice", m.name)));
        }
        if m.preset.is_none() && m.method.is_none() {
            errors.push(err(path, format!("method[{i}]"), "expected `method` (a registered method) or `preset` (a methods/*.toml name)"));
        }
    }
    let mut methods = Vec::new();
    for (i, name) in exp.methods.iter().enumerate() {
        let key = format!("methods[{i}]");
        if let Some((j, m)) = exp.inline_methods.iter().enumerate().find(|(_, m)| &m.name == name) {
            let base = match &m.preset {
                Some(p) => match preset(p) {
                    Some(Ok(b)) => Some(b),
                    Some(Err(e)) => {
                        errors.push(e);
                        continue;
                    }
                    None => {
                        errors.push(err(
                            path,
                            format!("method[{j}].preset"),
                            format!("unknown preset \"{p}\": expected a file {}", find_config(&root, "methods", p).unwrap_err()),
                        ));
                        continue;
                    }
                },
                None => None,
            };
            let method = m.method.clone().or_else(|| base.as_ref().map(|b| b.method.clone())).unwrap_or_default();
            let truncate = m.truncate.or(base.as_ref().and_then(|b| b.truncate)).unwrap_or(true);
            let params = merge_params(&base.map(|b| b.params).unwrap_or_default(), &m.params);
            methods.push(MethodRef { label: m.name.clone(), method, params, truncate });
        } else if let Some(p) = preset(name) {
            match p {
                Ok(p) => methods.push(MethodRef {
                    label: p.label.clone().unwrap_or_else(|| name.clone()),
                    method: p.method,
                    params: p.params,
                    truncate: p.truncate.unwrap_or(true),
                }),
                Err(e) => errors.push(e),
            }
        } else if valid_name(name) {
            // A registered method with its defaults; the runner checks the name.
            methods.push(MethodRef { label: name.clone(), method: name.clone(), params: toml::Table::new(), truncate: true });
        } else {
            errors.push(err(path, key, format!("\"{name}\" is not a valid method or preset name")));
        }
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let plugins = exp.plugins.iter().map(|p| base.join(p)).collect::<Vec<_>>();
    for (i, p) in plugins.iter().enumerate() {
        if !p.is_file() {
            errors.push(err(path, format!("plugins[{i}]"), format!("no such plugin file {}", p.display())));
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(Experiment { name: exp.name, description: exp.description, file: path.to_path_buf(), models, tasks, methods, ratios: exp.ratios, run: exp.run, plugins })
}

/// One grid cell.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Cell {
    pub id: String,
    pub model: String,
    pub model_config: ModelConfig,
    pub method: MethodRef,
    /// The N× budget when the method takes one.
    pub ratio: Option<f64>,
    pub task: String,
    pub task_config: TaskConfig,
    pub seed: u64,
    pub query_aware: bool,
    /// sha256 of the plugin library providing the method (`None`: built in).
    pub plugin_sha256: Option<String>,
}

/// Expands the grid: models × methods (× ratios, for methods where `takes_ratio(method)` and the
/// preset fixes no budget) × tasks, in a stable order, each with its id.
pub fn cells(exp: &Experiment, takes_ratio: &dyn Fn(&str) -> bool) -> Vec<Cell> {
    cells_with_plugins(exp, takes_ratio, &|_| None)
}

/// [`cells`], where `plugin_hash(method)` is the sha256 of the plugin library providing a method
/// (`None` for built-in methods): it joins the cell's identity, so a rebuilt plugin gets new
/// cell ids instead of mixing its records with the old build's on `--resume`. Built-in methods'
/// ids are unchanged.
pub fn cells_with_plugins(exp: &Experiment, takes_ratio: &dyn Fn(&str) -> bool, plugin_hash: &dyn Fn(&str) -> Option<String>) -> Vec<Cell> {
    let seed = exp.run.seed.unwrap_or(42);
    let mut out = Vec::new();
    for (model, mc) in &exp.models {
        for m in &exp.methods {
            let fixed = m.params.get("ratio").and_then(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)));
            let variants: Vec<(Option<f64>, toml::Table)> = if fixed.is_some() || m.params.contains_key("tokens") {
                vec![(fixed, m.params.clone())]
            } else if takes_ratio(&m.method) && !exp.ratios.is_empty() {
                exp.ratios
                    .iter()
                    .map(|&r| {
                        let mut p = m.params.clone();
                        p.insert("ratio".into(), if r.fract() == 0.0 { toml::Value::Integer(r as i64) } else { toml::Value::Float(r) });
                        (Some(r), p)
                    })
                    .collect()
            } else {
                vec![(None, m.params.clone())]
            };
            for (ratio, params) in variants {
                for (task, tc) in &exp.tasks {
                    let method = MethodRef { label: m.label.clone(), method: m.method.clone(), params: params.clone(), truncate: m.truncate };
                    let task_seed = tc.seed.unwrap_or(seed);
                    let mut identity = serde_json::json!({
                        "schema": CELL_SCHEMA,
                        "model": mc,
                        "method": method.method,
                        "params": method.params,
                        "task": tc,
                        "seed": task_seed,
                        "query_aware": exp.run.query_aware,
                    });
                    // Only an untruncated method adds the key, so every other cell keeps its id.
                    if !method.truncate {
                        identity["truncate"] = serde_json::Value::Bool(false);
                    }
                    let plugin_sha256 = plugin_hash(&method.method);
                    if let Some(h) = &plugin_sha256 {
                        identity["plugin_sha256"] = serde_json::Value::String(h.clone());
                    }
                    let id = sha256_hex(&identity.to_string())[..16].to_string();
                    out.push(Cell {
                        id,
                        model: model.clone(),
                        model_config: mc.clone(),
                        method,
                        ratio,
                        task: task.clone(),
                        task_config: tc.clone(),
                        seed: task_seed,
                        query_aware: exp.run.query_aware,
                        plugin_sha256,
                    });
                }
            }
        }
    }
    out
}

/// Parses `i/N` (0-based shard `i` of `N`).
pub fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    let (i, n) = s.split_once('/').ok_or_else(|| format!("--shard {s}: expected i/N, e.g. 0/4"))?;
    let (i, n): (usize, usize) =
        (i.trim().parse().map_err(|_| format!("--shard {s}: i is not a number"))?, n.trim().parse().map_err(|_| format!("--shard {s}: N is not a number"))?);
    if n == 0 || i >= n {
        return Err(format!("--shard {s}: expected 0 <= i < N"));
    }
    Ok((i, n))
}

/// The cells of shard `i` of `n`: cells sorted by (model, id) and dealt round-robin, so the split
/// is deterministic and each worker still visits its cells model by model (one load per model).
pub fn shard(mut cells: Vec<Cell>, i: usize, n: usize) -> Vec<Cell> {
    cells.sort_by(|a, b| (&a.model, &a.id).cmp(&(&b.model, &b.id)));
    cells.into_iter().enumerate().filter(|(k, _)| k % n == i).map(|(_, c)| c).collect()
}

#[cfg(test)]
mod tests {
    use super::line_col;

    #[test]
    fn line_col_tolerates_any_offset() {
        let text = "a = 1\nb = \"é\"\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        let e = text.find('é').unwrap();
        assert_eq!(line_col(text, e + 1), line_col(text, e), "inside a character: its start");
        assert_eq!(line_col(text, usize::MAX), line_col(text, text.len()));
    }
}
