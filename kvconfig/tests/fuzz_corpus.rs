//! Replays the config fuzz target's seeds and crash reproducers (`fuzz/corpus/config`,
//! `fuzz/regressions/config`) through the loader and validator, so a fixed crash stays fixed
//! without cargo-fuzz; and checks that `parse_experiment` (the fuzzed entry point) gives what
//! `load_experiment` gives for the repository's experiments.

use kvconfig::{
    cells, load_experiment, parse_experiment, parse_shard, parse_toml, validate_model, validate_task, InlineMethod, MethodPreset, ModelConfig, TaskConfig,
};
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// What the config fuzz target does with one input.
fn exercise(text: &str) {
    let experiment = repo().join("configs/experiments/fuzz.toml");
    if let Ok(exp) = parse_experiment(&experiment, text) {
        let _ = exp.hash();
        if exp.models.len() * exp.methods.len() * exp.ratios.len().max(1) * exp.tasks.len() <= 4096 {
            let _ = cells(&exp, &|m| m != "full");
        }
    }
    let file = Path::new("configs/fuzz.toml");
    if let Ok(m) = parse_toml::<ModelConfig>(file, text) {
        let _ = validate_model(file, &m);
    }
    if let Ok(t) = parse_toml::<TaskConfig>(file, text) {
        let _ = validate_task(file, &t);
        let _ = t.category();
    }
    let _ = parse_toml::<MethodPreset>(file, text);
    let _ = parse_toml::<InlineMethod>(file, text);
    let _ = parse_shard(text);
}

#[test]
fn config_seeds_and_reproducers_do_not_panic() {
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(repo().join("fuzz").join(dir).join("config")) else { continue };
        for e in entries.flatten() {
            let bytes = std::fs::read(e.path()).unwrap();
            n += 1;
            if let Ok(text) = std::str::from_utf8(&bytes) {
                let r = std::panic::catch_unwind(|| exercise(text));
                assert!(r.is_ok(), "{} panicked", e.path().display());
            }
        }
    }
    assert!(n > 20, "the config corpus is missing ({n} files)");
}

#[test]
fn parse_experiment_matches_load_experiment() {
    let mut n = 0;
    let mut stack = vec![repo().join("configs/experiments")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "toml") {
                let text = std::fs::read_to_string(&p).unwrap();
                let loaded = load_experiment(&p);
                assert!(loaded.is_ok(), "{}: {:?}", p.display(), loaded.err());
                assert_eq!(parse_experiment(&p, &text), loaded, "{}", p.display());
                n += 1;
            }
        }
    }
    assert!(n >= 2);
    // A file that cannot be read is one error naming it, as before.
    let missing = repo().join("configs/experiments/no-such-file.toml");
    let e = load_experiment(&missing).unwrap_err();
    assert_eq!(e.0.len(), 1);
    assert_eq!((e.0[0].file.as_path(), e.0[0].key.as_str()), (missing.as_path(), "(file)"));
    assert!(e.0[0].problem.starts_with("cannot read: "), "{e}");
}

#[test]
fn validators_report_each_problem() {
    let f = Path::new("m.toml");
    let m: ModelConfig = parse_toml(f, "source = \" \"\ndtype = \"f8\"\ncontext_limit = 0\nrope_theta = -1.0\n").unwrap();
    let keys: Vec<String> = validate_model(f, &m).into_iter().map(|e| e.key).collect();
    assert_eq!(keys, ["source", "dtype", "context_limit", "rope_theta"]);
    let t: TaskConfig = parse_toml(f, "task = \"nope\"\nfraction = 2.0\nlimit = 3\n").unwrap();
    let keys: Vec<String> = validate_task(f, &t).into_iter().map(|e| e.key).collect();
    assert_eq!(keys, ["task", "fraction", "fraction"]);
}
