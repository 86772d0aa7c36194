//! `kvbench score FILE.jsonl [-e] [--json]`: LongBench scoring with the official metric semantics
//! (per-dataset scores, the paper's six category averages and the 15-task average).

use crate::cli::ScoreArgs;
use anyhow::Result;
use kvtasks::longbench::score::score_predictions_file;

pub fn run(a: ScoreArgs) -> Result<()> {
    let report = score_predictions_file(&a.file, a.longbench_e)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}
