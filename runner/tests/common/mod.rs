//! Shared helpers for the CLI tests that run experiments (run_cli.rs, slurm_cli.rs): the kvbench
//! binary, and a config tree with a tiny random model and a small passkey task.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs kvbench with `args` in `cwd`.
pub fn kvbench_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvbench")).current_dir(cwd).args(args).output().expect("run kvbench")
}

/// Runs kvbench with `args` in the test's working directory.
pub fn kvbench(args: &[&str]) -> Output {
    kvbench_in(Path::new("."), args)
}

/// Runs kvbench and returns its stdout, failing the test with its stderr if it fails.
pub fn ok(args: &[&str]) -> String {
    let o = kvbench(args);
    assert!(o.status.success(), "{args:?} failed:\n{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A config tree with a tiny random model (`tiny`), a small passkey task (`needle`, 40 new tokens), a KIVI preset
/// (`kivi-small`) and an experiment `t` over `methods` at ratios 2 and 4; returns the experiment.
pub fn config_tree(dir: &Path, methods: &[&str]) -> PathBuf {
    let model = dir.join("tiny");
    ok(&["model", "init", "--arch", "llama", "--preset", "tiny", "--random", "--seed", "5", model.to_str().unwrap()]);
    let list = methods.iter().map(|m| format!("\"{m}\"")).collect::<Vec<_>>().join(", ");
    let files = [
        ("models/tiny.toml", format!("source = \"{}\"\nchat_template = true\n", model.display())),
        // 40 new tokens, not passkey's 256: the random model never stops early, and 40 steps
        // still cross KIVI's 16-token residual flush twice and keep H2O/TOVA evicting while decoding.
        ("tasks/needle.toml", "task = \"passkey\"\nlengths = [40, 120]\nsteps = 3\ndepths = 3\nseed = 7\nmax_new_tokens = 40\n".to_string()),
        ("methods/kivi-small.toml", "method = \"kivi\"\nlabel = \"kivi-2bit\"\n[params]\nbits = 2\ngroup_size = 8\nresidual_length = 16\n".to_string()),
        (
            "experiments/t.toml",
            format!("name = \"t\"\nmodels = [\"tiny\"]\ntasks = [\"needle\"]\nmethods = [{list}]\nratios = [2, 4]\n[run]\nthreads = 1\ndevice = \"cpu\"\n"),
        ),
    ];
    for (rel, text) in files {
        let p = dir.join("configs").join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    dir.join("configs/experiments/t.toml")
}

/// The files every report directory holds.
pub const REPORT_FILES: &[&str] = &["leaderboard.csv", "leaderboard.md", "paired.csv", "tasks.csv", "tasks.md", "index.html", "examples.md", "examples.html"];

/// A shared library built by cargo next to this test's executable (a dev-dependency's cdylib).
pub fn built_library(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    for dir in [deps.to_path_buf(), deps.parent().unwrap().to_path_buf()] {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} not found next to {}: `cargo test --workspace` builds it", exe.display());
}
