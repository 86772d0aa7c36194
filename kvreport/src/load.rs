//! Reading run directories (see [`crate::record`]) into memory for the reports and `merge`:
//! every malformed input becomes an error naming its file (and line), never a panic; a record
//! line cut short by a crash mid-write is skipped with a warning; cells found in several run
//! directories are deduplicated when identical and refused when they differ.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::error::Category;

use crate::fsio::is_temp_name;
use crate::record::{CellInfo, RunInfo, SampleRecord};

/// Why run directories could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("no run directories given")]
    NoInput,
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: not a run directory (no run.json)", .0.display())]
    NotARunDir(PathBuf),
    #[error("{}: invalid JSON: {source}", .path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}:{line}: invalid record: {source}", .path.display())]
    Record {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}:{line}: invalid UTF-8", .path.display())]
    Utf8 { path: PathBuf, line: usize },
    #[error("{}:{line}: record belongs to cell {found:?}, not {expected:?}", .path.display())]
    WrongCell { path: PathBuf, line: usize, found: String, expected: String },
    #[error("{}: cell id {found:?} does not match its directory name {dir:?}", .path.display())]
    CellIdMismatch { path: PathBuf, found: String, dir: String },
    #[error("{}: records.jsonl without cell.json", .0.display())]
    MissingCellInfo(PathBuf),
    #[error(
        "{}:{line}: sample {sample_id:?} recorded twice with different results (first on line {first_line})",
        .path.display()
    )]
    DuplicateSample { path: PathBuf, line: usize, first_line: usize, sample_id: String },
    #[error("cell {id} differs between {} and {}", .first.display(), .second.display())]
    ConflictingCell { id: String, first: PathBuf, second: PathBuf },
}

/// Something worth telling the user that does not stop the reports.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadWarning {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for LoadWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.path.display(), l, self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

/// One grid cell with its records (sorted by `index`).
#[derive(Clone, Debug)]
pub struct Cell {
    pub info: CellInfo,
    pub records: Vec<SampleRecord>,
    /// Samples of the cell run alone for time and memory ([`crate::record::MEASURE_FILE`]).
    pub measurements: Vec<SampleRecord>,
    /// The `done` marker is present (in at least one of the run directories holding the cell).
    pub done: bool,
    /// The cell directory it was read from (the first one, when found in several runs).
    pub dir: PathBuf,
}

impl Cell {
    /// Mean headline score over the records; None without records.
    pub fn mean_score(&self) -> Option<f64> {
        if self.records.is_empty() {
            None
        } else {
            Some(self.records.iter().map(|r| r.score).sum::<f64>() / self.records.len() as f64)
        }
    }

    /// Every sample is recorded and the runner marked the cell done.
    pub fn is_complete(&self) -> bool {
        self.done && self.records.len() >= self.info.samples
    }
}

/// One run directory's provenance.
#[derive(Clone, Debug)]
pub struct LoadedRun {
    pub dir: PathBuf,
    pub info: RunInfo,
}

/// Everything read from one or more run directories.
#[derive(Clone, Debug)]
pub struct LoadedRuns {
    /// In the order given.
    pub runs: Vec<LoadedRun>,
    /// Deduplicated, sorted by cell id.
    pub cells: Vec<Cell>,
    pub warnings: Vec<LoadWarning>,
}

impl LoadedRuns {
    pub fn run_infos(&self) -> Vec<RunInfo> {
        self.runs.iter().map(|r| r.info.clone()).collect()
    }
}

/// One accepted line of a records.jsonl: its number, its text (without the newline) and the record.
#[derive(Clone, Debug)]
pub(crate) struct RecordLine {
    pub line: usize,
    pub text: String,
    pub record: SampleRecord,
}

/// Reads a records.jsonl: blank lines are ignored, a truncated final line (a crash mid-write:
/// no final newline, or JSON cut short) is skipped with a warning, any other bad line is an error.
/// A sample recorded twice identically is kept once (with a warning).
pub(crate) fn read_record_lines(path: &Path, cell_id: &str) -> Result<(Vec<RecordLine>, Vec<LoadWarning>), LoadError> {
    let bytes = fs::read(path).map_err(|source| LoadError::Io { path: path.to_path_buf(), source })?;
    parse_record_lines(&bytes, path, cell_id)
}

/// The records of a records.jsonl held in `bytes` (read from `path`, named in errors) for cell
/// `cell_id`, in file order, with the warnings; the same rules as reading the file.
pub fn parse_records(bytes: &[u8], path: &Path, cell_id: &str) -> Result<(Vec<SampleRecord>, Vec<LoadWarning>), LoadError> {
    let (lines, warnings) = parse_record_lines(bytes, path, cell_id)?;
    Ok((lines.into_iter().map(|l| l.record).collect(), warnings))
}

