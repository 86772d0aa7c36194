//! `kvbench export RUN --format kvpress`: a run's cells rewritten in the layout of NVIDIA
//! kvpress's evaluation outputs (`evaluation/evaluate.py`), so that kvbench results can be copied
//! next to kvpress's own result directories and leaderboard entries and be read by the same
//! scripts. A file-format mapping only: nothing is re-scored, every number comes from the records.
//!
//! # Layout
//!
//! kvpress writes one directory per evaluation, named by joining with `__` the non-empty parts
//! `dataset`, `data_dir`, `model` (with `/` as `--`), `press_name`, `compression_ratio` (two
//! decimals) and, when set, `query_aware`; it holds three files. The export writes
//!
//! ```text
//! OUT/<dataset>__<data_dir>__<model>__<press_name>__<compression_ratio:.2f>[__query_aware]/
//!   predictions.csv   one row per sample (kvpress: the dataset's rows without `context`, plus
//!                     `predicted_answer` and `compression_ratio`)
//!   metrics.json      the kvpress scorer's output shape for the dataset, from kvbench's scores
//!   config.yaml       kvpress's EvaluationConfig keys, then kvbench's provenance (`kvbench_*`)
//! ```
//!
//! # Which kvbench cells go where
//!
//! | kvbench task          | kvpress `dataset` | `data_dir`                         | `task` column  |
//! |-----------------------|-------------------|------------------------------------|----------------|
//! | `ruler/<name>`        | `ruler`           | the sample's `max_seq_length`      | `<name>`       |
//! | `longbench/<subset>`  | `longbench`       | `<subset>`                         | `<subset>`     |
//! | `longbench_e/<subset>`| `longbench-e`     | `<subset>_e`                       | `<subset>`     |
//! | `<family>/<name>`     | `<family>`        | `<name>`                           | kvbench task   |
//! | `<task>` (passkey...) | `<task>`          | none                               | kvbench task   |
//!
//! A kvpress RULER evaluation covers every RULER task of one context length, while kvbench has
//! one cell per RULER task (possibly over several lengths): the records of all RULER cells of
//! one model × method × budget with the same `max_seq_length` go into one directory, as kvpress
//! would have written them. Every other cell becomes its own directory. The datasets kvbench has
//! and kvpress does not (passkey, kamradt, retrieval, count, code) keep kvbench's names; kvbench's
//! `kamradt` is not mapped to kvpress's `needle_in_haystack`, whose directories are per needle
//! depth and context length and whose metrics are per-sample ROUGE dicts.
//!
//! # Field mapping
//!
//! Directory name and `config.yaml`:
//! * `model`: the cell's model name as configured in kvbench (e.g. `llama-3-8b-instruct`), or the
//!   Hugging Face id given in [`ExportOptions::model_ids`]; run directories do not record the
//!   checkpoint's hub id, which kvpress uses.
//! * `press_name`: the method's preset label (`snapkv`, `kivi-2bit`: unique per preset, where the
//!   method name `kivi` is not); the full cache is kvpress's `no_press`.
//! * `compression_ratio` (kvpress: the fraction of the cache removed): `1 - 1/N` for kvbench's
//!   N× budget (2× → 0.5, 8× → 0.875, directory `0.88`); 0 for the full cache; for methods
//!   without a budget (quantization, fixed token counts) the measured saving
//!   `1 - Σ kv_bytes_held / Σ kv_bytes_full` over the directory's records. Which one it is:
//!   `kvbench_compression_ratio_source` (`budget`, `full` or `measured`).
//! * `device`: run.json's device without kvbench's thread note (`cpu`, `cuda:0`); `seed`: the
//!   cell's seed; `output_dir`: the export directory; `press_init_command`: the kvbench method
//!   and its parameters, e.g. `snapkv(ratio=2)` (`None` for the full cache, as kvpress writes for
//!   `no_press`).
//! * Not recorded by kvbench, written as kvpress's "not set": `max_new_tokens` and
//!   `max_context_length` (null: kvbench used each task's own generation length and each model's
//!   own context limit), `key_channel_compression_ratio`, `needle_depth`,
//!   `compression_interval`, `target_size`, `hidden_states_buffer_size` (null), `fraction` (1.0:
//!   all of the cell's samples), `model_kwargs` ({}), `fp8` (false), `log_level` (kvpress's
//!   default `INFO`). `query_aware` is not in run directories either: null unless
//!   [`ExportOptions::query_aware`] says it.
//! * After kvpress's keys: `kvbench_experiment`, `kvbench_config_hash`, `kvbench_version`,
//!   `kvbench_git_commit`, `kvbench_device`, `kvbench_model`, `kvbench_model_sha256`,
//!   `kvbench_method`, `kvbench_method_label`, `kvbench_method_params` (JSON text),
//!   `kvbench_ratio`, `kvbench_compression_ratio_source`, `kvbench_template`,
//!   `kvbench_plugin_sha256`, `kvbench_tasks`, `kvbench_cells`, `kvbench_samples`,
//!   `kvbench_complete` (every cell done with all its samples).
//!
//! `predictions.csv` (kvpress writes its columns in arbitrary order; the export fixes one):
//! * RULER and kvbench-only datasets: `question`, `answer_prefix`, `answer`, `task`,
//!   `max_new_tokens`, `predicted_answer`, `compression_ratio`.
//! * LongBench(-E): `question`, `answers`, `length`, `dataset`, `language`, `all_classes`, `_id`,
//!   `answer_prefix`, `task`, `max_new_tokens`, `predicted_answer`, `compression_ratio`.
//! * Then, for every dataset: `kvbench_sample_id`, `kvbench_score`, `kvbench_scores` (every
//!   metric, JSON object), `kvbench_input_tokens`, `kvbench_generated_tokens`,
//!   `kvbench_kv_compression` (achieved `kv_bytes_full / kv_bytes_held`).
//! * From the records: `predicted_answer` (the prediction), `answer`/`answers` (the references,
//!   as a JSON array), `task`, the LongBench `length`, `language`, `all_classes` (JSON array, or
//!   empty) and `_id` (the sample id, which is the LongBench record's `_id`), `dataset` (the
//!   LongBench file name, `qasper` or `qasper_e`), `compression_ratio` (as in config.yaml).
//! * Not in the records, left empty: `question`, `answer_prefix` and `max_new_tokens` (records
//!   keep the prediction, not the prompt), and like kvpress no `context` column at all.
//!   kvpress's list columns are numpy's repr (`['a' 'b']`); JSON arrays parse back.
//!
//! `metrics.json` (indented by 4 like kvpress's `json.dump(..., indent=4)`; means rounded to 2
//! decimals as kvpress's scorers round):
//! * `ruler`: `{"<task>": {"string_match": mean}}`, kvpress's RULER shape, from kvbench's
//!   headline score (RULER `string_match_all`).
//! * `longbench`: the mean score as a bare number, as kvpress's LongBench scorer returns it.
//! * `longbench-e`: `{"0-4k": m, "4-8k": m, "8k+": m}` by the record's `length` (kvpress's
//!   buckets); an empty bucket is null (kvpress writes NaN, which is not JSON).
//! * kvbench-only datasets: `{"<task>": {"<metric>": mean}}` over the records' `scores`.
//!
//! Scale: kvpress's RULER and LongBench(-E) scorers report 0–100 (its InfiniteBench, LooGLE and
//! LongBench-v2 scorers 0–1, datasets kvbench has not); kvbench's scores are 0–100, so nothing
//! is rescaled and every exported number is 0–100.
//!
//! Files are written atomically; exporting the same run again rewrites identical files.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::format::non_finite;
use crate::fsio;
use crate::leaderboard::mean;
use crate::load::{load_runs, Cell, LoadWarning, LoadedRuns};
use crate::record::{RunInfo, SampleRecord};
use crate::ReportError;

