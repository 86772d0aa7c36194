//! The experiment engine: everything between an experiment file and its records, as a library
//! that tests and other front ends drive without the `kvbench` binary (which is a thin clap front
//! end over it).
//!
//! * [`plan`]: the experiment and the registry become checked cells (a shard of them), and the
//!   dry-run estimate, from the task code's own sample counts;
//! * [`samples`]: a cell's task spec, data sets, seeded subset and token ids;
//! * [`runtime`]: device/dtype/threads, and model loading behind the memory guard;
//! * [`provenance`]: what run.json records (commit, libtorch, model, data and plugin hashes);
//! * [`engine`]: the cell runner ([`engine::run_cells`]);
//! * [`sink`]: atomic small files and fsync'd append-only records, resumable;
//! * [`lock`]: `run.lock`, so only one run writes a run directory at a time (stale ones taken over).

pub mod engine;
pub mod lock;
pub mod plan;
pub mod provenance;
pub mod runtime;
pub mod samples;
pub mod sink;

use anyhow::{Context, Result};
use kvcore::registry::Registry;
use std::path::PathBuf;

/// The built-in methods (every in-tree family, through the `kvplugins` facade) plus the plugins
/// at `plugins`.
pub fn registry(plugins: &[PathBuf]) -> Result<Registry> {
    kvplugins::link();
    let mut r = Registry::builtin()?;
    for p in plugins {
        let names = r.load_plugin(p).with_context(|| format!("--plugin {}", p.display()))?;
        tracing::info!("plugin {}: {}", p.display(), names.join(", "));
    }
    Ok(r)
}
