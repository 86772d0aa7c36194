//! Replays the jsonl fuzz target's seeds and crash reproducers (`fuzz/corpus/jsonl`,
//! `fuzz/regressions/jsonl`) through the run-directory readers, so a fixed crash stays fixed
//! without cargo-fuzz; and checks that the from-bytes readers (the fuzzed entry points) give what
//! reading the files gives.

use kvreport::load::{load_run, parse_cell_info, parse_records, parse_run_info, Cell};
use kvreport::Leaderboard;
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn seed(name: &str) -> Vec<u8> {
    std::fs::read(fuzz_dir().join("corpus/jsonl").join(name)).unwrap()
}

/// What the jsonl fuzz target does with one input (for cell `id`).
fn exercise(bytes: &[u8], id: &str) {
    let dir = PathBuf::from("run/cells").join(id);
    let records = parse_records(bytes, &dir.join("records.jsonl"), id);
    let _ = parse_run_info(bytes, Path::new("run/run.json"));
    if let (Ok((records, _)), Ok(info)) = (records, parse_cell_info(bytes, &dir.join("cell.json"))) {
        let cell = Cell { info, records, measurements: Vec::new(), done: true, dir };
        let board = Leaderboard::build(std::slice::from_ref(&cell));
        let _ = (board.to_csv(), board.to_markdown("x"));
        let paired = kvreport::Paired::build(std::slice::from_ref(&cell), &board);
        let _ = (paired.to_csv(&board), paired.to_markdown(&board));
    }
}

#[test]
fn jsonl_seeds_and_reproducers_do_not_panic() {
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(dir).join("jsonl")) else { continue };
        for e in entries.flatten() {
            let bytes = std::fs::read(e.path()).unwrap();
            n += 1;
            for id in ["fuzzcell", "6fa780059012308f", ""] {
                let r = std::panic::catch_unwind(|| exercise(&bytes, id));
                assert!(r.is_ok(), "{} panicked", e.path().display());
            }
        }
    }
    assert!(n >= 10, "the jsonl corpus is missing ({n} files)");
}

#[test]
fn real_records_parse_and_damaged_ones_warn() {
    let mut records_seeds = 0;
    for e in std::fs::read_dir(fuzz_dir().join("corpus/jsonl")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_prefix("records-").and_then(|n| n.strip_suffix(".jsonl")) else { continue };
        if id.len() != 16 {
            continue;
        }
        let (records, warnings) = parse_records(&seed(&name), Path::new(&name), id).unwrap();
        assert_eq!((records.len(), warnings.len()), (2, 0), "{name}");
        let info = parse_cell_info(&seed(&format!("cell-{id}.json")), &Path::new(id).join("cell.json")).unwrap();
        assert_eq!(info.id, id);
        records_seeds += 1;
    }
    assert!(records_seeds >= 3);
    let truncated = seed("records-truncated.jsonl");
    let id = "09b62a4df8f6c75c";
    let (records, warnings) = parse_records(&truncated, Path::new("r.jsonl"), id).unwrap();
    assert_eq!(records.len(), 1);
    assert!(warnings[0].to_string().starts_with("r.jsonl:2: truncated final line"), "{}", warnings[0]);
    let (records, warnings) = parse_records(&seed("records-duplicate-crlf.jsonl"), Path::new("r.jsonl"), id).unwrap();
    assert_eq!(records.len(), 1);
    assert!(warnings[0].message.contains("recorded again"), "{}", warnings[0]);
    let e = parse_records(&truncated, Path::new("r.jsonl"), "other").unwrap_err().to_string();
    assert!(e.starts_with("r.jsonl:1: record belongs to cell \"09b62a4df8f6c75c\""), "{e}");
    parse_run_info(&seed("run.json"), Path::new("run.json")).unwrap();
    let e = parse_cell_info(&seed("cell-09b62a4df8f6c75c.json"), Path::new("x/cell.json")).unwrap_err().to_string();
    assert!(e.contains("does not match its directory name \"x\""), "{e}");
}

#[test]
fn from_bytes_readers_give_what_reading_the_files_gives() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path();
    let id = "09b62a4df8f6c75c";
    let cell = run.join("cells").join(id);
    std::fs::create_dir_all(&cell).unwrap();
    std::fs::write(run.join("run.json"), seed("run.json")).unwrap();
    std::fs::write(cell.join("cell.json"), seed(&format!("cell-{id}.json"))).unwrap();
    std::fs::write(cell.join("records.jsonl"), seed("records-truncated.jsonl")).unwrap();
    let (_, cells, warnings) = load_run(run).unwrap();
    let (records, w) = parse_records(&seed("records-truncated.jsonl"), &cell.join("records.jsonl"), id).unwrap();
    assert_eq!(cells[0].records, records);
    assert_eq!(warnings, w);
    // Invalid UTF-8 in cell.json: the same error either way.
    std::fs::write(cell.join("cell.json"), b"{\"id\": \"\xff\"}").unwrap();
    let from_file = load_run(run).unwrap_err().to_string();
    let from_bytes = parse_cell_info(b"{\"id\": \"\xff\"}", &cell.join("cell.json")).unwrap_err().to_string();
    assert_eq!(from_file, from_bytes);
    assert!(from_bytes.contains("stream did not contain valid UTF-8"), "{from_bytes}");
}