/// The three files of a kvpress result directory.
pub const PREDICTIONS_FILE: &str = "predictions.csv";
pub const METRICS_FILE: &str = "metrics.json";
pub const CONFIG_FILE: &str = "config.yaml";

/// kvpress's name for the uncompressed cache.
pub const NO_PRESS: &str = "no_press";

/// Why an export could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{}: no cells to export (cells/ is missing or holds no cell with records)", .0.display())]
    NoCells(PathBuf),
    #[error("{}: {source}", .path.display())]
    Csv {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },
    #[error("cells {} and {} would both be exported to {name:?} (same dataset, model, press name and compression ratio)", .first.display(), .second.display())]
    Collision { name: String, first: PathBuf, second: PathBuf },
}

/// What the run directories do not say and the caller may know.
#[derive(Clone, Debug, Default)]
pub struct ExportOptions {
    /// Hugging Face id by kvbench model name (e.g. `llama-3-8b-instruct` →
    /// `meta-llama/Meta-Llama-3-8B-Instruct`), for kvpress's `model` field and directory names.
    pub model_ids: BTreeMap<String, String>,
    /// Whether the run compressed context and question together (kvbench's
    /// `run.query_aware`); `None` writes null and leaves it out of the directory names.
    pub query_aware: Option<bool>,
}

