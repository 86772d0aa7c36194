//! Model sources: `hf:org/name[@revision]` downloads against a local HTTP server standing in for
//! the hub (the code path users with the network take), reference parsing, and cache listing.

mod common;

use kvcore::config::Architecture;
use kvcore::device::{DType, RuntimeSettings};
use kvcore::random_init::{write_random_model, InitOptions, PRESETS};
use kvcore::sources::{fetch_hf, list_cached, resolve, HfRef, ModelFiles, RWKV_WORLD_VOCAB};
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
            let path = request.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/');
            let path = path.split('?').next().unwrap_or("").to_string();
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

/// Output of a command-line tool (an independent reference for the hashes).
fn tool(cmd: &str, args: &[&str]) -> String {
    let o = std::process::Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(o.status.success(), "{cmd} {args:?} failed");
    String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

/// Writes the hub's file listing for `repo@rev` (served at `api/models/<repo>/revision/<rev>`)
/// from the files in `files_dir`: safetensors as LFS files (sha256), the rest as git blobs
/// (sha1), hashed by `sha256sum` and `git hash-object`.
fn write_listing(hub: &Path, repo: &str, rev: &str, files_dir: &Path) {
    let mut siblings = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(files_dir).unwrap().map(|e| e.unwrap().path()).collect();
    names.sort();
    for p in names {
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        let size = std::fs::metadata(&p).unwrap().len();
        let s = p.to_str().unwrap();
        if name.ends_with(".safetensors") {
            siblings.push(serde_json::json!({"rfilename": name, "size": size, "blobId": "0000000000000000000000000000000000000000", "lfs": {"sha256": tool("sha256sum", &[s]), "size": size, "pointerSize": 134}}));
        } else {
            siblings.push(serde_json::json!({"rfilename": name, "size": size, "blobId": tool("git", &["hash-object", s])}));
        }
    }
    let listing = hub.join("api/models").join(repo).join("revision").join(rev);
    std::fs::create_dir_all(listing.parent().unwrap()).unwrap();
    std::fs::write(listing, serde_json::json!({"id": repo, "sha": "0123", "siblings": siblings}).to_string()).unwrap();
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
    write_listing(hub.path(), "acme/tiny-qwen", "v1", &repo);
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
    assert_eq!(lm.transformer("test").unwrap().config.architecture, Architecture::Qwen2);
}

#[test]
fn hf_download_that_does_not_match_the_hubs_hashes_is_never_a_cache_hit() {
    let hub = tempfile::tempdir().unwrap();
    let repo = hub.path().join("acme/tiny-qwen/resolve/v1");
    tiny(&repo);
    write_listing(hub.path(), "acme/tiny-qwen", "v1", &repo);
    // The served weights change after the listing was made (a corrupt mirror, a bad proxy):
    // same size, one byte different.
    let weights = repo.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&weights, &bytes).unwrap();
    let endpoint = serve(hub.path().to_path_buf());
    let home = tempfile::tempdir().unwrap();
    let r = HfRef::parse("acme/tiny-qwen@v1").unwrap();
    let err = fetch_hf(&r, home.path(), &endpoint).unwrap_err().to_string();
    assert!(err.contains("model.safetensors") && err.contains("sha256"), "{err}");
    let dir = r.cache_dir(home.path());
    assert!(!dir.join("model.safetensors").exists() && !dir.join(".model.safetensors.partial").exists(), "the bad file must not stay");
    assert!(resolve("hf:acme/tiny-qwen@v1", home.path()).is_err(), "a failed download is not a cache hit");

    // A small file that differs from its git blob id is refused the same way.
    let hub2 = tempfile::tempdir().unwrap();
    let repo2 = hub2.path().join("acme/tiny-qwen/resolve/v1");
    tiny(&repo2);
    write_listing(hub2.path(), "acme/tiny-qwen", "v1", &repo2);
    // Same size, still valid JSON: one whitespace byte changed.
    let mut cfg = std::fs::read(repo2.join("config.json")).unwrap();
    let ws = cfg.iter().position(|&c| c == b'\n' || c == b' ').expect("config.json has whitespace");
    cfg[ws] = if cfg[ws] == b' ' { b'\t' } else { b' ' };
    std::fs::write(repo2.join("config.json"), &cfg).unwrap();
    let endpoint2 = serve(hub2.path().to_path_buf());
    let home2 = tempfile::tempdir().unwrap();
    let err = fetch_hf(&r, home2.path(), &endpoint2).unwrap_err().to_string();
    assert!(err.contains("config.json") && err.contains("git blob"), "{err}");
    assert!(resolve("hf:acme/tiny-qwen@v1", home2.path()).is_err());
}

#[test]
fn hf_download_of_a_missing_repo_fails_and_leaves_no_cache_hit() {
    let hub = tempfile::tempdir().unwrap();
    let endpoint = serve(hub.path().to_path_buf());
    let home = tempfile::tempdir().unwrap();
    let r = HfRef::parse("acme/absent").unwrap();
    let err = fetch_hf(&r, home.path(), &endpoint).unwrap_err().to_string();
    assert!(err.contains("acme/absent"), "{err}");
    assert!(resolve("hf:acme/absent", home.path()).is_err());
}

