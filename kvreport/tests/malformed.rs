//! Malformed run directories give errors naming the file and line; they never panic.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use kvreport::load::{load_runs, LoadError};
use kvreport::write_reports;

fn first_cell(run: &Path) -> PathBuf {
    let mut cells: Vec<PathBuf> = fs::read_dir(run.join("cells")).unwrap().map(|e| e.unwrap().path()).collect();
    cells.sort();
    cells.remove(0)
}

#[test]
fn a_bad_json_line_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    write_fixture(dir.path());
    let records = first_cell(dir.path()).join("records.jsonl");
    let text = fs::read_to_string(&records).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[1] = "{\"cell\": oops}";
    fs::write(&records, lines.join("\n") + "\n").unwrap();
    let err = load_runs(&[dir.path().to_path_buf()]).unwrap_err();
    assert!(matches!(err, LoadError::Record { line: 2, .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&format!("{}:2:", records.display())), "{msg}");
    // write_reports reports the same error instead of writing anything
    let out = dir.path().join("out");
    let err = write_reports(&[dir.path().to_path_buf()], &out, false).unwrap_err();
    assert!(err.to_string().contains("records.jsonl:2"), "{err}");
    assert!(!out.exists());
}

#[test]
fn a_bad_final_line_that_is_not_truncated_is_an_error() {
    // complete (newline-terminated) but wrong-shaped: not a crash mid-write
    let dir = tempfile::tempdir().unwrap();
    write_fixture(dir.path());
    let records = first_cell(dir.path()).join("records.jsonl");
    let mut text = fs::read_to_string(&records).unwrap();
    let n = text.lines().count();
    text.push_str("{\"cell\": 3}\n");
    fs::write(&records, text).unwrap();
    let err = load_runs(&[dir.path().to_path_buf()]).unwrap_err().to_string();
    assert!(err.contains(&format!("records.jsonl:{}:", n + 1)), "{err}");
}

#[test]
fn a_truncated_final_line_is_skipped_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    write_fixture(dir.path());
    let records = first_cell(dir.path()).join("records.jsonl");
    let text = fs::read_to_string(&records).unwrap();
    let n = text.lines().count();
    // the last record cut in the middle (a crash mid-write), even mid-way through a UTF-8 char
    let last_start = text[..text.len() - 1].rfind('\n').unwrap() + 1;
    let mut cut = text.as_bytes()[..last_start + 40].to_vec();
    cut.extend_from_slice(&"é".as_bytes()[..1]);
    fs::write(&records, &cut).unwrap();
    let loaded = load_runs(&[dir.path().to_path_buf()]).unwrap();
    let cell = loaded.cells.iter().find(|c| c.dir == first_cell(dir.path())).unwrap();
    assert_eq!(cell.records.len(), n - 1);
    let w: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
    assert!(w.iter().any(|w| w.contains(&format!("records.jsonl:{n}: truncated final line"))), "{w:?}");
    // and the cell is reported as incomplete
    assert!(w.iter().any(|w| w.contains("incomplete cell")), "{w:?}");

    // plain JSON cut short (no UTF-8 issue) is skipped too
    fs::write(&records, &text.as_bytes()[..text.len() - 10]).unwrap();
    let loaded = load_runs(&[dir.path().to_path_buf()]).unwrap();
    assert_eq!(loaded.cells.iter().find(|c| c.dir == first_cell(dir.path())).unwrap().records.len(), n - 1);
}

#[test]
fn conflicting_duplicate_cells_are_refused_identical_ones_deduplicated() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    write_fixture(&a);
    write_fixture(&b);
    let loaded = load_runs(&[a.clone(), b.clone()]).unwrap();
    assert_eq!(loaded.cells.len(), 14);
    assert_eq!(loaded.runs.len(), 2);

    let cell = first_cell(&b);
    let id = cell.file_name().unwrap().to_string_lossy().into_owned();
    let records = cell.join("records.jsonl");
    let text = fs::read_to_string(&records).unwrap().replacen("\"score\":", "\"score\":1", 1);
    fs::write(&records, text).unwrap();
    let err = load_runs(&[a, b]).unwrap_err();
    assert!(matches!(&err, LoadError::ConflictingCell { id: i, .. } if *i == id), "{err:?}");
    assert!(err.to_string().contains(&id));
}

#[test]
fn other_malformed_inputs_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    // not a run directory
    let err = load_runs(&[dir.path().join("missing")]).unwrap_err();
    assert!(matches!(err, LoadError::NotARunDir(_)));
    assert!(matches!(load_runs(&[]).unwrap_err(), LoadError::NoInput));

    write_fixture(dir.path());
    let cell = first_cell(dir.path());
    // a record of another cell
    let records = cell.join("records.jsonl");
    let good = fs::read_to_string(&records).unwrap();
    fs::write(&records, good.replacen("\"cell\":\"", "\"cell\":\"other", 1)).unwrap();
    let err = load_runs(&[dir.path().to_path_buf()]).unwrap_err();
    assert!(matches!(err, LoadError::WrongCell { line: 1, .. }), "{err:?}");
    fs::write(&records, &good).unwrap();

    // the same sample twice with different results
    let first = good.lines().next().unwrap();
    fs::write(&records, format!("{good}{}\n", first.replacen("\"score\":", "\"score\":1", 1))).unwrap();
    let err = load_runs(&[dir.path().to_path_buf()]).unwrap_err();
    assert!(matches!(err, LoadError::DuplicateSample { first_line: 1, .. }), "{err:?}");
    // ... and identically: kept once, with a warning
    fs::write(&records, format!("{good}{first}\n")).unwrap();
    let loaded = load_runs(&[dir.path().to_path_buf()]).unwrap();
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    fs::write(&records, &good).unwrap();

    // invalid cell.json
    let info = cell.join("cell.json");
    let good_info = fs::read_to_string(&info).unwrap();
    fs::write(&info, "{\"id\": ").unwrap();
    let err = load_runs(&[dir.path().to_path_buf()]).unwrap_err();
    assert!(matches!(err, LoadError::Json { .. }), "{err:?}");
    assert!(err.to_string().contains("cell.json"));
    // a cell.json whose id is not its directory
    fs::write(&info, good_info.replacen("\"id\": \"", "\"id\": \"x", 1)).unwrap();
    let err = load_runs(&[dir.path().to_path_buf()]).unwrap_err();
    assert!(matches!(err, LoadError::CellIdMismatch { .. }), "{err:?}");
    // records without cell.json
    fs::remove_file(&info).unwrap();
    let err = load_runs(&[dir.path().to_path_buf()]).unwrap_err();
    assert!(matches!(err, LoadError::MissingCellInfo(_)), "{err:?}");

    // invalid run.json
    fs::write(&info, &good_info).unwrap();
    fs::write(dir.path().join("run.json"), "[]").unwrap();
    let err = load_runs(&[dir.path().to_path_buf()]).unwrap_err();
    assert!(err.to_string().contains("run.json"), "{err}");
}
