//! Run records and reports, without libtorch: what `kvbench run` writes for every sample
//! ([`record`]), and what `kvbench report` / `kvbench merge` build from run directories
//! ([`load`], [`merge`], [`leaderboard`], [`paired`], [`html`], [`examples`], [`paper`]), and
//! what `kvbench export` rewrites in other tools' layouts ([`export`]).

pub mod bench;
pub mod examples;
pub mod export;
pub mod format;
pub mod fsio;
pub mod html;
pub mod leaderboard;
pub mod load;
pub mod merge;
pub mod paired;
pub mod paper;
pub mod record;
pub mod svg;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub use export::{export_kvpress, ExportError, ExportOptions, ExportSummary};
pub use leaderboard::{Leaderboard, LeaderboardRow};
pub use load::{load_runs, Cell, LoadError, LoadWarning, LoadedRuns};
pub use merge::{merge, MergeError, MergeSummary};
pub use paired::Paired;

/// Why reports could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing leaderboard.csv: {0}")]
    Csv(#[from] csv::Error),
    #[error(transparent)]
    Bench(#[from] bench::BenchError),
    #[error(transparent)]
    Export(#[from] export::ExportError),
}

/// What `write_reports` produced.
#[derive(Clone, Debug)]
pub struct ReportSummary {
    /// The Markdown leaderboard (the content of leaderboard.md), for the CLI to print.
    pub leaderboard_markdown: String,
    /// Every file written, in writing order.
    pub files: Vec<PathBuf>,
    /// Things worth telling the user (truncated lines skipped, incomplete cells, ...).
    pub warnings: Vec<LoadWarning>,
    pub cells: usize,
    pub records: usize,
}

/// The experiment name(s) of the runs, for titles.
fn experiment_name(loaded: &LoadedRuns) -> String {
    let mut names: Vec<&str> = loaded.runs.iter().map(|r| r.info.experiment.as_str()).collect();
    names.sort();
    names.dedup();
    names.join(" + ")
}

/// Reads the run directories (whole runs or shards) and writes into `out` (created if needed),
/// each file atomically: leaderboard.csv, leaderboard.md (with the paired differences from the
/// full cache after the leaderboard tables), paired.csv, tasks.csv, tasks.md, index.html,
/// examples.md, examples.html, and, when `compare_paper` is set, paper_comparison.md with one
/// `paper_radar_<model-slug>.svg` per model it compares (the paper's Figure 1). Identical
/// cells give byte-identical files, whether they come from one run, from shards, or from a merge.
pub fn write_reports(run_dirs: &[PathBuf], out: &Path, compare_paper: bool) -> Result<ReportSummary, ReportError> {
    write_reports_with_bench(run_dirs, out, compare_paper, &[])
}

/// [`write_reports`], with a speed-and-memory section drawn from `kvbench bench` files
/// (`bench.json` files or directories holding one) in `index.html`.
pub fn write_reports_with_bench(run_dirs: &[PathBuf], out: &Path, compare_paper: bool, bench_files: &[PathBuf]) -> Result<ReportSummary, ReportError> {
    let mut bench_data = bench::BenchData::default();
    for b in bench_files {
        bench_data.extend(bench::load_bench(b)?);
    }
    let loaded = load_runs(run_dirs)?;
    let infos = loaded.run_infos();
    let experiment = experiment_name(&loaded);
    let lb = Leaderboard::build(&loaded.cells);
    let paired = Paired::build(&loaded.cells, &lb);
    let markdown = lb.to_markdown(&experiment) + &paired.to_markdown(&lb);
    let csv = lb.to_csv()?;
    let paired_csv = paired.to_csv(&lb)?;
    let tasks_csv = lb.to_tasks_csv()?;
    let tasks_md = lb.to_tasks_markdown(&experiment);
    let index = html::index_html_paired(
        &infos,
        &loaded.cells,
        &lb,
        &paired,
        &(bench::bench_section(&bench_data.rows) + &bench::serving_section(&bench_data.batched, &bench_data.serving)),
    );
    let groups = examples::collect_examples(&loaded.cells, examples::SAMPLES_PER_TASK);
    let ex_md = examples::examples_markdown(&groups, &experiment);
    let ex_html = examples::examples_html(&groups, &infos, &lb);

    fs::create_dir_all(out).map_err(|source| ReportError::Io { path: out.to_path_buf(), source })?;
    // A writer killed mid-write leaves a temp file; this directory is ours, so clear them.
    fsio::remove_stale_temps(out).map_err(|source| ReportError::Io { path: out.to_path_buf(), source })?;
    let mut files = Vec::new();
    let mut write = |name: &str, text: &str| -> Result<(), ReportError> {
        let path = out.join(name);
        fsio::write_atomic(&path, text.as_bytes()).map_err(|source| ReportError::Io { path: path.clone(), source })?;
        files.push(path);
        Ok(())
    };
    write("leaderboard.csv", &csv)?;
    write("leaderboard.md", &markdown)?;
    write("paired.csv", &paired_csv)?;
    write("tasks.csv", &tasks_csv)?;
    write("tasks.md", &tasks_md)?;
    write("index.html", &index)?;
    write("examples.md", &ex_md)?;
    write("examples.html", &ex_html)?;
    if compare_paper {
        let report = paper::paper_report(&lb.rows);
        write("paper_comparison.md", &report.markdown)?;
        for radar in &report.radars {
            write(&radar.file_name, &radar.svg)?;
        }
    }
    Ok(ReportSummary {
        leaderboard_markdown: markdown,
        files,
        warnings: loaded.warnings.clone(),
        cells: loaded.cells.len(),
        records: loaded.cells.iter().map(|c| c.records.len()).sum(),
    })
}
