//! Command implementations, one module per command; `run` dispatches.

mod bench;
mod conformance;
mod data;
mod generate;
mod methods;
mod model;
mod perplexity;
mod quickstart;
mod run;
mod score;
mod slurm;
mod task;

use crate::cli::{Cli, Command, GuardArgs, RuntimeArgs};
use anyhow::Result;
use kvcore::device::RuntimeSettings;

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(a) => generate::run(a, &cli.global.plugins),
        Command::Model(m) => model::run(m),
        Command::Quickstart(q) => quickstart::run(q),
        Command::Data(d) => data::run(d),
        Command::Task(t) => task::run(t),
        Command::Score(s) => score::run(s),
        Command::Methods(m) => methods::run(m, &cli.global.plugins),
        Command::Conformance(c) => conformance::run(c, &cli.global.plugins),
        Command::Perplexity(p) => perplexity::run(p, &cli.global.plugins),
        Command::Bench(b) => bench::run(b, &cli.global.plugins),
        Command::Validate(v) => run::validate(v, &cli.global.plugins),
        Command::Run(r) => run::run(r, &cli.global.plugins),
        Command::Merge(m) => run::merge(m),
        Command::Report(r) => run::report(r),
        Command::Export(e) => run::export(e),
        Command::Slurm(s) => slurm::run(s, &cli.global.plugins),
    }
}

/// Resolves `--device/--dtype/--kv-dtype/--threads` (threads are set once, here).
pub fn runtime_settings(a: &RuntimeArgs) -> Result<(RuntimeSettings, usize)> {
    kvexperiment::runtime::resolve_typed(a.device, a.dtype, a.kv_dtype, a.threads)
}

/// Loads a model after the memory guard has checked that its weights and full KV cache at
/// `context_tokens` (clamped to the model's context) fit (`--force` overrides a refusal).
pub fn load_guarded(
    files: &kvcore::sources::ModelFiles,
    settings: RuntimeSettings,
    overrides: &kvcore::loader::ConfigOverrides,
    context_tokens: usize,
    guard: &GuardArgs,
) -> Result<kvcore::loader::LoadedModel> {
    kvexperiment::runtime::load_guarded(
        files,
        settings,
        overrides,
        context_tokens,
        &kvexperiment::runtime::Guard { force: guard.force, memory_limit: guard.memory_limit.clone() },
    )
}
