//! Reading the official LongBench v1 JSONL files (`<dir>/<subset>.jsonl`, `<subset>_e.jsonl`
//! for LongBench-E) and fetching them from the Hugging Face hub (`THUDM/LongBench`, `data.zip`).
//! Reading never needs the network; a missing file says which command fetches it.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::prompts::subset;

/// The command that fetches the data (wired into the `kvbench` CLI).
pub const FETCH_COMMAND: &str = "kvbench data fetch longbench";
/// Env var overriding the hub address (a mirror, or `file:///path` for an offline copy).
pub const HF_ENDPOINT_ENV: &str = "KVBENCH_HF_ENDPOINT";
pub const DEFAULT_HF_ENDPOINT: &str = "https://huggingface.co";
/// Path of the archive under the endpoint.
pub const DATA_ZIP_PATH: &str = "datasets/THUDM/LongBench/resolve/main/data.zip";
/// Path (under the endpoint) of the hub's file listing of the data set, with each file's sha256.
pub const LISTING_PATH: &str = "api/datasets/THUDM/LongBench/revision/main";
/// Refuse archive entries larger than this (the largest official file is a few hundred MB).
const MAX_ENTRY_BYTES: u64 = 4 << 30;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("unknown LongBench subset {name:?}")]
    UnknownSubset { name: String },
    #[error("{name} has no LongBench-E version (LongBench-E has 13 subsets)")]
    NotInLongBenchE { name: String },
    #[error(
        "LongBench data file {path} not found; run `{FETCH_COMMAND}` to download it \
         (needs access to the Hugging Face hub, or {HF_ENDPOINT_ENV} pointing to a mirror)"
    )]
    Missing { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: not a LongBench record: {message}")]
    BadRecord { path: PathBuf, line: usize, message: String },
    #[error("download of {url} failed: {message}")]
    Download { url: String, message: String },
    #[error("{path}: not a usable LongBench archive: {message}")]
    Archive { path: PathBuf, message: String },
}

/// One row of an official LongBench v1 file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LongBenchRecord {
    pub input: String,
    pub context: String,
    pub answers: Vec<String>,
    /// words (English) or characters (Chinese) of the context, used by LongBench-E's buckets
    pub length: u64,
    pub dataset: String,
    pub language: String,
    pub all_classes: Option<Vec<String>>,
    #[serde(rename = "_id")]
    pub id: String,
}

/// `$KVBENCH_HOME/data/longbench` (default `~/.cache/kvbench/data/longbench`).
pub fn default_data_dir() -> PathBuf {
    kvformats::home::kvbench_home().join("data").join("longbench")
}

/// Where `<subset>[_e].jsonl` lives under `dir`, after checking the subset exists.
pub fn subset_path(dir: &Path, name: &str, longbench_e: bool) -> Result<PathBuf, DataError> {
    let s = subset(name).ok_or_else(|| DataError::UnknownSubset { name: name.to_string() })?;
    if longbench_e && !s.in_longbench_e {
        return Err(DataError::NotInLongBenchE { name: name.to_string() });
    }
    Ok(dir.join(if longbench_e { format!("{name}_e.jsonl") } else { format!("{name}.jsonl") }))
}

/// How many records a subset has: the non-empty lines of its file when it is fetched into `dir`
/// (what a run will read), else, for the 16 English datasets of the paper's LongBench v1 table,
/// the count LongBench's README publishes ([`published_record_count`]), else `None` (LongBench-E
/// without its files, or an unknown name).
pub fn record_count(dir: &Path, name: &str, longbench_e: bool) -> Option<usize> {
    let path = subset_path(dir, name, longbench_e).ok()?;
    match File::open(&path) {
        Ok(f) => Some(BufReader::new(f).lines().map_while(Result::ok).filter(|l| !l.trim().is_empty()).count()),
        Err(_) if !longbench_e => published_record_count(name),
        Err(_) => None,
    }
}

/// The number of records LongBench v1's README lists for each of the 16 English datasets the
/// paper uses (200 each, but multifieldqa_en 150 and lcc, repobench-p 500; paper-protocol.md §3).
pub fn published_record_count(name: &str) -> Option<usize> {
    match name {
        "multifieldqa_en" => Some(150),
        "lcc" | "repobench-p" => Some(500),
        "narrativeqa"
        | "qasper"
        | "hotpotqa"
        | "2wikimqa"
        | "musique"
        | "gov_report"
        | "qmsum"
        | "multi_news"
        | "trec"
        | "triviaqa"
        | "samsum"
        | "passage_retrieval_en"
        | "passage_count" => Some(200),
        _ => None,
    }
}

/// All records of one subset, in file order.
pub fn load_subset(dir: &Path, name: &str, longbench_e: bool) -> Result<Vec<LongBenchRecord>, DataError> {
    let path = subset_path(dir, name, longbench_e)?;
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(DataError::Missing { path }),
        Err(source) => return Err(DataError::Io { path, source }),
    };
    let mut records = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| DataError::Io { path: path.clone(), source })?;
        if line.trim().is_empty() {
            continue;
        }
        let record: LongBenchRecord =
            serde_json::from_str(&line).map_err(|e| DataError::BadRecord { path: path.clone(), line: i + 1, message: e.to_string() })?;
        records.push(record);
    }
    Ok(records)
}

/// What a fetch wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FetchSummary {
    pub url: String,
    pub dir: PathBuf,
    /// file names written, sorted
    pub files: Vec<String>,
}

/// The archive URL: `$KVBENCH_HF_ENDPOINT` (default the hub) + [`DATA_ZIP_PATH`].
pub fn data_zip_url() -> String {
    let endpoint = std::env::var(HF_ENDPOINT_ENV).unwrap_or_else(|_| DEFAULT_HF_ENDPOINT.to_string());
    format!("{}/{DATA_ZIP_PATH}", endpoint.trim_end_matches('/'))
}