/// [`read_record_lines`] on bytes already read.
pub(crate) fn parse_record_lines(bytes: &[u8], path: &Path, cell_id: &str) -> Result<(Vec<RecordLine>, Vec<LoadWarning>), LoadError> {
    let ends_with_newline = bytes.last() == Some(&b'\n');
    let mut segments: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    if ends_with_newline || bytes.is_empty() {
        segments.pop();
    }
    let last = segments.len().saturating_sub(1);
    let mut out: Vec<RecordLine> = Vec::new();
    let mut warnings = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, seg) in segments.iter().enumerate() {
        let line = i + 1;
        let seg = seg.strip_suffix(b"\r").unwrap_or(seg);
        let is_last = i == last;
        let truncated_warning =
            || LoadWarning { path: path.to_path_buf(), line: Some(line), message: "truncated final line skipped (the run was interrupted mid-write)".into() };
        let text = match std::str::from_utf8(seg) {
            Ok(t) => t,
            Err(_) if is_last && !ends_with_newline => {
                warnings.push(truncated_warning());
                continue;
            }
            Err(_) => return Err(LoadError::Utf8 { path: path.to_path_buf(), line }),
        };
        if text.trim().is_empty() {
            continue;
        }
        let record: SampleRecord = match serde_json::from_str(text) {
            Ok(r) => r,
            Err(e) if is_last && (!ends_with_newline || e.classify() == Category::Eof) => {
                warnings.push(truncated_warning());
                continue;
            }
            Err(source) => return Err(LoadError::Record { path: path.to_path_buf(), line, source }),
        };
        if record.cell != cell_id {
            return Err(LoadError::WrongCell { path: path.to_path_buf(), line, found: record.cell, expected: cell_id.to_string() });
        }
        if let Some(&first) = seen.get(&record.sample_id) {
            let earlier = out.iter().find(|r| r.line == first).map(|r| &r.record);
            if earlier == Some(&record) {
                warnings.push(LoadWarning {
                    path: path.to_path_buf(),
                    line: Some(line),
                    message: format!("sample {:?} recorded again (identical to line {first}); kept once", record.sample_id),
                });
                continue;
            }
            return Err(LoadError::DuplicateSample { path: path.to_path_buf(), line, first_line: first, sample_id: record.sample_id });
        }
        seen.insert(record.sample_id.clone(), line);
        out.push(RecordLine { line, text: text.to_string(), record });
    }
    Ok((out, warnings))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, LoadError> {
    let bytes = fs::read(path).map_err(|source| LoadError::Io { path: path.to_path_buf(), source })?;
    parse_json(&bytes, path)
}

/// A JSON file's bytes (read from `path`) as `T`; invalid UTF-8 is reported as reading the file
/// as text would.
fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], path: &Path) -> Result<T, LoadError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| LoadError::Io { path: path.to_path_buf(), source: io::Error::new(io::ErrorKind::InvalidData, "stream did not contain valid UTF-8") })?;
    serde_json::from_str(text).map_err(|source| LoadError::Json { path: path.to_path_buf(), source })
}

/// A `run.json` held in `bytes` (read from `path`).
pub fn parse_run_info(bytes: &[u8], path: &Path) -> Result<RunInfo, LoadError> {
    parse_json(bytes, path)
}

/// A `cell.json` held in `bytes` (read from `path`, whose directory name must be the cell id).
pub fn parse_cell_info(bytes: &[u8], path: &Path) -> Result<CellInfo, LoadError> {
    let info: CellInfo = parse_json(bytes, path)?;
    let dir_name = path.parent().and_then(Path::file_name).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if info.id != dir_name {
        return Err(LoadError::CellIdMismatch { path: path.to_path_buf(), found: info.id, dir: dir_name });
    }
    Ok(info)
}

/// Reads `run.json` of a run directory.
pub fn read_run_info(dir: &Path) -> Result<RunInfo, LoadError> {
    let path = dir.join("run.json");
    if !path.is_file() {
        return Err(LoadError::NotARunDir(dir.to_path_buf()));
    }
    read_json(&path)
}

/// The records of a records file (none if it does not exist), sorted by sample index.
fn read_sorted_records(path: &Path, cell_id: &str, warnings: &mut Vec<LoadWarning>) -> Result<Vec<SampleRecord>, LoadError> {
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let (lines, w) = read_record_lines(path, cell_id)?;
    warnings.extend(w);
    let mut records: Vec<SampleRecord> = lines.into_iter().map(|l| l.record).collect();
    records.sort_by_key(|r| r.index);
    Ok(records)
}