/// One directory written.
#[derive(Clone, Debug)]
pub struct ExportedDir {
    pub path: PathBuf,
    /// The kvbench cell ids whose records it holds.
    pub cells: Vec<String>,
    pub records: usize,
}

/// What an export produced.
#[derive(Clone, Debug)]
pub struct ExportSummary {
    /// One per kvpress result directory, sorted by name.
    pub dirs: Vec<ExportedDir>,
    /// Every file written, in writing order.
    pub files: Vec<PathBuf>,
    /// Cells exported.
    pub cells: usize,
    pub records: usize,
    /// Things worth telling the user (incomplete cells, cells without records skipped, ...).
    pub warnings: Vec<LoadWarning>,
}

/// Writes every cell of the run directory `run_dir` into `out` (created if needed) in kvpress's
/// evaluation layout (see the module documentation).
pub fn export_kvpress(run_dir: &Path, out: &Path) -> Result<ExportSummary, ReportError> {
    export_kvpress_with(run_dir, out, &ExportOptions::default())
}

/// [`export_kvpress`] with what the run directory does not record.
pub fn export_kvpress_with(run_dir: &Path, out: &Path, opts: &ExportOptions) -> Result<ExportSummary, ReportError> {
    let loaded = load_runs(&[run_dir.to_path_buf()])?;
    export_loaded(&loaded, run_dir, out, opts)
}

/// How a kvbench task maps onto kvpress's datasets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Family {
    Ruler,
    LongBench,
    LongBenchE,
    Other,
}

/// (dataset, data_dir unless per-record, family, `task` column) of a kvbench task.
fn dataset_of(task: &str) -> (String, Option<String>, Family, String) {
    if let Some(name) = task.strip_prefix("ruler/") {
        ("ruler".into(), None, Family::Ruler, name.into())
    } else if let Some(sub) = task.strip_prefix("longbench/") {
        ("longbench".into(), Some(sub.into()), Family::LongBench, sub.into())
    } else if let Some(sub) = task.strip_prefix("longbench_e/") {
        ("longbench-e".into(), Some(format!("{sub}_e")), Family::LongBenchE, sub.into())
    } else if let Some((family, name)) = task.split_once('/') {
        (family.into(), Some(name.into()), Family::Other, task.into())
    } else {
        (task.into(), None, Family::Other, task.into())
    }
}

/// A JSON metadata value as text: strings bare, numbers and the rest as JSON.
fn meta_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A float as Python's `repr` writes it for the values kvbench produces (`0.5`, `1.0`, `100.0`,
/// `0.6666666666666667`); never a negative zero.
fn py_float(v: f64) -> String {
    if let Some(word) = non_finite(v) {
        return word.into();
    }
    let v = if v == 0.0 { 0.0 } else { v };
    if v.fract() == 0.0 && v.abs() < 1e16 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

/// Python's `round(v, 2)` (correct rounding of the binary value, ties to even).
fn round2(v: f64) -> f64 {
    if !v.is_finite() {
        return v;
    }
    format!("{v:.2}").parse().unwrap_or(v)
}

/// A rounded mean as a JSON number (null for no values).
fn metric_value(m: Option<f64>) -> Value {
    m.map(round2).map_or(Value::Null, Value::from)
}

/// A directory-name part: path separators become `--` (as kvpress writes a model's `/`), control
/// characters `_`.
fn name_part(s: &str) -> String {
    s.replace(['/', '\\'], "--").chars().map(|c| if c.is_control() { '_' } else { c }).collect()
}

/// The method and its parameters, in the spirit of kvpress's `str(press)`: `snapkv(ratio=2)`.
fn press_init_command(cell: &Cell) -> String {
    if cell.info.is_full() {
        return "None".into();
    }
    let params = match &cell.info.method_params {
        Value::Object(m) => m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", "),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    format!("{}({params})", cell.info.method)
}

/// The records of one kvpress directory: the cells (sorted by task) and their records there.
struct Group<'a> {
    dataset: String,
    data_dir: Option<String>,
    family: Family,
    parts: Vec<(&'a Cell, Vec<&'a SampleRecord>)>,
}

