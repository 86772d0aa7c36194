//! The on-disk contract of a run directory, shared by the runner (writer) and the reports
//! (readers). Names here are contracts: scripts and reviewers read these files.
//!
//! ```text
//! RUN_DIR/
//!   run.json                      RunInfo: provenance of the run (one per run or shard)
//!   cells/<cell_id>/cell.json     CellInfo: what the cell is (model, method, budget, task)
//!   cells/<cell_id>/records.jsonl one SampleRecord per line, append-only, fsync'd per sample
//!   cells/<cell_id>/done          present once every sample of the cell is recorded
//! ```
//!
//! A cell id is a stable hash of everything that determines its results, so shards of one
//! experiment write disjoint cell directories and merging is a union.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Provenance of one run (or one shard of it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// The experiment's `name`.
    pub experiment: String,
    /// sha256 of the experiment config after presets were resolved (canonical TOML).
    pub config_hash: String,
    pub kvbench_version: String,
    /// `git rev-parse HEAD` of the kvbench checkout (with `+dirty` when tracked files have
    /// uncommitted changes), or "unknown".
    pub git_commit: String,
    /// Every kvbench commit whose binary ran in this run directory: a run resumed over several
    /// sittings lists each, oldest first (`git_commit` is the latest); a merged run lists the
    /// union of its shards' lists, sorted.
    /// Absent in runs written before it was recorded; read it through [`RunInfo::commits`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub git_commits: Vec<String>,
    pub libtorch_version: String,
    /// e.g. "cpu (2 threads)", "cuda:0".
    pub device: String,
    /// The CPU of every sitting that wrote to this run, first-seen order, each once: model name
    /// and widest vector instruction set, e.g. `Intel(R) Xeon(R) Processor (avx512f)`. libtorch's
    /// CPU kernels (MKL) are chosen by CPU, so the last bits of a result can depend on it; a
    /// merged run lists the union, sorted. Absent in runs written before it was recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpus: Vec<String>,
    /// How decode steps' matrix products ran in every sitting, first-seen order, each once:
    /// `kernel` (kvbench's batch-invariant kernel, `kvcore::decode_matmul`) or `libtorch`
    /// (`KVBENCH_DECODE_MATMUL=libtorch`, GPUs, non-f32 dtypes). The last bits of decoded logits
    /// depend on it; a merged run lists the union, sorted. Absent in runs written before it was
    /// recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decode_matmul: Vec<String>,
    pub threads: usize,
    /// `i/N` when sharded, else "0/1".
    pub shard: String,
    /// sha256 of each model file used, by model name.
    pub model_hashes: BTreeMap<String, String>,
    /// sha256 of each data set used, by name.
    pub data_hashes: BTreeMap<String, String>,
    /// Every external plugin loaded (path and sha256 of the library, the methods it provided);
    /// absent when none was.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<PluginInfo>,
}

impl RunInfo {
    /// The commits that wrote this run, oldest first: `git_commits`, or `git_commit` alone for a
    /// run that predates the list.
    pub fn commits(&self) -> Vec<String> {
        if self.git_commits.is_empty() {
            vec![self.git_commit.clone()]
        } else {
            self.git_commits.clone()
        }
    }

    /// Appends `commit` to `git_commits` (seeded from [`commits`](RunInfo::commits)) unless
    /// it is already the list's last entry.
    pub fn add_commits(&mut self, earlier: &[String], commit: &str) {
        let mut all: Vec<String> = Vec::new();
        for c in earlier.iter().map(String::as_str).chain(std::iter::once(commit)) {
            if all.last().map(String::as_str) != Some(c) {
                all.push(c.to_string());
            }
        }
        self.git_commits = all;
    }

    /// Puts the CPUs of earlier sittings (`earlier`) before this sitting's, each listed once.
    pub fn add_cpus(&mut self, earlier: &[String]) {
        self.cpus = first_seen(earlier, &self.cpus);
    }

    /// Puts the decode paths of earlier sittings (`earlier`) before this sitting's, each listed
    /// once.
    pub fn add_decode_matmul(&mut self, earlier: &[String]) {
        self.decode_matmul = first_seen(earlier, &self.decode_matmul);
    }

    /// Records that this sitting decodes through `path` (once).
    pub fn note_decode_matmul(&mut self, path: &str) {
        self.decode_matmul = first_seen(&self.decode_matmul, &[path.to_string()]);
    }
}

