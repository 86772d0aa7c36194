//! Loading official-format LongBench files and fetching `data.zip`, tested offline: a zip built
//! from the fixtures is served by a one-shot HTTP server on 127.0.0.1 and read from `file://`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use kvtasks::longbench::dataset::{data_zip_url, published_record_count, record_count, subset_path, DATA_ZIP_PATH, HF_ENDPOINT_ENV, LISTING_PATH};
use kvtasks::longbench::{fetch_longbench, fetch_longbench_from, load_subset, DataError};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/longbench/data")
}

/// The fixtures zipped the way the hub's archive is laid out (`data/<subset>.jsonl`).
fn fixture_zip() -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        zip.add_directory("data/", opts).expect("dir");
        let mut names: Vec<_> = std::fs::read_dir(fixture_dir()).expect("fixtures").flatten().map(|e| e.path()).collect();
        names.sort();
        for p in names {
            let name = p.file_name().and_then(|n| n.to_str()).expect("name").to_string();
            zip.start_file(format!("data/{name}"), opts).expect("entry");
            zip.write_all(&std::fs::read(&p).expect("read")).expect("write");
        }
        zip.start_file("data/README.txt", opts).expect("entry");
        zip.write_all(b"not data").expect("write");
        zip.finish().expect("finish");
    }
    buf.into_inner()
}

/// The hub's file listing for a data.zip with `sha256`.
fn listing(sha256: &str) -> Vec<u8> {
    serde_json::json!({"id": "THUDM/LongBench", "siblings": [{"rfilename": "data.zip", "lfs": {"sha256": sha256, "size": 1}}, {"rfilename": "README.md", "blobId": "abc"}]}).to_string().into_bytes()
}

/// `sha256sum`'s hash of `bytes` (an independent reference).
fn sha256sum(bytes: &[u8]) -> String {
    let f = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(f.path(), bytes).expect("write");
    let o = std::process::Command::new("sha256sum").arg(f.path()).output().expect("sha256sum");
    String::from_utf8_lossy(&o.stdout).split_whitespace().next().expect("hash").to_string()
}

/// Serve `body` for `GET /<path>` and the hub listing `listing_body` for `GET /<LISTING_PATH>?...`
/// (404 otherwise) to `requests` connections; returns the base URL.
fn serve_with_listing(path: &'static str, body: Vec<u8>, listing_body: Vec<u8>, requests: usize) -> String {
    serve_paths(vec![(format!("GET /{path} "), body), (format!("GET /{LISTING_PATH}?"), listing_body)], requests)
}

/// Serve `body` for `GET /<path>` (404 otherwise) to `requests` connections; returns the base URL.
fn serve(path: &'static str, body: Vec<u8>, requests: usize) -> String {
    serve_paths(vec![(format!("GET /{path} "), body)], requests)
}

fn serve_paths(routes: Vec<(String, Vec<u8>)>, requests: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut request_line = String::new();
            let _ = reader.read_line(&mut request_line);
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                    break;
                }
            }
            let response = if let Some((_, body)) = routes.iter().find(|(prefix, _)| request_line.starts_with(prefix.as_str())) {
                let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).into_bytes();
                r.extend_from_slice(body);
                r
            } else {
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
            };
            let _ = stream.write_all(&response);
        }
    });
    format!("http://{addr}")
}

#[test]
fn loads_official_format_records() {
    let records = load_subset(&fixture_dir(), "trec", false).expect("trec fixture");
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].id, "fixture-trec-0");
    assert_eq!(records[0].answers, ["Color"]);
    assert_eq!(records[1].all_classes.as_ref().map(Vec::len), Some(3));
    let e = load_subset(&fixture_dir(), "qasper", true).expect("qasper_e fixture");
    assert_eq!(e[0].length, 3500);
    assert!(e[0].all_classes.is_none());
}

#[test]
fn record_counts_come_from_the_files_else_from_longbenchs_published_table() {
    // Fetched: the file's records (the trec fixture has 2, qasper_e 1), not the published 200.
    assert_eq!(record_count(&fixture_dir(), "trec", false), Some(2));
    assert_eq!(record_count(&fixture_dir(), "qasper", true), Some(load_subset(&fixture_dir(), "qasper", true).unwrap().len()));
    // Not fetched: LongBench's README counts for the paper's datasets; none for LongBench-E.
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(record_count(empty.path(), "trec", false), Some(200));
    assert_eq!(record_count(empty.path(), "multifieldqa_en", false), Some(150));
    assert_eq!(record_count(empty.path(), "repobench-p", false), Some(500));
    assert_eq!(record_count(empty.path(), "qasper", true), None);
    // A Chinese subset is not in the paper's table; an unknown name is no subset.
    assert_eq!(published_record_count("dureader"), None);
    assert_eq!(record_count(empty.path(), "no-such-subset", false), None);
    let paper_total: usize = kvtasks::longbench::PAPER_DATASETS.iter().map(|d| published_record_count(d).expect(d)).sum();
    assert_eq!(paper_total, 13 * 200 + 150 + 2 * 500, "every paper dataset has a published count");
}