impl Group<'_> {
    fn first(&self) -> &Cell {
        self.parts[0].0
    }

    fn records(&self) -> impl Iterator<Item = (&Cell, &SampleRecord)> {
        self.parts.iter().flat_map(|(c, rs)| rs.iter().map(move |r| (*c, *r)))
    }

    fn record_count(&self) -> usize {
        self.parts.iter().map(|(_, rs)| rs.len()).sum()
    }

    /// kvpress's compression ratio and where it came from.
    fn compression_ratio(&self) -> (f64, &'static str) {
        let info = &self.first().info;
        if info.is_full() {
            return (0.0, "full");
        }
        if let Some(n) = info.ratio {
            return (if n > 0.0 { 1.0 - 1.0 / n } else { 0.0 }, "budget");
        }
        let (held, full) = self.records().fold((0.0, 0.0), |(h, f), (_, r)| (h + r.kv_bytes_held as f64, f + r.kv_bytes_full as f64));
        (if full > 0.0 { 1.0 - held / full } else { 0.0 }, "measured")
    }

    fn press_name(&self) -> String {
        let info = &self.first().info;
        if info.is_full() {
            NO_PRESS.into()
        } else {
            info.method_label.clone()
        }
    }

    fn model(&self, opts: &ExportOptions) -> String {
        let m = &self.first().info.model;
        opts.model_ids.get(m).cloned().unwrap_or_else(|| m.clone())
    }

    fn dir_name(&self, opts: &ExportOptions) -> String {
        let (cr, _) = self.compression_ratio();
        let mut parts = vec![self.dataset.clone(), self.data_dir.clone().unwrap_or_default(), self.model(opts), self.press_name(), format!("{:.2}", cr)];
        if opts.query_aware == Some(true) {
            parts.push("query_aware".into());
        }
        parts.iter().filter(|p| !p.is_empty()).map(|p| name_part(p)).collect::<Vec<_>>().join("__")
    }
}

/// Everything of a cell's identity except its task, so cells of one method row group together.
fn row_identity(cell: &Cell) -> String {
    let i = &cell.info;
    json!([i.model, i.method, i.method_label, i.method_params, i.ratio, i.template, i.seed, i.plugin_sha256]).to_string()
}

fn group_cells(cells: &[Cell]) -> Vec<Group<'_>> {
    // key: (dataset, data_dir, row identity); BTreeMap for a stable order
    let mut groups: BTreeMap<(String, Option<String>, String), Group<'_>> = BTreeMap::new();
    let mut sorted: Vec<&Cell> = cells.iter().filter(|c| !c.records.is_empty()).collect();
    sorted.sort_by(|a, b| (&a.info.task, &a.info.id).cmp(&(&b.info.task, &b.info.id)));
    for cell in sorted {
        let (dataset, fixed_dir, family, _) = dataset_of(&cell.info.task);
        let ident = row_identity(cell);
        // RULER: one directory per context length, as kvpress's data_dir is the length
        let mut by_dir: BTreeMap<Option<String>, Vec<&SampleRecord>> = BTreeMap::new();
        for r in &cell.records {
            let dir = if family == Family::Ruler { r.metadata.get("max_seq_length").map(meta_text) } else { fixed_dir.clone() };
            by_dir.entry(dir).or_default().push(r);
        }
        for (data_dir, recs) in by_dir {
            let g = groups.entry((dataset.clone(), data_dir.clone(), ident.clone())).or_insert_with(|| Group {
                dataset: dataset.clone(),
                data_dir,
                family,
                parts: Vec::new(),
            });
            g.parts.push((cell, recs));
        }
    }
    groups.into_values().collect()
}

