//! Provenance: what a run records about where its numbers come from (run.json): the kvbench
//! commit, libtorch, the model and data hashes, and every plugin loaded.

use kvcore::registry::Registry;
use kvreport::record::{PluginInfo, RunInfo};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `git rev-parse HEAD` of the checkout the binary sits in (`+dirty` with uncommitted changes
/// to tracked files), read when the run starts, or "unknown". This is the commit the binary was
/// built from only while the checkout has not moved on since the build: a binary copied aside
/// (to keep a long run on fixed code) records the checkout's later commits.
pub fn git_commit() -> String {
    let exe = std::env::current_exe().ok();
    let root = exe.as_ref().and_then(|e| e.ancestors().find(|a| a.join(".git").exists()).map(Path::to_path_buf));
    let Some(root) = root else { return "unknown".into() };
    let head = std::process::Command::new("git")
        .arg("-C")
        .arg(&root)
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let Some(head) = head else { return "unknown".into() };
    // Uncommitted changes to tracked files make the commit alone an incomplete description.
    let dirty = std::process::Command::new("git").arg("-C").arg(&root).args(["diff", "--quiet", "HEAD", "--"]).status().is_ok_and(|s| s.code() == Some(1));
    if dirty {
        format!("{head}+dirty")
    } else {
        head
    }
}

/// This machine's CPU as run.json records it: the model name (`/proc/cpuinfo` on Linux) and the
/// widest vector instruction set libtorch's kernels can use here (`avx512f`, `avx2`, or none
/// named), e.g. `Intel(R) Xeon(R) Processor (avx512f)`.
pub fn cpu_description() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|t| {
        t.lines()
            .find(|l| l.starts_with("model name") || l.starts_with("Model") || l.starts_with("CPU part"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    });
    let model = model.unwrap_or_else(|| format!("{} CPU", std::env::consts::ARCH));
    match widest_vector_isa() {
        Some(isa) => format!("{model} ({isa})"),
        None => model,
    }
}

/// `avx512f` or `avx2` when the CPU has it (x86-64), else `None`.
fn widest_vector_isa() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Some("avx512f");
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return Some("avx2");
        }
    }
    None
}

/// sha256 of a file, or of a directory's sorted (name, file hash) list.
pub fn sha256_path(p: &Path) -> String {
    if p.is_file() {
        return kvformats::home::sha256_file(p).unwrap_or_else(|_| "unreadable".into());
    }
    // A directory: hash of the sorted (name, file hash) list of its files.
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(p).map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect()).unwrap_or_default();
    entries.sort();
    let mut h = <sha2::Sha256 as sha2::Digest>::new();
    for e in entries {
        let line = format!(
            "{} {}\n",
            e.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            kvformats::home::sha256_file(&e).unwrap_or_default()
        );
        sha2::Digest::update(&mut h, line.as_bytes());
    }
    hex::encode(sha2::Digest::finalize(h))
}

/// The run's provenance before any model is loaded (device, threads and model hashes are filled
/// in as models load).
pub fn run_info(exp: &kvconfig::Experiment, reg: &Registry, shard: Option<&str>) -> RunInfo {
    let mut info = RunInfo {
        experiment: exp.name.clone(),
        config_hash: exp.hash(),
        kvbench_version: env!("CARGO_PKG_VERSION").to_string(),
        git_commit: git_commit(),
        git_commits: Vec::new(),
        libtorch_version: kvcore::plugin_ffi::Handshake::host().libtorch_version,
        device: String::new(),
        cpus: vec![cpu_description()],
        decode_matmul: Vec::new(),
        threads: 0,
        shard: shard.unwrap_or("0/1").to_string(),
        model_hashes: BTreeMap::new(),
        data_hashes: BTreeMap::new(),
        plugins: reg.plugins().into_iter().map(|(path, sha256, methods)| PluginInfo { path, sha256, methods }).collect(),
    };
    let commit = info.git_commit.clone();
    info.add_commits(&[], &commit);
    for d in kvtasks::data::known_datasets() {
        if kvtasks::data::data_dir(d.name).is_ok() {
            // The pinned sha256 of each package the data set is built from (verified at fetch).
            let pins: Vec<String> = d.artifacts.iter().map(|a| format!("{}=={}:{}", a.package, a.version, a.sha256)).collect();
            info.data_hashes.insert(d.name.to_string(), pins.join(" "));
        }
    }
    info
}