/// Reads one cell directory; None for an empty directory (a cell the runner had not started).
fn read_cell(dir: &Path, warnings: &mut Vec<LoadWarning>) -> Result<Option<Cell>, LoadError> {
    let info_path = dir.join("cell.json");
    let records_path = dir.join("records.jsonl");
    if !info_path.is_file() {
        if records_path.exists() {
            return Err(LoadError::MissingCellInfo(dir.to_path_buf()));
        }
        warnings.push(LoadWarning { path: dir.to_path_buf(), line: None, message: "cell directory without cell.json skipped".into() });
        return Ok(None);
    }
    let info_bytes = fs::read(&info_path).map_err(|source| LoadError::Io { path: info_path.clone(), source })?;
    let info = parse_cell_info(&info_bytes, &info_path)?;
    let records = read_sorted_records(&records_path, &info.id, warnings)?;
    let measurements = read_sorted_records(&dir.join(crate::record::MEASURE_FILE), &info.id, warnings)?;
    let done = dir.join("done").exists();
    Ok(Some(Cell { info, records, measurements, done, dir: dir.to_path_buf() }))
}

/// Reads one run directory (its cells sorted by id).
pub fn load_run(dir: &Path) -> Result<(LoadedRun, Vec<Cell>, Vec<LoadWarning>), LoadError> {
    let info = read_run_info(dir)?;
    let mut warnings = Vec::new();
    let cells_dir = dir.join("cells");
    let mut cells = Vec::new();
    if cells_dir.is_dir() {
        let mut names = Vec::new();
        let entries = fs::read_dir(&cells_dir).map_err(|source| LoadError::Io { path: cells_dir.clone(), source })?;
        for entry in entries {
            let entry = entry.map_err(|source| LoadError::Io { path: cells_dir.clone(), source })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_temp_name(&name) || !entry.path().is_dir() {
                continue;
            }
            names.push(name);
        }
        names.sort();
        for name in names {
            if let Some(cell) = read_cell(&cells_dir.join(&name), &mut warnings)? {
                cells.push(cell);
            }
        }
    } else {
        warnings.push(LoadWarning { path: cells_dir, line: None, message: "no cells directory: the run has no results".into() });
    }
    Ok((LoadedRun { dir: dir.to_path_buf(), info }, cells, warnings))
}

/// Reads run directories (whole runs or shards of one) into one set of cells, deduplicated by
/// id: a cell present in several directories must have identical info and records.
pub fn load_runs(dirs: &[PathBuf]) -> Result<LoadedRuns, LoadError> {
    if dirs.is_empty() {
        return Err(LoadError::NoInput);
    }
    let mut runs = Vec::new();
    let mut warnings = Vec::new();
    let mut by_id: BTreeMap<String, Cell> = BTreeMap::new();
    for dir in dirs {
        let (run, cells, w) = load_run(dir)?;
        runs.push(run);
        warnings.extend(w);
        for cell in cells {
            union_cell(&mut by_id, cell)?;
        }
    }
    let cells: Vec<Cell> = by_id.into_values().collect();
    for cell in &cells {
        if !cell.is_complete() {
            warnings.push(LoadWarning {
                path: cell.dir.clone(),
                line: None,
                message: format!(
                    "incomplete cell ({} {} {} {}): {} of {} samples recorded{}",
                    cell.info.model,
                    cell.info.method_label,
                    crate::format::budget_label(cell.info.ratio),
                    cell.info.task,
                    cell.records.len(),
                    cell.info.samples,
                    if cell.done { "" } else { ", no done marker" }
                ),
            });
        }
    }
    Ok(LoadedRuns { runs, cells, warnings })
}

/// Adds `cell` to `cells` by id. A cell seen before must be identical (info and records); of two
/// identical copies the one carrying the `done` marker is kept.
pub fn union_cell(cells: &mut BTreeMap<String, Cell>, cell: Cell) -> Result<(), LoadError> {
    match cells.get_mut(&cell.info.id) {
        None => {
            cells.insert(cell.info.id.clone(), cell);
        }
        Some(existing) => {
            if existing.info != cell.info || existing.records != cell.records {
                return Err(LoadError::ConflictingCell { id: cell.info.id, first: existing.dir.clone(), second: cell.dir });
            }
            if !existing.done && cell.done {
                *existing = cell;
            }
        }
    }
    Ok(())
}
