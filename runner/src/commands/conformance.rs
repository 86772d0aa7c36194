//! `kvbench conformance`: the conformance suite of `kvcore::conformance` from the command line,
//! for built-in methods and for external plugins (loaded with `--plugin`, run through their C
//! interface). One line per trial; the exit status is non-zero when any trial fails.

use crate::cli::ConformanceArgs;
use anyhow::{bail, Context, Result};
use kvcore::conformance::{run_all, trials, Bench, Subject};
use std::path::PathBuf;

pub fn run(a: ConformanceArgs, plugins: &[PathBuf]) -> Result<()> {
    let reg = super::methods::registry(plugins)?;
    let cache_methods: Vec<&kvcore::registry::MethodInfo> = reg.iter().filter(|m| !m.is_prompt()).collect();
    let chosen: Vec<&kvcore::registry::MethodInfo> = if a.all {
        cache_methods
    } else if a.methods.is_empty() {
        let from_plugins: Vec<_> = cache_methods.into_iter().filter(|m| m.origin != "built-in").collect();
        if from_plugins.is_empty() {
            bail!("name the methods to test (see `kvbench methods`), pass --all, or load a plugin with --plugin PATH");
        }
        from_plugins
    } else {
        let mut v = Vec::new();
        for name in &a.methods {
            let m = reg.get(name)?;
            if m.is_prompt() {
                bail!("`{name}` is a prompt compressor: it runs with the full cache over a shorter prompt, so the cache conformance suite does not apply");
            }
            v.push(m);
        }
        v
    };
    let subjects: Vec<Subject> = chosen.iter().map(|m| Subject::from_method(m)).collect();
    let list: Vec<_> = trials(&subjects).into_iter().filter(|t| a.filter.as_ref().is_none_or(|f| t.name.contains(f.as_str()))).collect();
    if a.list {
        for t in &list {
            println!("{}", t.name);
        }
        return Ok(());
    }
    // The tiny test model borrows SmolLM2's tokenizer (fetched on first use, sha256-checked).
    let home = kvcore::sources::kvbench_home();
    let files = kvcore::sources::resolve_or_fetch("smollm2-135m", &home).context("fetching SmolLM2 for the conformance model's tokenizer")?;
    let _g = tch::no_grad_guard();
    let bench = Bench::new(files.path()).context("building the tiny conformance model")?;
    let n = list.len();
    let outcomes = run_all(&bench, list, |o| match &o.result {
        Ok(()) => println!("ok    {}", o.name),
        Err(e) => println!("FAIL  {}: {}", o.name, e.replace('\n', " ")),
    });
    let failed: Vec<&str> = outcomes.iter().filter(|o| o.result.is_err()).map(|o| o.name.as_str()).collect();
    println!(
        "\n{} trials: {} passed, {} failed ({} methods: {})",
        n,
        n - failed.len(),
        failed.len(),
        subjects.len(),
        subjects.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
    );
    if !failed.is_empty() {
        bail!("{} conformance trial(s) failed: {}", failed.len(), failed.join(", "));
    }
    Ok(())
}
