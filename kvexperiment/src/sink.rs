//! The record sink: atomic writes of small files, and append-only JSONL records (fsync'd, so a
//! killed run loses at most the sample in flight), with a half-written last record cut off when a
//! run resumes.

use anyhow::{Context, Result};
use kvreport::record::SampleRecord;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically (kvreport's temp file, fsync, rename), creating the
/// directory first.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    kvreport::fsio::write_atomic(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Complete records already in `file`; a half-written last line (a crash mid-write) is cut off.
pub fn resume_records(file: &Path) -> Result<usize> {
    let Ok(bytes) = std::fs::read(file) else { return Ok(0) };
    let mut good = 0usize;
    let mut n = 0usize;
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        if !line.ends_with(b"\n") || serde_json::from_slice::<SampleRecord>(line).is_err() {
            break;
        }
        good += line.len();
        n += 1;
    }
    if good < bytes.len() {
        tracing::warn!("{}: dropping {} bytes of a half-written record", file.display(), bytes.len() - good);
        let f = std::fs::OpenOptions::new().write(true).open(file).with_context(|| format!("opening {}", file.display()))?;
        f.set_len(good as u64)?;
        f.sync_all()?;
    }
    Ok(n)
}

/// One cell's records file, opened for appending.
pub struct RecordSink {
    path: PathBuf,
    file: std::fs::File,
}

impl RecordSink {
    /// Opens (creating) `path` for appending.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("opening {}", path.display()))?;
        Ok(RecordSink { path: path.to_path_buf(), file })
    }

    /// Appends one record as a line and syncs it to disk.
    pub fn append(&mut self, rec: &SampleRecord) -> Result<()> {
        let mut line = serde_json::to_string(rec)?;
        line.push('\n');
        self.file.write_all(line.as_bytes()).with_context(|| format!("writing {}", self.path.display()))?;
        self.file.sync_data().with_context(|| format!("syncing {}", self.path.display()))?;
        Ok(())
    }
}
