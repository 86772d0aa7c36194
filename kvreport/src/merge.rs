//! `kvbench merge`: combines the shard run directories of one experiment into a single run
//! directory (union of cells, one provenance record), so reports built from the merge are
//! byte-identical to reports built from an unsharded run. Output is deterministic and every file
//! is written atomically.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::fsio::write_atomic;
use crate::load::{load_run, read_record_lines, union_cell, Cell, LoadError, LoadWarning, LoadedRun};
use crate::record::RunInfo;

/// Why shards could not be merged.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("no shard directories to merge")]
    NoInput,
    #[error("{field} differs between shards: {a:?} in {} but {b:?} in {}", .a_dir.display(), .b_dir.display())]
    Mismatch { field: &'static str, a: String, b: String, a_dir: PathBuf, b_dir: PathBuf },
    #[error("{}: output directory is not empty (merge writes a new run directory)", .0.display())]
    OutputNotEmpty(PathBuf),
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot serialize run.json: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// What `merge` wrote.
#[derive(Clone, Debug)]
pub struct MergeSummary {
    pub out: PathBuf,
    pub run: RunInfo,
    pub cells: usize,
    pub records: usize,
    pub warnings: Vec<LoadWarning>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> MergeError + '_ {
    move |source| MergeError::Io { path: path.to_path_buf(), source }
}

/// Sort key of a shard: `i/N` numerically, anything else after, then the directory.
fn shard_key(run: &LoadedRun) -> (u64, u64, String, PathBuf) {
    let mut parts = run.info.shard.splitn(2, '/');
    let i: Option<u64> = parts.next().and_then(|s| s.trim().parse().ok());
    let n: Option<u64> = parts.next().and_then(|s| s.trim().parse().ok());
    match (i, n) {
        (Some(i), Some(n)) => (0, i * 1_000_000 + n.min(999_999), String::new(), run.dir.clone()),
        _ => (1, 0, run.info.shard.clone(), run.dir.clone()),
    }
}

/// One provenance string for all shards: the common value, or the distinct values in shard order
/// joined with " + " (e.g. shards run on different devices).
fn combine(runs: &[LoadedRun], get: impl Fn(&RunInfo) -> &str) -> String {
    let mut distinct: Vec<&str> = Vec::new();
    for r in runs {
        let v = get(&r.info);
        if !distinct.contains(&v) {
            distinct.push(v);
        }
    }
    distinct.join(" + ")
}

fn merge_maps(runs: &[LoadedRun], field: &'static str, get: impl Fn(&RunInfo) -> &BTreeMap<String, String>) -> Result<BTreeMap<String, String>, MergeError> {
    let mut out: BTreeMap<String, (String, PathBuf)> = BTreeMap::new();
    for r in runs {
        for (k, v) in get(&r.info) {
            match out.get(k) {
                Some((existing, dir)) if existing != v => {
                    return Err(MergeError::Mismatch { field, a: format!("{k}={existing}"), b: format!("{k}={v}"), a_dir: dir.clone(), b_dir: r.dir.clone() })
                }
                Some(_) => {}
                None => {
                    out.insert(k.clone(), (v.clone(), r.dir.clone()));
                }
            }
        }
    }
    Ok(out.into_iter().map(|(k, (v, _))| (k, v)).collect())
}

/// Every distinct string of `items`, sorted.
fn sorted_union(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut all: Vec<String> = items.collect();
    all.sort();
    all.dedup();
    all
}

/// The provenance of the merged run: experiment and config hash must agree across shards,
/// model and data hashes are united (a name with two hashes is an error), `shard` is
/// `merged:<N>`, the other fields are combined with [`combine`] (`threads`: the largest).
pub fn merged_run_info(runs: &[LoadedRun]) -> Result<RunInfo, MergeError> {
    let first = runs.first().ok_or(MergeError::NoInput)?;
    for r in &runs[1..] {
        for (field, a, b) in [("experiment", &first.info.experiment, &r.info.experiment), ("config_hash", &first.info.config_hash, &r.info.config_hash)] {
            if a != b {
                return Err(MergeError::Mismatch { field, a: a.clone(), b: b.clone(), a_dir: first.dir.clone(), b_dir: r.dir.clone() });
            }
        }
    }
    Ok(RunInfo {
        experiment: first.info.experiment.clone(),
        config_hash: first.info.config_hash.clone(),
        kvbench_version: combine(runs, |i| &i.kvbench_version),
        git_commit: combine(runs, |i| &i.git_commit),
        // Sorted, so that the order of the shards given does not change the merged file.
        git_commits: sorted_union(runs.iter().flat_map(|r| r.info.commits())),
        libtorch_version: combine(runs, |i| &i.libtorch_version),
        device: combine(runs, |i| &i.device),
        cpus: sorted_union(runs.iter().flat_map(|r| r.info.cpus.iter().cloned())),
        decode_matmul: sorted_union(runs.iter().flat_map(|r| r.info.decode_matmul.iter().cloned())),
        threads: runs.iter().map(|r| r.info.threads).max().unwrap_or(0),
        shard: format!("merged:{}", runs.len()),
        model_hashes: merge_maps(runs, "model_hashes", |i| &i.model_hashes)?,
        data_hashes: merge_maps(runs, "data_hashes", |i| &i.data_hashes)?,
        plugins: {
            let mut all: Vec<crate::record::PluginInfo> = runs.iter().flat_map(|r| r.info.plugins.iter().cloned()).collect();
            all.sort_by(|a, b| (&a.path, &a.sha256).cmp(&(&b.path, &b.sha256)));
            all.dedup();
            all
        },
    })
}

/// Merges shard run directories into the new run directory `out` (created; must be empty if it
/// exists): the union of their cells (cell.json and done copied verbatim, records.jsonl and measure.jsonl copied
/// line by line without a truncated final line) and a run.json whose `shard` is `merged:<N>`.
/// A cell present in several shards must be identical there. run.json is written last, so an
/// interrupted merge leaves no loadable run behind.
pub fn merge(inputs: &[PathBuf], out: &Path) -> Result<MergeSummary, MergeError> {
    if inputs.is_empty() {
        return Err(MergeError::NoInput);
    }
    let mut runs = Vec::new();
    let mut warnings = Vec::new();
    let mut loaded: Vec<(LoadedRun, Vec<Cell>)> = Vec::new();
    for dir in inputs {
        let (run, cells, w) = load_run(dir)?;
        warnings.extend(w);
        loaded.push((run, cells));
    }
    loaded.sort_by_key(|(run, _)| shard_key(run));
    let mut cells: BTreeMap<String, Cell> = BTreeMap::new();
    for (run, shard_cells) in loaded {
        for cell in shard_cells {
            union_cell(&mut cells, cell)?;
        }
        runs.push(run);
    }
    let info = merged_run_info(&runs)?;

    if out.exists() {
        let mut entries = fs::read_dir(out).map_err(io_err(out))?;
        if entries.next().is_some() {
            return Err(MergeError::OutputNotEmpty(out.to_path_buf()));
        }
    }
    let cells_out = out.join("cells");
    fs::create_dir_all(&cells_out).map_err(io_err(&cells_out))?;
    let mut records = 0;
    for cell in cells.values() {
        let dst = cells_out.join(&cell.info.id);
        fs::create_dir_all(&dst).map_err(io_err(&dst))?;
        let src_info = cell.dir.join("cell.json");
        let bytes = fs::read(&src_info).map_err(io_err(&src_info))?;
        let dst_info = dst.join("cell.json");
        write_atomic(&dst_info, &bytes).map_err(io_err(&dst_info))?;
        for file in ["records.jsonl", crate::record::MEASURE_FILE] {
            let src_records = cell.dir.join(file);
            if src_records.is_file() {
                let (lines, _) = read_record_lines(&src_records, &cell.info.id)?;
                let mut text = String::new();
                for l in &lines {
                    text.push_str(&l.text);
                    text.push('\n');
                }
                if file == "records.jsonl" {
                    records += lines.len();
                }
                let dst_records = dst.join(file);
                write_atomic(&dst_records, text.as_bytes()).map_err(io_err(&dst_records))?;
            }
        }
        if cell.done {
            let src_done = cell.dir.join("done");
            let bytes = fs::read(&src_done).map_err(io_err(&src_done))?;
            let dst_done = dst.join("done");
            write_atomic(&dst_done, &bytes).map_err(io_err(&dst_done))?;
        }
    }
    let mut json = serde_json::to_string_pretty(&info)?;
    json.push('\n');
    let run_json = out.join("run.json");
    write_atomic(&run_json, json.as_bytes()).map_err(io_err(&run_json))?;
    Ok(MergeSummary { out: out.to_path_buf(), run: info, cells: cells.len(), records, warnings })
}