/// `earlier` then `mine`, each entry once, in first-seen order.
fn first_seen(earlier: &[String], mine: &[String]) -> Vec<String> {
    let mut all: Vec<String> = Vec::new();
    for c in earlier.iter().chain(mine.iter()) {
        if !all.contains(c) {
            all.push(c.clone());
        }
    }
    all
}

/// An external plugin a run loaded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    pub path: String,
    pub sha256: String,
    pub methods: Vec<String>,
}

/// One grid cell: a model × method (with budget) × task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CellInfo {
    pub id: String,
    /// Model name as configured (e.g. "smollm2-135m").
    pub model: String,
    /// Registered method name (e.g. "kivi").
    pub method: String,
    /// Display label of the method preset (e.g. "kivi-2bit", "snapkv").
    pub method_label: String,
    /// The method's parameters as given (budget included), as a JSON object.
    pub method_params: serde_json::Value,
    /// The paper's N× budget when the method has one (ratio), else None (quantization, full).
    pub ratio: Option<f64>,
    /// Task name as `kvbench task` knows it (e.g. "passkey", "ruler/niah_single_1").
    pub task: String,
    /// Leaderboard column the task belongs to (e.g. "needle", "ruler", "real-text", a LongBench category).
    pub category: String,
    /// Samples in the cell.
    pub samples: usize,
    pub seed: u64,
    /// "chat" or "plain".
    pub template: String,
    /// sha256 of the plugin library providing the method (absent for built-in methods); the
    /// cell id hashes it too, so a rebuilt plugin starts new cells.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_sha256: Option<String>,
}

/// One sample's result. Scores are in [0, 100].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SampleRecord {
    pub cell: String,
    pub sample_id: String,
    /// Index of the sample in the cell (records are written in this order).
    pub index: usize,
    pub prediction: String,
    pub answers: Vec<String>,
    /// The headline score (the task's primary metric), 0–100.
    pub score: f64,
    /// Every metric of the task, 0–100, by name.
    pub scores: BTreeMap<String, f64>,
    pub input_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_seconds: f64,
    pub decode_tokens_per_s: f64,
    /// Bytes the cache holds at the end of the sample.
    pub kv_bytes_held: u64,
    /// Bytes attention reads, where different from held (retrieval methods); else equal to held.
    pub kv_bytes_attended: u64,
    /// Bytes a full cache of the same tokens would hold.
    pub kv_bytes_full: u64,
    /// kv_bytes_full / kv_bytes_held.
    pub compression_ratio: f64,
    /// Process peak RSS (CPU) or CUDA allocator peak (GPU), bytes.
    pub peak_memory_bytes: u64,
    /// Task facts (context length in tokens or words, needle depth, ...), from the sample.
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// Prompt compressors only: input tokens before compression (`input_tokens` is after).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_input_tokens: Option<usize>,
    /// Prompt compressors only: seconds spent compressing (included in `prefill_seconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_compression_seconds: Option<f64>,
    /// How the time and memory fields were measured: absent for a sample run alone
    /// (`kvbench run --isolated`, or a method that keeps its own prefill); `"shared"` when its
    /// prefill served several methods and it decoded batched with others, so `prefill_seconds`,
    /// `decode_tokens_per_s` and `peak_memory_bytes` are the group's, not the method's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timing: Option<String>,
}

/// The `timing` label of records whose time and memory fields a shared run measured.
pub const TIMING_SHARED: &str = "shared";

/// A cell's isolated measurements (`kvbench run --measure N`): records of its first N samples,
/// each run alone after the grid (not interleaved with other methods), in the records' format.
/// The leaderboard's time and memory columns come from them when every cell of a row has them.
pub const MEASURE_FILE: &str = "measure.jsonl";

/// The methods whose rows are the reference ("full cache") in every report.
pub const FULL_METHOD: &str = "full";

impl CellInfo {
    /// True for the uncompressed reference cache (method or label `full`).
    pub fn is_full(&self) -> bool {
        self.method == FULL_METHOD || self.method_label == FULL_METHOD
    }

    /// Quantization bits from the method parameters (`bits`, `k_bits` or `nbits`), if any.
    pub fn quant_bits(&self) -> Option<u32> {
        ["bits", "k_bits", "nbits"].iter().find_map(|k| self.method_params.get(k).and_then(|v| v.as_u64())).and_then(|b| u32::try_from(b).ok())
    }