#[test]
fn missing_and_bad_files_say_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = load_subset(dir.path(), "narrativeqa", false).expect_err("missing");
    let msg = err.to_string();
    assert!(matches!(err, DataError::Missing { .. }));
    assert!(msg.contains("narrativeqa.jsonl"), "{msg}");
    assert!(msg.contains("kvbench data fetch longbench"), "{msg}");
    assert!(msg.contains("Hugging Face hub"), "{msg}");

    std::fs::write(dir.path().join("lcc.jsonl"), "{\"input\": \"x\"}\n").expect("write");
    let msg = load_subset(dir.path(), "lcc", false).expect_err("bad").to_string();
    assert!(msg.contains("lcc.jsonl:1"), "{msg}");

    assert!(matches!(load_subset(dir.path(), "nope", false), Err(DataError::UnknownSubset { .. })));
    assert!(matches!(load_subset(dir.path(), "narrativeqa", true), Err(DataError::NotInLongBenchE { .. })));
    assert_eq!(subset_path(dir.path(), "lcc", true).ok(), Some(dir.path().join("lcc_e.jsonl")));
}

#[test]
fn fetches_and_unpacks_over_http() {
    let zip = fixture_zip();
    let base = serve_with_listing(DATA_ZIP_PATH, zip.clone(), listing(&sha256sum(&zip)), 4);
    let dir = tempfile::tempdir().expect("tempdir");
    let summary = fetch_longbench_from(&format!("{base}/{DATA_ZIP_PATH}"), dir.path()).expect("fetch");
    assert_eq!(summary.files, ["passage_retrieval_en.jsonl", "qasper_e.jsonl", "trec.jsonl"]);
    for f in &summary.files {
        assert_eq!(std::fs::read(dir.path().join(f)).ok(), std::fs::read(fixture_dir().join(f)).ok(), "{f}");
    }
    assert!(!dir.path().join("README.txt").exists());
    assert_eq!(load_subset(dir.path(), "trec", false).expect("fetched trec").len(), 2);

    // a wrong path is a download error naming the URL
    let err = fetch_longbench_from(&format!("{base}/missing.zip"), dir.path()).expect_err("404");
    assert!(matches!(err, DataError::Download { .. }), "{err}");
    assert!(err.to_string().contains("missing.zip"), "{err}");
}

#[test]
fn a_download_that_does_not_match_the_hubs_sha256_is_never_used() {
    let zip = fixture_zip();
    let mut bad = zip.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    // The hub lists the good archive; the server (a corrupt mirror) sends a damaged one.
    let base = serve_with_listing(DATA_ZIP_PATH, bad, listing(&sha256sum(&zip)), 4);
    let dir = tempfile::tempdir().expect("tempdir");
    let err = fetch_longbench_from(&format!("{base}/{DATA_ZIP_PATH}"), dir.path()).expect_err("bad hash");
    assert!(err.to_string().contains("sha256") && err.to_string().contains("not used"), "{err}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").map(|e| e.expect("entry").file_name()).collect();
    assert!(left.is_empty(), "nothing may stay behind: {left:?}");
    assert!(load_subset(dir.path(), "trec", false).is_err());

    // No listing at all: the download cannot be verified, so it is refused.
    let base = serve(DATA_ZIP_PATH, zip, 2);
    let err = fetch_longbench_from(&format!("{base}/{DATA_ZIP_PATH}"), dir.path()).expect_err("no listing");
    assert!(err.to_string().contains("cannot verify"), "{err}");
}

#[test]
fn endpoint_comes_from_env_and_file_urls_work() {
    // the only test in this binary that touches the environment
    let dir = tempfile::tempdir().expect("tempdir");
    let mirror = dir.path().join("mirror");
    let zip_path = mirror.join(DATA_ZIP_PATH);
    std::fs::create_dir_all(zip_path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&zip_path, fixture_zip()).expect("zip");
    std::env::set_var(HF_ENDPOINT_ENV, format!("file://{}/", mirror.display()));
    assert_eq!(data_zip_url(), format!("file://{}/{DATA_ZIP_PATH}", mirror.display()));
    let out = dir.path().join("out");
    let summary = fetch_longbench(&out).expect("fetch from file://");
    assert_eq!(summary.files.len(), 3);
    std::env::remove_var(HF_ENDPOINT_ENV);
    assert!(data_zip_url().starts_with("https://huggingface.co/datasets/THUDM/LongBench/"));

    // a file that is not a zip is an archive error
    std::fs::write(&zip_path, b"not a zip").expect("write");
    let err = fetch_longbench_from(&format!("file://{}", zip_path.display()), &out).expect_err("bad zip");
    assert!(matches!(err, DataError::Archive { .. }), "{err}");
}
