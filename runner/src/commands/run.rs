//! `kvbench validate | run | merge | report`: experiments from TOML configs, a thin front end over
//! the experiment engine (`kvexperiment`): `run` plans the grid into cells (model × method ×
//! budget × task, each with a stable id) and runs them with resumable, fsync'd records; `merge`
//! and `report` are `kvreport`'s.

use crate::cli::{ExportArgs, MergeArgs, ReportArgs, RunArgs, ValidateArgs};
use anyhow::{Context, Result};
use kvexperiment::engine::{run_cells, RunOptions};
use kvexperiment::plan::{dry_run, load_checked, select_shard};
use std::path::PathBuf;

pub fn validate(a: ValidateArgs, plugins: &[PathBuf]) -> Result<()> {
    let (exp, _reg, cells) = load_checked(&a.config, plugins, a.allow_plugins)?;
    println!(
        "{}: ok: experiment `{}`, {} model(s), {} method preset(s), {} task(s), {} cell(s)",
        a.config.display(),
        exp.name,
        exp.models.len(),
        exp.methods.len(),
        exp.tasks.len(),
        cells.len()
    );
    Ok(())
}

pub fn run(a: RunArgs, plugins: &[PathBuf]) -> Result<()> {
    let (exp, reg, cells) = load_checked(&a.experiment, plugins, a.allow_plugins)?;
    let shard = a.shard.map(|s| s.to_string());
    let cells = select_shard(cells, shard.as_deref())?;
    if a.dry_run {
        println!("{}", dry_run(&exp, &reg, &cells, shard.as_deref()));
        return Ok(());
    }
    // Without --out: runs/<name>, or the next free runs/<name>-N when that holds a finished
    // run and --resume is not given (so the README command can be run twice).
    let out = match &a.out {
        Some(o) => o.clone(),
        None => {
            let base = PathBuf::from("runs").join(&exp.name);
            if a.resume || !base.join("run.json").exists() {
                base
            } else {
                (2..).map(|n| PathBuf::from("runs").join(format!("{}-{n}", exp.name))).find(|p| !p.join("run.json").exists()).unwrap_or(base)
            }
        }
    };
    let opts = RunOptions {
        resume: a.resume,
        shard,
        device: a.device.map(|d| d.to_string()),
        threads: a.threads,
        guard: kvexperiment::runtime::Guard { force: a.guard.force, memory_limit: a.guard.memory_limit.clone() },
        zero_measurements: a.zero_measurements,
        no_report: a.no_report,
        isolated: a.isolated,
        max_batch: a.batch.map(|b| b as usize),
        measure: a.measure,
    };
    let summary = run_cells(&exp, &reg, cells, &out, &opts)?;
    if let Some((dir, leaderboard)) = summary.report {
        println!("{leaderboard}");
        println!("HTML report: {}", dir.join("index.html").display());
    }
    Ok(())
}

pub fn merge(a: MergeArgs) -> Result<()> {
    kvreport::merge::merge(&a.dirs, &a.out)?;
    println!("merged {} run director{} into {}", a.dirs.len(), if a.dirs.len() == 1 { "y" } else { "ies" }, a.out.display());
    Ok(())
}

/// `kvbench export`: a run's cells in another tool's layout.
pub fn export(a: ExportArgs) -> Result<()> {
    let mut opts = kvreport::ExportOptions { query_aware: a.query_aware.then_some(true), ..Default::default() };
    for m in &a.model_ids {
        let (name, id) = m
            .split_once('=')
            .filter(|(n, i)| !n.is_empty() && !i.is_empty())
            .ok_or_else(|| anyhow::anyhow!("--model-id {m:?}: expected NAME=ORG/ID, e.g. qwen2.5-0.5b=Qwen/Qwen2.5-0.5B-Instruct"))?;
        opts.model_ids.insert(name.to_string(), id.to_string());
    }
    let summary = match a.format {
        crate::cli::ExportFormat::Kvpress => kvreport::export::export_kvpress_with(&a.run, &a.out, &opts)?,
    };
    for w in &summary.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "exported {} cell(s), {} record(s) into {} kvpress result directories under {}",
        summary.cells,
        summary.records,
        summary.dirs.len(),
        a.out.display()
    );
    Ok(())
}

pub fn report(a: ReportArgs) -> Result<()> {
    let compare = a.compare == Some(crate::cli::CompareWith::Paper);
    let out = a.out.clone().unwrap_or_else(|| a.dirs[0].join("report"));
    let summary = kvreport::write_reports_with_bench(&a.dirs, &out, compare, &a.bench)?;
    for w in &summary.warnings {
        eprintln!("warning: {w}");
    }
    println!("{}", summary.leaderboard_markdown);
    if compare {
        let p = out.join("paper_comparison.md");
        println!("{}", std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?);
    }
    println!("HTML report: {}", out.join("index.html").display());
    Ok(())
}