#[test]
fn hf_single_pth_file_download_gets_the_world_vocabulary() {
    let hub = tempfile::tempdir().unwrap();
    let repo = hub.path().join("acme/rwkv/resolve/main");
    std::fs::create_dir_all(&repo).unwrap();
    // The fetch checks bytes against the listing; what they are is the loader's business.
    std::fs::write(repo.join("RWKV-x.pth"), b"not really a checkpoint").unwrap();
    std::fs::write(repo.join("other.pth"), vec![7u8; 1000]).unwrap();
    write_listing(hub.path(), "acme/rwkv", "main", &repo);
    let endpoint = serve(hub.path().to_path_buf());
    let home = tempfile::tempdir().unwrap();
    // The vocabulary comes from the pinned rwkv wheel; seed the cache from the reference package
    // so the test stays offline (fetch_known checks its sha256 either way).
    let vocab_src = common::python().parent().unwrap().parent().unwrap().join("lib/python3.11/site-packages/rwkv/rwkv_vocab_v20230424.txt");
    let cached = kvcore::sources::cached_path(home.path(), &RWKV_WORLD_VOCAB);
    std::fs::create_dir_all(cached.parent().unwrap()).unwrap();
    std::fs::copy(&vocab_src, &cached).unwrap_or_else(|e| panic!("{}: {e} (scripts/bootstrap.sh --test installs rwkv)", vocab_src.display()));

    let r = HfRef::parse("acme/rwkv:RWKV-x.pth").unwrap();
    assert_eq!(r.file.as_deref(), Some("RWKV-x.pth"));
    let dir = fetch_hf(&r, home.path(), &endpoint).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, [".complete", "RWKV-x.pth", "rwkv_vocab_v20230424.txt"], "only the named file and the vocabulary");
    assert_eq!(std::fs::read(dir.join("rwkv_vocab_v20230424.txt")).unwrap(), std::fs::read(&vocab_src).unwrap());
    assert_eq!(resolve("hf:acme/rwkv:RWKV-x.pth", home.path()).unwrap(), ModelFiles::HfDir(dir.clone()));
    assert!(resolve("hf:acme/rwkv:other.pth", home.path()).is_err(), "another file of the repository is not cached");

    // A file the listing does not know is refused.
    let err = fetch_hf(&HfRef::parse("acme/rwkv:absent.pth").unwrap(), home.path(), &endpoint).unwrap_err().to_string();
    assert!(err.contains("absent.pth"), "{err}");
}

#[test]
fn hf_download_of_a_pickle_only_repository_takes_pytorch_model_bin() {
    let hub = tempfile::tempdir().unwrap();
    let repo = hub.path().join("acme/mamba-chat/resolve/main");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::write(repo.join("config.json"), r#"{"d_model": 64, "n_layer": 2, "vocab_size": 100}"#).unwrap();
    std::fs::write(repo.join("tokenizer.json"), "{}").unwrap();
    std::fs::write(repo.join("pytorch_model.bin"), vec![3u8; 4096]).unwrap();
    write_listing(hub.path(), "acme/mamba-chat", "main", &repo);
    let endpoint = serve(hub.path().to_path_buf());
    let home = tempfile::tempdir().unwrap();
    let dir = fetch_hf(&HfRef::parse("acme/mamba-chat").unwrap(), home.path(), &endpoint).unwrap();
    assert_eq!(std::fs::read(dir.join("pytorch_model.bin")).unwrap(), vec![3u8; 4096]);
    assert!(dir.join(".complete").is_file() && !dir.join("model.safetensors").exists());

    // Neither weights format: refused, not marked complete.
    let bare = hub.path().join("acme/bare/resolve/main");
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::write(bare.join("config.json"), "{}").unwrap();
    std::fs::write(bare.join("tokenizer.json"), "{}").unwrap();
    write_listing(hub.path(), "acme/bare", "main", &bare);
    let err = fetch_hf(&HfRef::parse("acme/bare").unwrap(), home.path(), &endpoint).unwrap_err().to_string();
    assert!(err.contains("pytorch_model.bin") && err.contains("model.safetensors"), "{err}");
    assert!(resolve("hf:acme/bare", home.path()).is_err());
}

#[test]
fn hf_references_are_validated() {
    assert_eq!(HfRef::parse("org/name").unwrap().revision, "main");
    assert_eq!(HfRef::parse("org/name@v2:w.pth").unwrap(), HfRef { repo: "org/name".into(), revision: "v2".into(), file: Some("w.pth".into()) });
    for bad in ["org", "org/name/extra", "../x/y", "org/..", "org/name@", "org/na me", "org/name:", "org/name:../x.pth", "org/name:a/b.pth"] {
        assert!(HfRef::parse(bad).is_err(), "{bad} should be rejected");
    }
}
