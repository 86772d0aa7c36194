//! Model sources: `hf:org/name[@revision]` downloads against a local HTTP server standing in for
//! the hub (the code path users with the network take), reference parsing, and cache listing.

mod common;

use kvcore::config::Architecture;
use kvcore::device::{DType, RuntimeSettings};
use kvcore::random_init::{write_random_model, InitOptions, PRESETS};
use kvcore::sources::{fetch_hf, list_cached, resolve, HfRef, ModelFiles};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

/// Serves `root/<path>` for `GET /<path>` (404 otherwise) until the test process ends.
fn serve(root: PathBuf) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                    break;
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_string();
            let file = root.join(&path);
            match std::fs::read(&file) {
                Ok(body) if !path.contains("..") => {
                    let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                    let _ = stream.write_all(&body);
                }
                _ => {
                    let _ = write!(stream, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                }
            }
        }
    });
    format!("http://{addr}")
}

fn tiny(dir: &Path) {
    let opts = InitOptions {
        arch: Architecture::Qwen2,
        preset: *PRESETS.iter().find(|p| p.name == "tiny").unwrap(),
        seed: 1,
        dtype: tch::Kind::Float,
        tokenizer_gguf: common::smollm2_gguf(),
        sliding_window: None,
    };
    write_random_model(&opts, dir).unwrap();
}

#[test]
fn hf_download_from_a_local_hub_is_complete_and_loads() {
    let hub = tempfile::tempdir().unwrap();
    let repo = hub.path().join("acme/tiny-qwen/resolve/v1");
    tiny(&repo);
    let endpoint = serve(hub.path().to_path_buf());
    let home = tempfile::tempdir().unwrap();
    let r = HfRef::parse("acme/tiny-qwen@v1").unwrap();
    assert!(resolve("hf:acme/tiny-qwen@v1", home.path()).is_err(), "not cached yet");
    let dir = fetch_hf(&r, home.path(), &endpoint).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        assert_eq!(std::fs::read(dir.join(f)).unwrap(), std::fs::read(repo.join(f)).unwrap(), "{f} differs");
    }
    assert_eq!(resolve("hf:acme/tiny-qwen@v1", home.path()).unwrap(), ModelFiles::HfDir(dir.clone()));
    assert!(list_cached(home.path()).iter().any(|m| m.name == "hf:acme/tiny-qwen@v1"));
    let settings = RuntimeSettings { device: tch::Device::Cpu, dtype: DType::F32, kv_dtype: DType::F32 };
    let lm = kvcore::loader::load(&ModelFiles::HfDir(dir), settings).unwrap();
    assert_eq!(lm.model.config.architecture, Architecture::Qwen2);
}

#[test]
fn hf_download_of_a_missing_repo_fails_and_leaves_no_cache_hit() {
    let hub = tempfile::tempdir().unwrap();
    let endpoint = serve(hub.path().to_path_buf());
    let home = tempfile::tempdir().unwrap();
    let r = HfRef::parse("acme/absent").unwrap();
    let err = fetch_hf(&r, home.path(), &endpoint).unwrap_err().to_string();
    assert!(err.contains("config.json"), "{err}");
    assert!(resolve("hf:acme/absent", home.path()).is_err());
}

#[test]
fn hf_references_are_validated() {
    assert_eq!(HfRef::parse("org/name").unwrap().revision, "main");
    for bad in ["org", "org/name/extra", "../x/y", "org/..", "org/name@", "org/na me"] {
        assert!(HfRef::parse(bad).is_err(), "{bad} should be rejected");
    }
}
