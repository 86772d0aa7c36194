//! Fuzzes the TOML config loader and validator: each input is an experiment file placed in the
//! repository's own config tree (so the models, tasks and methods it names are the real files),
//! and also a model, task and method file, and a `--shard` value.
#![no_main]

use kvconfig::{cells, parse_experiment, parse_shard, parse_toml, shard, validate_model, validate_task, InlineMethod, MethodPreset, ModelConfig, TaskConfig};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

/// Largest grid expanded per input (the grid is models × methods × ratios × tasks by design).
const MAX_CELLS: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let experiment = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/experiments/fuzz.toml"));
    match parse_experiment(experiment, text) {
        Ok(exp) => {
            let _ = exp.hash();
            let grid = exp.models.len() * exp.methods.len() * exp.ratios.len().max(1) * exp.tasks.len();
            if grid <= MAX_CELLS {
                let all = cells(&exp, &|m| m != "full");
                let n = all.len();
                let sharded: usize = (0..3).map(|i| shard(all.clone(), i, 3).len()).sum();
                assert_eq!(sharded, n);
            }
        }
        Err(errors) => assert!(!errors.0.is_empty() && errors.0.iter().all(|e| e.file == experiment || e.file.starts_with(experiment.parent().and_then(Path::parent).unwrap_or(experiment)))),
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
    if text.len() < 64 {
        if let Ok((i, n)) = parse_shard(text) {
            assert!(i < n);
        }
    }
});
