//! External plugins end to end through the binary: `kvbench conformance` runs the template's
//! method through its C interface (and fails a broken setting loudly), a run records every
//! plugin's path and sha256 in run.json and cell.json, and a rebuilt plugin (a library whose
//! bytes changed) starts new cells on `--resume` instead of mixing records with the old build's.

mod common;

use common::{built_library, config_tree, kvbench, ok};
use std::path::{Path, PathBuf};

fn sha256(p: &Path) -> String {
    kvformats::home::sha256_file(p).unwrap()
}

fn cell_dirs(run: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(run.join("cells")).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

#[test]
fn conformance_runs_the_template_through_its_c_interface() {
    let lib = built_library("libkvplugin_example_external.so");
    let out = ok(&["--plugin", lib.to_str().unwrap(), "conformance", "example-recent"]);
    for trial in
        ["example-recent/ratio=4/budget", "example-recent/ratio1/identical-to-full", "example-recent/ratio4/fewer-bytes", "example-recent/batch2-gqa/shapes"]
    {
        assert!(out.lines().any(|l| l.starts_with("ok") && l.ends_with(trial)), "trial {trial} should pass:\n{out}");
    }
    assert!(out.contains(" 0 failed"), "{out}");
    // Listing names the trials without running them.
    let list = ok(&["--plugin", lib.to_str().unwrap(), "conformance", "--list", "--filter", "/budget"]);
    assert!(list.lines().all(|l| l.starts_with("example-recent/") && l.ends_with("/budget")) && !list.is_empty(), "{list}");
    // A method name that is not registered is refused naming the known ones.
    let o = kvbench(&["conformance", "no-such-method"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("knorm"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn runs_record_plugin_hashes_and_a_rebuilt_plugin_starts_new_cells() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = config_tree(tmp.path(), &["full", "example-recent"]);
    // A copy of the plugin the experiment loads (the run must not depend on the build folder).
    let plugin = tmp.path().join("libmine.so");
    std::fs::copy(built_library("libkvplugin_example_external.so"), &plugin).unwrap();
    let p = plugin.to_str().unwrap();
    let out = tmp.path().join("run");
    let o = out.to_str().unwrap();
    ok(&["--plugin", p, "run", exp.to_str().unwrap(), "--out", o, "--zero-measurements", "--no-report"]);
    let first_hash = sha256(&plugin);
    let run_json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    let plugins = run_json["plugins"].as_array().unwrap_or_else(|| panic!("run.json lacks `plugins`: {run_json}"));
    assert_eq!(plugins.len(), 1, "{run_json}");
    assert_eq!(plugins[0]["sha256"], first_hash.as_str());
    assert!(plugins[0]["path"].as_str().unwrap().ends_with("libmine.so"));
    assert_eq!(plugins[0]["methods"], serde_json::json!(["example-recent"]));
    let before = cell_dirs(&out);
    // full + example-recent at ratios 2 and 4; only the plugin's cells carry its hash.
    assert_eq!(before.len(), 3, "{before:?}");
    let with_hash: Vec<_> = before.iter().filter(|d| std::fs::read_to_string(d.join("cell.json")).unwrap().contains(&first_hash)).collect();
    assert_eq!(with_hash.len(), 2, "the two example-recent cells record the plugin's sha256");

    // "Rebuild" the plugin: different bytes, same behaviour (trailing bytes after the ELF image).
    let mut bytes = std::fs::read(&plugin).unwrap();
    bytes.extend_from_slice(b"rebuilt");
    std::fs::write(&plugin, bytes).unwrap();
    let second_hash = sha256(&plugin);
    assert_ne!(first_hash, second_hash);
    ok(&["--plugin", p, "run", exp.to_str().unwrap(), "--out", o, "--zero-measurements", "--no-report", "--resume"]);
    let after = cell_dirs(&out);
    assert_eq!(after.len(), 5, "the rebuilt plugin's two cells are new, the full cell is reused: {after:?}");
    assert!(before.iter().all(|d| after.contains(d)), "the old build's cells are kept apart, untouched");
    let fresh: Vec<_> = after.iter().filter(|d| !before.contains(d)).collect();
    for d in fresh {
        assert!(std::fs::read_to_string(d.join("cell.json")).unwrap().contains(&second_hash), "{} should record the new hash", d.display());
    }
    let run_json = std::fs::read_to_string(out.join("run.json")).unwrap();
    assert!(run_json.contains(&second_hash), "run.json records the plugin loaded by the latest run:\n{run_json}");
}

/// Copies `src` (files and folders, `target/` excluded) into `dst`.
fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let (from, to) = (e.path(), dst.join(e.file_name()));
        if e.file_type().unwrap().is_dir() {
            if e.file_name() != "target" {
                copy_tree(&from, &to);
            }
        } else {
            std::fs::copy(&from, &to).unwrap();
        }
    }
}

/// What a researcher does with the template, followed literally from plugins/README.md: copy it
/// out of the repository, rename the package and the method, point its two path dependencies at
/// the checkout, build it with the documented libtorch one-liner, then load it with `--plugin`
/// and run the conformance suite on it through its C interface.
#[test]
fn the_template_builds_outside_the_repository_and_passes_conformance() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let tmp = tempfile::tempdir().unwrap();
    assert!(!tmp.path().starts_with(&repo), "the copy must live outside the checkout");
    let dir = tmp.path().join("my-method");
    copy_tree(&repo.join("plugins/example-external"), &dir);
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    let manifest = manifest
        .replace("name = \"kvplugin-example-external\"", "name = \"kvplugin-mine\"")
        .replace("path = \"../../kvcache\"", &format!("path = \"{}\"", repo.join("kvcache").display()))
        .replace("path = \"../kvmethods\"", &format!("path = \"{}\"", repo.join("plugins/kvmethods").display()));
    assert!(
        manifest.contains("kvplugin-mine") && !manifest.contains("\"../"),
        "the template's manifest changed; update plugins/README.md and this test:\n{manifest}"
    );
    std::fs::write(dir.join("Cargo.toml"), manifest).unwrap();
    let lib = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap().replace("\"example-recent\"", "\"mine-recent\"");
    std::fs::write(dir.join("src/lib.rs"), lib).unwrap();
    // The checkout's lock file pins the same crate versions, so the build reuses what is cached.
    std::fs::copy(repo.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    // A target folder of its own inside the checkout's (`cargo test` holds the lock on the main
    // one while tests run), kept between runs.
    let target = repo.join("target/out-of-tree-template");
    let o = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--offline"])
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", &target)
        .env("LIBTORCH", repo.join(".venv/libtorch"))
        .env("LIBTORCH_CXX11_ABI", "1")
        .env_remove("RUSTFLAGS")
        .output()
        .expect("run cargo");
    assert!(o.status.success(), "the copied template does not build outside the repository:\n{}", String::from_utf8_lossy(&o.stderr));
    let so = target.join("release/libkvplugin_mine.so");
    assert!(so.is_file(), "cargo should write {} (the package name with underscores)", so.display());
    let out = ok(&["--plugin", so.to_str().unwrap(), "conformance", "mine-recent"]);
    assert!(out.contains(" 0 failed") && out.contains("ok    mine-recent/ratio=4/budget"), "{out}");
}
