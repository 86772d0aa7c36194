//! The published offline-v1 leaderboard is what `kvbench report` makes of the committed records:
//! every file `write_reports` writes into `reports/offline-v1/` is regenerated from
//! `reports/offline-v1/runs/` and compared byte for byte (issue 21, "Publish it").

use std::fs;
use std::path::{Path, PathBuf};

/// The run directories the published report is built from, in the order the README's
/// `kvbench report` command names them. A run is listed once all its cells are finished and
/// its report is published.
const PUBLISHED_RUNS: &[&str] = &["runs/smollm2-135m", "runs/qwen2.5-0.5b"];

fn offline_v1() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../reports/offline-v1")
}

#[test]
fn published_offline_v1_report_is_reproduced_byte_for_byte_from_the_committed_records() {
    let root = offline_v1();
    let runs: Vec<PathBuf> = PUBLISHED_RUNS.iter().map(|r| root.join(r)).collect();
    for r in &runs {
        assert!(r.join("run.json").is_file(), "{} has no run.json", r.display());
    }
    let out = tempfile::tempdir().unwrap();
    let summary = kvreport::write_reports(&runs, out.path(), false).unwrap();
    // A published leaderboard is built from finished cells only.
    assert!(summary.warnings.is_empty(), "the committed records load with warnings: {:?}", summary.warnings);
    assert!(summary.files.len() >= 8, "{:?}", summary.files);
    let mut differ = Vec::new();
    for file in &summary.files {
        let name = file.file_name().unwrap();
        let published = root.join(name);
        let regenerated = fs::read(file).unwrap();
        match fs::read(&published) {
            Ok(bytes) if bytes == regenerated => {}
            Ok(_) => differ.push(format!("{} differs from a fresh report", published.display())),
            Err(e) => differ.push(format!("{}: {e}", published.display())),
        }
    }
    assert!(
        differ.is_empty(),
        "the published report is not what the committed records give (regenerate it with the README's `kvbench report` command):\n{}",
        differ.join("\n")
    );
}
