//! Fuzzes the run-directory readers of the reports: each input is read as a records.jsonl (for
//! the cell id its first line names), a cell.json and a run.json; records and cell info that
//! both parse are then built into a leaderboard, as `kvbench report` does. Each line is also read
//! as a LongBench predictions line (`kvbench score`'s input) and, when it parses, scored with its
//! subset's official metric.
#![no_main]

use kvreport::load::{parse_cell_info, parse_records, parse_run_info, Cell};
use kvreport::Leaderboard;
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;

/// The value of the first `"cell":"…"` in `data`, so seeds from real runs keep their records.
fn first_cell_id(data: &[u8]) -> String {
    let key = b"\"cell\":\"";
    let Some(start) = data.windows(key.len()).position(|w| w == key).map(|i| i + key.len()) else {
        return "fuzzcell".into();
    };
    let rest = data.get(start..).unwrap_or_default();
    let end = rest.iter().position(|&b| b == b'"').unwrap_or(rest.len()).min(64);
    String::from_utf8_lossy(rest.get(..end).unwrap_or_default()).into_owned()
}

fuzz_target!(|data: &[u8]| {
    for (i, line) in String::from_utf8_lossy(data).lines().enumerate() {
        if let Ok(p) = kvtasks::longbench::score::parse_prediction_line(line, i % 2 == 1) {
            if let Some(subset) = kvtasks::longbench::prompts::subset(&p.dataset) {
                let _ = kvtasks::longbench::score::score_sample(subset, &p.pred, &p.answers, p.all_classes.as_deref());
            }
        }
    }
    let id = first_cell_id(data);
    let dir = PathBuf::from("run/cells").join(&id);
    let records = parse_records(data, &dir.join("records.jsonl"), &id);
    if let Err(e) = &records {
        assert!(e.to_string().contains("records.jsonl"), "{e}");
    }
    let _ = parse_run_info(data, &PathBuf::from("run/run.json"));
    let info = parse_cell_info(data, &dir.join("cell.json"));
    if let Ok((records, _)) = records {
        let info = match info {
            Ok(info) => info,
            Err(_) => match parse_cell_info(SEED_CELL.replace("ID", &id).as_bytes(), &dir.join("cell.json")) {
                Ok(info) => info,
                Err(_) => return,
            },
        };
        let cell = Cell { info, records, measurements: Vec::new(), done: true, dir };
        let _ = (cell.mean_score(), cell.is_complete());
        let board = Leaderboard::build(std::slice::from_ref(&cell));
        let _ = board.to_csv();
        let _ = board.to_markdown("fuzz");
    }
});

/// A real cell.json (from a quickstart run), for records whose input has none.
const SEED_CELL: &str = r#"{"id":"ID","model":"smollm2-135m","method":"streamingllm","method_label":"streamingllm","method_params":{"ratio":4},"ratio":4.0,"task":"ruler-niah-1k","category":"ruler","samples":4,"seed":42,"template":"chat"}"#;