fn predictions_csv(g: &Group<'_>, compression_ratio: f64) -> Result<String, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let longbench = matches!(g.family, Family::LongBench | Family::LongBenchE);
    let mut header: Vec<&str> = if longbench {
        vec![
            "question",
            "answers",
            "length",
            "dataset",
            "language",
            "all_classes",
            "_id",
            "answer_prefix",
            "task",
            "max_new_tokens",
            "predicted_answer",
            "compression_ratio",
        ]
    } else {
        vec!["question", "answer_prefix", "answer", "task", "max_new_tokens", "predicted_answer", "compression_ratio"]
    };
    header.extend(["kvbench_sample_id", "kvbench_score", "kvbench_scores", "kvbench_input_tokens", "kvbench_generated_tokens", "kvbench_kv_compression"]);
    w.write_record(&header)?;
    let cr = py_float(compression_ratio);
    for (cell, r) in g.records() {
        let (_, _, _, task) = dataset_of(&cell.info.task);
        let answers = Value::from(r.answers.clone()).to_string();
        let meta = |k: &str| r.metadata.get(k).map(meta_text).unwrap_or_default();
        let mut row: Vec<String> = if longbench {
            let file = match (g.family, r.metadata.get("subset").and_then(Value::as_str)) {
                (Family::LongBenchE, Some(s)) => format!("{s}_e"),
                (_, Some(s)) => s.to_string(),
                (_, None) => g.data_dir.clone().unwrap_or_default(),
            };
            let classes = match r.metadata.get("all_classes") {
                None | Some(Value::Null) => String::new(),
                Some(v) => v.to_string(),
            };
            vec![
                String::new(),
                answers,
                meta("length"),
                file,
                meta("language"),
                classes,
                r.sample_id.clone(),
                String::new(),
                task,
                String::new(),
                r.prediction.clone(),
                cr.clone(),
            ]
        } else {
            vec![String::new(), String::new(), answers, task, String::new(), r.prediction.clone(), cr.clone()]
        };
        let scores: serde_json::Map<String, Value> = r.scores.iter().map(|(k, v)| (k.clone(), Value::from(*v))).collect();
        row.extend([
            r.sample_id.clone(),
            py_float(r.score),
            Value::Object(scores).to_string(),
            r.input_tokens.to_string(),
            r.generated_tokens.to_string(),
            py_float(r.compression_ratio),
        ]);
        w.write_record(&row)?;
    }
    let bytes = w.into_inner().map_err(|e| csv::Error::from(e.into_error()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn metrics_json(g: &Group<'_>) -> Value {
    match g.family {
        Family::Ruler => {
            let mut m = serde_json::Map::new();
            for (cell, recs) in &g.parts {
                let (_, _, _, task) = dataset_of(&cell.info.task);
                m.insert(task, json!({ "string_match": metric_value(mean(recs.iter().map(|r| r.score))) }));
            }
            Value::Object(m)
        }
        Family::LongBench => metric_value(mean(g.records().map(|(_, r)| r.score))),
        Family::LongBenchE => {
            let bucket = |lo: f64, hi: f64| {
                metric_value(mean(g.records().filter(|(_, r)| r.meta_f64("length").is_some_and(|l| l >= lo && l < hi)).map(|(_, r)| r.score)))
            };
            json!({ "0-4k": bucket(f64::NEG_INFINITY, 4000.0), "4-8k": bucket(4000.0, 8000.0), "8k+": bucket(8000.0, f64::INFINITY) })
        }
        Family::Other => {
            let mut m = serde_json::Map::new();
            for (cell, recs) in &g.parts {
                let names: BTreeSet<&String> = recs.iter().flat_map(|r| r.scores.keys()).collect();
                let mut per = serde_json::Map::new();
                if names.is_empty() {
                    per.insert("score".into(), metric_value(mean(recs.iter().map(|r| r.score))));
                }
                for name in names {
                    per.insert(name.clone(), metric_value(mean(recs.iter().filter_map(|r| r.scores.get(name).copied()))));
                }
                m.insert(cell.info.task.clone(), Value::Object(per));
            }
            Value::Object(m)
        }
    }
}

/// `json.dump(obj, f, indent=4)`'s layout.
fn pretty4(v: &Value) -> String {
    use serde::Serialize;
    let mut buf = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, serde_json::ser::PrettyFormatter::with_indent(b"    "));
    // serializing a Value into memory cannot fail
    let _ = v.serialize(&mut ser);
    String::from_utf8_lossy(&buf).into_owned()
}

/// A YAML double-quoted scalar: printable ASCII as is, everything else escaped, so no text can
/// change the document's structure (YAML reads JSON-style `\uXXXX` escapes in double quotes).
fn yaml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            ' '..='~' => out.push(c),
            c if (c as u32) <= 0xFFFF => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push_str(&format!("\\U{:08X}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// A YAML value for one flat key.
enum Y {
    Str(String),
    OptStr(Option<String>),
    Float(f64),
    OptFloat(Option<f64>),
    Int(u64),
    Bool(bool),
    Null,
    EmptyMap,
    List(Vec<String>),
}

fn yaml_doc(entries: &[(&str, Y)]) -> String {
    let mut out = String::new();
    for (k, v) in entries {
        let text = match v {
            Y::Str(s) | Y::OptStr(Some(s)) => yaml_str(s),
            Y::Float(f) | Y::OptFloat(Some(f)) => py_float(*f),
            Y::Int(i) => i.to_string(),
            Y::Bool(b) => b.to_string(),
            Y::Null | Y::OptStr(None) | Y::OptFloat(None) => "null".into(),
            Y::EmptyMap => "{}".into(),
            Y::List(items) if items.is_empty() => "[]".into(),
            Y::List(items) => {
                out.push_str(&format!("{k}:\n"));
                for i in items {
                    out.push_str(&format!("- {}\n", yaml_str(i)));
                }
                continue;
            }
        };
        out.push_str(&format!("{k}: {text}\n"));
    }
    out
}

fn config_yaml(g: &Group<'_>, run: Option<&RunInfo>, out: &Path, opts: &ExportOptions) -> String {
    let info = &g.first().info;
    let (cr, source) = g.compression_ratio();
    let device = run.map(|r| r.device.split(" (").next().unwrap_or_default().trim().to_string());
    let tasks: Vec<String> = g.parts.iter().map(|(c, _)| c.info.task.clone()).collect();
    let cells: Vec<String> = g.parts.iter().map(|(c, _)| c.info.id.clone()).collect();
    let complete = g.parts.iter().all(|(c, _)| c.is_complete());
    let entries = [
        // kvpress's EvaluationConfig, in its order
        ("dataset", Y::Str(g.dataset.clone())),
        ("data_dir", Y::OptStr(g.data_dir.clone())),
        ("model", Y::Str(g.model(opts))),
        ("device", Y::OptStr(device)),
        ("press_name", Y::Str(g.press_name())),
        ("compression_ratio", Y::Float(cr)),
        ("key_channel_compression_ratio", Y::Null),
        ("fraction", Y::Float(1.0)),
        ("max_new_tokens", Y::Null),
        ("max_context_length", Y::Null),
        ("query_aware", opts.query_aware.map_or(Y::Null, Y::Bool)),
        ("needle_depth", Y::Null),
        ("compression_interval", Y::Null),
        ("target_size", Y::Null),
        ("hidden_states_buffer_size", Y::Null),
        ("output_dir", Y::Str(out.display().to_string())),
        ("log_level", Y::Str("INFO".into())),
        ("model_kwargs", Y::EmptyMap),
        ("press_init_command", Y::Str(press_init_command(g.first()))),
        ("seed", Y::Int(info.seed)),
        ("fp8", Y::Bool(false)),
        // kvbench's provenance
        ("kvbench_experiment", Y::OptStr(run.map(|r| r.experiment.clone()))),
        ("kvbench_config_hash", Y::OptStr(run.map(|r| r.config_hash.clone()))),
        ("kvbench_version", Y::OptStr(run.map(|r| r.kvbench_version.clone()))),
        ("kvbench_git_commit", Y::OptStr(run.map(|r| r.git_commit.clone()))),
        ("kvbench_device", Y::OptStr(run.map(|r| r.device.clone()))),
        ("kvbench_model", Y::Str(info.model.clone())),
        ("kvbench_model_sha256", Y::OptStr(run.and_then(|r| r.model_hashes.get(&info.model).cloned()))),
        ("kvbench_method", Y::Str(info.method.clone())),
        ("kvbench_method_label", Y::Str(info.method_label.clone())),
        ("kvbench_method_params", Y::Str(info.method_params.to_string())),
        ("kvbench_ratio", Y::OptFloat(info.ratio)),
        ("kvbench_compression_ratio_source", Y::Str(source.into())),
        ("kvbench_template", Y::Str(info.template.clone())),
        ("kvbench_plugin_sha256", Y::OptStr(info.plugin_sha256.clone())),
        ("kvbench_tasks", Y::List(tasks)),
        ("kvbench_cells", Y::List(cells)),
        ("kvbench_samples", Y::Int(g.record_count() as u64)),
        ("kvbench_complete", Y::Bool(complete)),
    ];
    yaml_doc(&entries)
}

/// [`export_kvpress_with`] on runs already loaded (`source` names them in errors).
pub fn export_loaded(loaded: &LoadedRuns, source: &Path, out: &Path, opts: &ExportOptions) -> Result<ExportSummary, ReportError> {
    let mut warnings = loaded.warnings.clone();
    for c in loaded.cells.iter().filter(|c| c.records.is_empty()) {
        warnings.push(LoadWarning { path: c.dir.clone(), line: None, message: "cell without records: not exported".into() });
    }
    let groups = group_cells(&loaded.cells);
    if groups.is_empty() {
        return Err(ExportError::NoCells(source.to_path_buf()).into());
    }
    let mut names: BTreeMap<String, &Group<'_>> = BTreeMap::new();
    for g in &groups {
        let name = g.dir_name(opts);
        if let Some(other) = names.get(&name) {
            return Err(ExportError::Collision { name, first: other.first().dir.clone(), second: g.first().dir.clone() }.into());
        }
        names.insert(name, g);
    }
    let run = loaded.runs.first().map(|r| &r.info);
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ReportError::Io { path, source }
    };
    fs::create_dir_all(out).map_err(io_err(out))?;
    let mut summary = ExportSummary { dirs: Vec::new(), files: Vec::new(), cells: 0, records: 0, warnings };
    for (name, g) in names {
        let dir = out.join(&name);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        // A writer killed mid-write leaves a temp file; these three files are ours, so clear them.
        fsio::remove_stale_temps(&dir).map_err(io_err(&dir))?;
        let (cr, _) = g.compression_ratio();
        let pred_path = dir.join(PREDICTIONS_FILE);
        let csv = predictions_csv(g, cr).map_err(|source| ExportError::Csv { path: pred_path.clone(), source })?;
        let files = [(pred_path, csv), (dir.join(METRICS_FILE), pretty4(&metrics_json(g))), (dir.join(CONFIG_FILE), config_yaml(g, run, out, opts))];
        for (path, text) in files {
            fsio::write_atomic(&path, text.as_bytes()).map_err(io_err(&path))?;
            summary.files.push(path);
        }
        let cells: Vec<String> = g.parts.iter().map(|(c, _)| c.info.id.clone()).collect();
        summary.records += g.record_count();
        summary.dirs.push(ExportedDir { path: dir, cells, records: g.record_count() });
    }
    let exported: BTreeSet<&str> = groups.iter().flat_map(|g| g.parts.iter().map(|(c, _)| c.info.id.as_str())).collect();
    summary.cells = exported.len();
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_and_rounding_as_python() {
        assert_eq!(py_float(0.5), "0.5");
        assert_eq!(py_float(1.0), "1.0");
        assert_eq!(py_float(0.0), "0.0");
        assert_eq!(py_float(-0.0), "0.0");
        assert_eq!(py_float(1.0 - 1.0 / 3.0), "0.6666666666666667");
        assert_eq!(round2(2.675), 2.67);
        assert_eq!(round2(0.125), 0.12);
        assert_eq!(round2(200.0 / 3.0), 66.67);
        assert_eq!(format!("{:.2}", 0.875), "0.88");
    }

    #[test]
    fn yaml_strings_cannot_break_out() {
        assert_eq!(yaml_str("a: b"), "\"a: b\"");
        assert_eq!(yaml_str("q\"\\\n#"), "\"q\\\"\\\\\\n#\"");
        assert_eq!(yaml_str("é\u{2028}😀"), "\"\\u00E9\\u2028\\U0001F600\"");
    }

    #[test]
    fn datasets() {
        assert_eq!(dataset_of("ruler/vt"), ("ruler".into(), None, Family::Ruler, "vt".into()));
        assert_eq!(dataset_of("longbench_e/qasper"), ("longbench-e".into(), Some("qasper_e".into()), Family::LongBenchE, "qasper".into()));
        assert_eq!(dataset_of("retrieval/sotu"), ("retrieval".into(), Some("sotu".into()), Family::Other, "retrieval/sotu".into()));
        assert_eq!(dataset_of("passkey"), ("passkey".into(), None, Family::Other, "passkey".into()));
    }
}