/// Download `data.zip` from the hub (or `KVBENCH_HF_ENDPOINT`) and unpack its `*.jsonl` files
/// into `dir`.
pub fn fetch_longbench(dir: &Path) -> Result<FetchSummary, DataError> {
    fetch_longbench_from(&data_zip_url(), dir)
}

/// Download the archive at `url` (`http(s)://` or `file://`) and unpack its `*.jsonl` into `dir`.
pub fn fetch_longbench_from(url: &str, dir: &Path) -> Result<FetchSummary, DataError> {
    std::fs::create_dir_all(dir).map_err(|source| DataError::Io { path: dir.to_path_buf(), source })?;
    let zip_path = dir.join("data.zip");
    let part = dir.join("data.zip.part");
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataError::Io { path, source }
    };
    let download_err = |message: String| DataError::Download { url: url.to_string(), message };
    {
        let mut reader: Box<dyn Read> = if let Some(local) = url.strip_prefix("file://") {
            Box::new(File::open(local).map_err(|e| download_err(format!("{local}: {e}")))?)
        } else {
            let mut req = ureq::get(url);
            if let Ok(token) = std::env::var("HF_TOKEN") {
                req = req.set("Authorization", &format!("Bearer {token}"));
            }
            let resp = req.call().map_err(|e| download_err(e.to_string()))?;
            Box::new(resp.into_reader())
        };
        let mut out = File::create(&part).map_err(io_err(&part))?;
        std::io::copy(&mut reader, &mut out).map_err(|e| download_err(e.to_string()))?;
        out.flush().map_err(io_err(&part))?;
    }
    // A download from the hub (or a mirror) is checked against the sha256 the hub's file listing
    // gives for data.zip before it is used; a `file://` copy is the user's own file.
    if !url.starts_with("file://") {
        if let Err(e) = verify_against_listing(url, &part) {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
    }
    std::fs::rename(&part, &zip_path).map_err(io_err(&zip_path))?;
    let files = unpack_jsonl(&zip_path, dir)?;
    Ok(FetchSummary { url: url.to_string(), dir: dir.to_path_buf(), files })
}

/// Checks `file` (downloaded from `url`, which ends with [`DATA_ZIP_PATH`]) against the sha256 of
/// `data.zip` in the hub's listing at the same endpoint.
fn verify_against_listing(url: &str, file: &Path) -> Result<(), DataError> {
    let err = |message: String| DataError::Download { url: url.to_string(), message };
    let base = url
        .strip_suffix(DATA_ZIP_PATH)
        .ok_or_else(|| err(format!("cannot verify: the URL does not end with {DATA_ZIP_PATH}, so the hub's file listing is unknown")))?;
    let listing_url = format!("{base}{LISTING_PATH}?blobs=true");
    let mut req = ureq::get(&listing_url);
    if let Ok(token) = std::env::var("HF_TOKEN") {
        req = req.set("Authorization", &format!("Bearer {token}"));
    }
    let text = req
        .call()
        .map_err(|e| err(format!("cannot verify: the hub's file listing {listing_url}: {e}")))?
        .into_string()
        .map_err(|e| err(format!("cannot verify: reading {listing_url}: {e}")))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(format!("cannot verify: {listing_url} is not JSON: {e}")))?;
    let expected = v
        .get("siblings")
        .and_then(|s| s.as_array())
        .and_then(|s| s.iter().find(|f| f.get("rfilename").and_then(|n| n.as_str()) == Some("data.zip")))
        .and_then(|f| f.get("lfs")?.get("sha256")?.as_str())
        .map(str::to_ascii_lowercase)
        .ok_or_else(|| err(format!("cannot verify: {listing_url} gives no lfs.sha256 for data.zip")))?;
    let actual = kvformats::home::sha256_file(file).map_err(|source| DataError::Io { path: file.to_path_buf(), source })?;
    if actual != expected {
        return Err(err(format!("sha256 of the download is {actual}, the hub lists {expected}; the file was not used")));
    }
    Ok(())
}

/// Extract every `*.jsonl` entry of the archive (any folder inside it) into `dir` by file name.
pub fn unpack_jsonl(zip_path: &Path, dir: &Path) -> Result<Vec<String>, DataError> {
    let archive_err = |message: String| DataError::Archive { path: zip_path.to_path_buf(), message };
    let file = File::open(zip_path).map_err(|source| DataError::Io { path: zip_path.to_path_buf(), source })?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| archive_err(e.to_string()))?;
    let mut written = Vec::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| archive_err(e.to_string()))?;
        if entry.is_dir() {
            continue;
        }
        let Some(name) = entry.enclosed_name().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())) else {
            continue;
        };
        if !name.ends_with(".jsonl") || name.starts_with('.') {
            continue;
        }
        if entry.size() > MAX_ENTRY_BYTES {
            return Err(archive_err(format!("entry {name} is {} bytes", entry.size())));
        }
        let target = dir.join(&name);
        let tmp = dir.join(format!("{name}.part"));
        let mut out = File::create(&tmp).map_err(|source| DataError::Io { path: tmp.clone(), source })?;
        std::io::copy(&mut (&mut entry).take(MAX_ENTRY_BYTES), &mut out).map_err(|e| archive_err(format!("entry {name}: {e}")))?;
        std::fs::rename(&tmp, &target).map_err(|source| DataError::Io { path: target.clone(), source })?;
        written.push(name);
    }
    if written.is_empty() {
        return Err(archive_err("no .jsonl files inside".to_string()));
    }
    written.sort();
    Ok(written)
}