    /// True for the needle-in-a-haystack cells the heatmaps show.
    pub fn is_needle(&self) -> bool {
        self.task.starts_with("passkey") || self.task.starts_with("kamradt") || self.category == "needle"
    }
}

impl SampleRecord {
    /// A numeric metadata value (JSON number, or a string holding one).
    pub fn meta_f64(&self, key: &str) -> Option<f64> {
        match self.metadata.get(key)? {
            serde_json::Value::Number(n) => n.as_f64(),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RunInfo;

    fn info(commit: &str, commits: &[&str]) -> RunInfo {
        let mut i: RunInfo = serde_json::from_value(serde_json::json!({
            "experiment": "e", "config_hash": "h", "kvbench_version": "0", "git_commit": commit, "libtorch_version": "2",
            "device": "cpu", "threads": 2, "shard": "0/1", "model_hashes": {}, "data_hashes": {}
        }))
        .unwrap();
        i.git_commits = commits.iter().map(|c| c.to_string()).collect();
        i
    }

    #[test]
    fn commits_of_a_run_resumed_across_sittings_are_kept_in_order() {
        // A run written before the list existed reads as its one commit.
        let old = info("aaa", &[]);
        assert_eq!(old.commits(), ["aaa"]);
        // Resumed by a new commit, then again by the same one, then by a third.
        let mut now = info("bbb", &[]);
        now.add_commits(&old.commits(), "bbb");
        assert_eq!(now.git_commits, ["aaa", "bbb"]);
        now.add_commits(&now.commits(), "bbb");
        assert_eq!(now.git_commits, ["aaa", "bbb"]);
        now.add_commits(&now.commits(), "ccc");
        assert_eq!(now.git_commits, ["aaa", "bbb", "ccc"]);
        // Written only when present, so older readers and fixtures see the same file.
        assert!(!serde_json::to_string(&old).unwrap().contains("git_commits"));
        assert!(serde_json::to_string(&now).unwrap().contains(r#""git_commits":["aaa","bbb","ccc"]"#));
    }

    #[test]
    fn decode_paths_of_a_resumed_run_are_listed_once_each() {
        let old = info("aaa", &[]);
        assert!(old.decode_matmul.is_empty() && !serde_json::to_string(&old).unwrap().contains("decode_matmul"));
        let mut first = info("aaa", &[]);
        first.note_decode_matmul("libtorch");
        first.note_decode_matmul("libtorch");
        assert_eq!(first.decode_matmul, ["libtorch"]);
        let mut second = info("bbb", &[]);
        second.note_decode_matmul("kernel");
        second.add_decode_matmul(&first.decode_matmul);
        assert_eq!(second.decode_matmul, ["libtorch", "kernel"]);
        second.note_decode_matmul("libtorch");
        assert_eq!(second.decode_matmul, ["libtorch", "kernel"]);
        assert!(serde_json::to_string(&second).unwrap().contains(r#""decode_matmul":["libtorch","kernel"]"#));
    }

    #[test]
    fn cpus_of_a_run_resumed_on_other_machines_are_listed_once_each() {
        let old = info("aaa", &[]);
        assert!(old.cpus.is_empty(), "a run.json without the key reads as no CPU recorded");
        assert!(!serde_json::to_string(&old).unwrap().contains("cpus"));
        let mut first = info("aaa", &[]);
        first.cpus = vec!["AMD EPYC (avx2)".into()];
        first.add_cpus(&old.cpus);
        assert_eq!(first.cpus, ["AMD EPYC (avx2)"]);
        let mut second = info("bbb", &[]);
        second.cpus = vec!["Intel Xeon (avx512f)".into()];
        second.add_cpus(&first.cpus);
        assert_eq!(second.cpus, ["AMD EPYC (avx2)", "Intel Xeon (avx512f)"]);
        // Back on the first machine: nothing new.
        let mut third = info("bbb", &[]);
        third.cpus = vec!["AMD EPYC (avx2)".into()];
        third.add_cpus(&second.cpus);
        assert_eq!(third.cpus, ["AMD EPYC (avx2)", "Intel Xeon (avx512f)"]);
        let json = serde_json::to_string(&third).unwrap();
        assert!(json.contains(r#""cpus":["AMD EPYC (avx2)","Intel Xeon (avx512f)"]"#), "{json}");
        assert_eq!(serde_json::from_str::<RunInfo>(&json).unwrap(), third);
    }
}
