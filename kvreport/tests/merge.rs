//! Two shards + merge must give byte-identical reports to a single run.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use kvreport::load::load_runs;
use kvreport::record::RunInfo;
use kvreport::{merge, write_reports, MergeError};

const REPORTS: [&str; 7] = ["leaderboard.csv", "leaderboard.md", "paired.csv", "index.html", "examples.md", "examples.html", "paper_comparison.md"];

/// The fixture split in two shards (alternate cells), with one cell present in both.
fn write_shards(root: &Path) -> (PathBuf, PathBuf) {
    let cells = cells();
    let s0: Vec<_> = cells.iter().enumerate().filter(|(i, _)| i % 2 == 0 || *i == 1).map(|(_, c)| c.clone()).collect();
    let s1: Vec<_> = cells.iter().enumerate().filter(|(i, _)| i % 2 == 1).map(|(_, c)| c.clone()).collect();
    let (a, b) = (root.join("shard0"), root.join("shard1"));
    write_run(&a, &run_info("0/2"), &s0);
    write_run(&b, &run_info("1/2"), &s1);
    (a, b)
}

fn assert_same_reports(x: &Path, y: &Path) {
    for f in REPORTS {
        let (a, b) = (fs::read(x.join(f)).unwrap(), fs::read(y.join(f)).unwrap());
        assert!(a == b, "{f} differs between {} and {}", x.display(), y.display());
    }
}

#[test]
fn two_shards_and_merge_give_byte_identical_reports() {
    let dir = tempfile::tempdir().unwrap();
    let single = dir.path().join("single");
    write_fixture(&single);
    let (a, b) = write_shards(dir.path());
    let merged = dir.path().join("merged");
    // shard order on the command line must not matter
    let summary = merge(&[b.clone(), a.clone()], &merged).unwrap();
    assert_eq!(summary.cells, 14);
    assert_eq!(summary.records, cells().iter().map(|(_, r)| r.len()).sum::<usize>());

    let r_single = dir.path().join("r-single");
    let r_merged = dir.path().join("r-merged");
    let r_shards = dir.path().join("r-shards");
    write_reports(&[single], &r_single, true).unwrap();
    write_reports(std::slice::from_ref(&merged), &r_merged, true).unwrap();
    write_reports(&[a.clone(), b.clone()], &r_shards, true).unwrap();
    assert_same_reports(&r_single, &r_merged);
    assert_same_reports(&r_single, &r_shards);

    // the merged run.json
    let run: RunInfo = serde_json::from_str(&fs::read_to_string(merged.join("run.json")).unwrap()).unwrap();
    let expect = RunInfo { shard: "merged:2".into(), git_commits: vec!["deadbeefcafe0123456789".into()], ..run_info("x") };
    assert_eq!(run, expect);

    // merging again (other order, new dir) gives byte-identical files
    let merged2 = dir.path().join("merged2");
    merge(&[a, b], &merged2).unwrap();
    let files = |root: &Path| {
        let mut v: Vec<(String, Vec<u8>)> = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    v.push((p.strip_prefix(root).unwrap().to_string_lossy().into_owned(), fs::read(&p).unwrap()));
                }
            }
        }
        v.sort();
        v
    };
    assert_eq!(files(&merged), files(&merged2));
    // every cell has its done marker, and no temp file is left
    let listing = files(&merged);
    assert_eq!(listing.iter().filter(|(n, _)| n.ends_with("/done")).count(), 14);
    assert!(listing.iter().all(|(n, _)| !n.rsplit('/').next().unwrap().starts_with('.')));
}

#[test]
fn merge_drops_a_truncated_final_line() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = write_shards(dir.path());
    let cell = fs::read_dir(a.join("cells")).unwrap().next().unwrap().unwrap().path();
    let records = cell.join("records.jsonl");
    let mut text = fs::read_to_string(&records).unwrap();
    let before = text.lines().count();
    text.push_str("{\"cell\": \"x\", \"sample_i");
    fs::write(&records, &text).unwrap();
    let merged = dir.path().join("merged");
    let summary = merge(&[a, b], &merged).unwrap();
    assert_eq!(summary.warnings.len(), 1, "{:?}", summary.warnings);
    let out = merged.join("cells").join(cell.file_name().unwrap()).join("records.jsonl");
    let copied = fs::read_to_string(out).unwrap();
    assert_eq!(copied.lines().count(), before);
    assert!(copied.ends_with('\n'));
    // and the merge loads cleanly
    let loaded = load_runs(&[merged]).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn merge_refuses_different_experiments_and_config_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = write_shards(dir.path());
    let mut info: RunInfo = serde_json::from_str(&fs::read_to_string(b.join("run.json")).unwrap()).unwrap();
    info.config_hash = "different".into();
    fs::write(b.join("run.json"), serde_json::to_string(&info).unwrap()).unwrap();
    let err = merge(&[a.clone(), b.clone()], &dir.path().join("m1")).unwrap_err();
    assert!(matches!(err, MergeError::Mismatch { field: "config_hash", .. }), "{err}");
    assert!(err.to_string().contains("config_hash"));

    info.config_hash = run_info("x").config_hash;
    info.experiment = "other".into();
    fs::write(b.join("run.json"), serde_json::to_string(&info).unwrap()).unwrap();
    let err = merge(&[a, b], &dir.path().join("m2")).unwrap_err();
    assert!(err.to_string().contains("experiment"), "{err}");
    // nothing was written
    assert!(!dir.path().join("m2").exists());
}

#[test]
fn merge_refuses_a_non_empty_output_and_conflicting_cells() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = write_shards(dir.path());
    let err = merge(&[a.clone(), b.clone()], &a).unwrap_err();
    assert!(matches!(err, MergeError::OutputNotEmpty(_)), "{err}");

    // the cell present in both shards, with a different score in one
    let shared = &cells()[1].0.id;
    let path = b.join("cells").join(shared).join("records.jsonl");
    let text = fs::read_to_string(&path).unwrap().replacen("\"score\":40.0", "\"score\":41.0", 1);
    fs::write(&path, text).unwrap();
    let err = merge(&[a, b], &dir.path().join("m")).unwrap_err();
    assert!(err.to_string().contains(shared.as_str()), "{err}");
}
