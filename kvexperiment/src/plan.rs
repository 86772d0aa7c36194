//! Planning: an experiment file and the registry become the cells to run (each method's
//! parameters checked first, one message per problem), a shard of them, and the dry-run estimate
//! of what they cost, computed with the task code's own sample counts.

use anyhow::{bail, Result};
use kvconfig::{Cell, Experiment};
use kvcore::registry::Registry;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Loads an experiment and checks every method's parameters against the registry; one message
/// per problem.
pub fn load_checked(path: &Path, plugins: &[PathBuf], allow_plugins: bool) -> Result<(Experiment, Registry, Vec<Cell>)> {
    let exp = kvconfig::load_experiment(path)?;
    let mut all_plugins = plugins.to_vec();
    if !exp.plugins.is_empty() {
        if !allow_plugins {
            bail!(
                "{}: plugins: the experiment loads plugins ({}); plugins are code that runs with your rights, so pass --allow-plugins to load them",
                path.display(),
                exp.plugins.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            );
        }
        all_plugins.extend(exp.plugins.iter().cloned());
    }
    let reg = crate::registry(&all_plugins)?;
    let mut problems = Vec::new();
    for (i, m) in exp.methods.iter().enumerate() {
        if let Err(e) = reg.get(&m.method) {
            problems.push(format!("{}: methods[{i}] ({}): {e}", path.display(), m.label));
        }
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    let takes_ratio = |name: &str| reg.get(name).map(|m| m.params.iter().any(|(p, _, _)| p == "ratio")).unwrap_or(false);
    let plugin_hash = |name: &str| reg.get(name).ok().and_then(|m| m.plugin_sha256.clone());
    let cells = kvconfig::cells_with_plugins(&exp, &takes_ratio, &plugin_hash);
    let mut seen = std::collections::BTreeSet::new();
    for c in &cells {
        let key = (c.method.label.clone(), c.ratio.map(|r| r.to_string()));
        if !seen.insert(key) {
            continue;
        }
        if let Err(e) = reg.build(&c.method.method, &c.method.params) {
            problems.push(format!("{}: method `{}`{}: {e}", path.display(), c.method.label, c.ratio.map(|r| format!(" at ratio {r}")).unwrap_or_default()));
        }
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok((exp, reg, cells))
}

/// The cells of shard `i/N` (`None`: all of them).
pub fn select_shard(cells: Vec<Cell>, shard: Option<&str>) -> Result<Vec<Cell>> {
    Ok(match shard {
        Some(s) => {
            let (i, n) = kvconfig::parse_shard(s).map_err(anyhow::Error::msg)?;
            kvconfig::shard(cells, i, n)
        }
        None => cells,
    })
}

/// How many samples a cell runs, by the task code's own rules (`None`: only the data can tell,
/// e.g. a LongBench subset), after the task config's `limit` and `fraction`.
pub fn cell_samples(c: &Cell) -> Option<usize> {
    let n = crate::samples::task_spec(c).sample_count()?;
    Some(c.task_config.fraction.map_or(n, |f| crate::samples::fraction_keep(n, f)))
}

/// Whether a cell runs in a shared prefill group (unless `--isolated`): its method declares a
/// plain full-attention prefill and is not a prompt compressor. A method that fails to build
/// counts as alone (the run itself reports the error).
pub fn shares_prefill(reg: &Registry, c: &Cell) -> bool {
    let Ok(m) = reg.get(&c.method.method) else { return false };
    !m.is_prompt() && m.build(&c.method.params).map(|f| f.shared_prefill()).unwrap_or(false)
}

/// What a cell's prompts are cut to, as the dry run shows it: `uncut` for a method that is never
/// truncated (`truncate = false`), else the configured `context_limit` / `max_input_tokens`
/// (`<=7500 tok`), else the model's positions less the tokens to generate (known once it loads).
pub fn prompt_cut(c: &Cell) -> String {
    if !c.method.truncate {
        return "uncut".into();
    }
    match [c.model_config.context_limit, c.task_config.max_input_tokens].into_iter().flatten().min() {
        Some(n) => format!("<={n} tok"),
        None => "<=positions".into(),
    }
}

/// The dry run: one line per cell, then samples and input tokens per model and in all, and the
/// prefill tokens a shared run saves (one prefill per prompt for each task's sharing cells).
pub fn dry_run(exp: &Experiment, reg: &Registry, cells: &[Cell], shard: Option<&str>) -> String {
    let mut out = format!("experiment `{}`: {} cell(s){}\n", exp.name, cells.len(), shard.map(|s| format!(" in shard {s}")).unwrap_or_default());
    // Per model: samples and input tokens over its cells (the sizes a sitting or a cluster
    // allocation is planned from).
    let mut per_model: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
    // Input tokens of the cells that share prefills, and the most any one of them prefills per
    // (model, task): a shared run prefills each of those prompts once.
    let mut sharing: BTreeMap<(&str, &str), (usize, usize, usize)> = BTreeMap::new();
    // A task's sample count, once per task: a LongBench count reads the subset's file.
    let mut samples_of: BTreeMap<&str, Option<usize>> = BTreeMap::new();
    for c in cells {
        let t = &c.task_config;
        let per = if t.lengths.is_empty() { 2048 } else { t.lengths.iter().sum::<usize>() };
        let n = *samples_of.entry(c.task.as_str()).or_insert_with(|| cell_samples(c));
        // Mean configured length per sample (passkey lengths are words: about 1.3 tokens each).
        let mean = per / t.lengths.len().max(1);
        let m = per_model.entry(c.model.as_str()).or_default();
        // A LongBench record is as long as its document (cut at the model's limit): the
        // configured lengths say nothing about it, so its cells count samples but no tokens.
        let lengths_unknown = t.task.starts_with("longbench");
        match n {
            Some(n) if lengths_unknown => {
                m.0 += n;
                m.2 += 1;
            }
            Some(n) => {
                let tokens = n * if t.task == "passkey" { mean * 13 / 10 } else { mean };
                m.0 += n;
                m.1 += tokens;
                if shares_prefill(reg, c) {
                    let g = sharing.entry((c.model.as_str(), c.task.as_str())).or_default();
                    g.0 += tokens;
                    g.1 = g.1.max(tokens);
                    g.2 += 1;
                }
            }
            None => m.2 += 1,
        }
        out += &format!(
            "  {}  {:<14} {:<22} {:<6} {:<24} {:<16} {}\n",
            c.id,
            c.model,
            c.method.label,
            c.ratio.map(|r| format!("{r}x")).unwrap_or_else(|| "-".into()),
            c.task,
            prompt_cut(c),
            n.map_or_else(|| "? samples (all of the data set's records)".to_string(), |n| format!("~{n} samples"))
        );
    }
    if per_model.len() > 1 {
        for (model, (n, t, _)) in &per_model {
            out += &format!("  {model}: ~{n} samples, ~{t} input tokens\n");
        }
    }
    let tokens: usize = per_model.values().map(|(_, t, _)| t).sum();
    let unknown: usize = per_model.values().map(|(_, _, u)| u).sum();
    out += &format!("estimated input: ~{tokens} tokens in all (an estimate from the configured lengths and sample counts)");
    if unknown > 0 {
        out += &format!(", not counting {unknown} cell(s) whose sample count or prompt lengths only the data can tell (LongBench documents)");
    }
    let shared_cells: usize = sharing.values().map(|g| g.2).sum();
    if shared_cells > 1 {
        let alone: usize = sharing.values().map(|g| g.0).sum();
        let once: usize = sharing.values().map(|g| g.1).sum();
        out += &format!(
            "\nshared prefill: {shared_cells} of {} cell(s) share one prefill per prompt (their methods prefill with plain causal attention): ~{alone} prefill tokens become ~{once} (~{} fewer tokens prefilled, {:.0}% of the input; `--isolated` prefills every cell alone)",
            cells.len(),
            alone - once,
            100.0 * (alone - once) as f64 / tokens.max(1) as f64
        );
    }
    out
}

/// An upper bound on the context (input + generated tokens) a cell asks for, known before the
/// model loads, for the memory guard: the configured limits, else twice the task's longest
/// configured length (passkey lengths are words, about 1.3 tokens each, plus the template), else
/// unbounded (the guard clamps to the model's context).
pub fn cell_context_bound(c: &Cell) -> usize {
    let t = &c.task_config;
    let configured = t.lengths.iter().max().map(|&l| l.saturating_mul(2));
    let limits = if c.method.truncate { [c.model_config.context_limit, t.max_input_tokens] } else { [None; 2] };
    let input = limits.into_iter().chain([configured]).flatten().min().unwrap_or(usize::MAX);
    input.saturating_add(t.max_new_tokens.unwrap_or(128))
}
