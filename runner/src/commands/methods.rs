//! `kvbench methods`: every compression method this binary knows (the in-tree families, linked
//! below so their registrations are kept, plus plugins loaded with --plugin), with a one-line
//! description and its parameters; `--detail NAME` adds the budget mapping and paper reference.

use crate::cli::MethodsArgs;
use anyhow::Result;
use kvcore::registry::Registry;
use serde_json::json;
use std::path::PathBuf;

/// The built-in methods plus the plugins named on the command line.
pub fn registry(plugins: &[PathBuf]) -> Result<Registry> {
    kvexperiment::registry(plugins)
}

pub fn run(a: MethodsArgs, plugins: &[PathBuf]) -> Result<()> {
    let reg = registry(plugins)?;
    if let Some(name) = &a.detail {
        let m = reg.get(name)?;
        if a.json {
            let params: Vec<_> = m.params.iter().map(|(n, d, h)| json!({"name": n, "default": d, "help": h})).collect();
            println!("{}", json!({"name": m.name, "family": m.family, "origin": m.origin, "summary": m.summary, "detail": m.detail, "params": params}));
            return Ok(());
        }
        println!("{} ({} family, {})\n  {}\n\n{}\n\nparameters:", m.name, m.family, m.origin, m.summary, m.detail);
        let width = m.params.iter().map(|(n, _, _)| n.len()).max().unwrap_or(0).max(16);
        for (n, d, h) in &m.params {
            println!("  {n:<width$} default {d:<10} {h}");
        }
        return Ok(());
    }
    if a.json {
        let list: Vec<_> = reg
            .iter()
            .map(|m| {
                json!({"name": m.name, "family": m.family, "origin": m.origin, "summary": m.summary,
                "params": m.params.iter().map(|(n, d, _)| json!({"name": n, "default": d})).collect::<Vec<_>>()})
            })
            .collect();
        println!("{}", serde_json::to_string(&list)?);
        return Ok(());
    }
    for m in reg.iter() {
        let params: Vec<String> = m.params.iter().map(|(n, d, _)| format!("{n}={d}")).collect();
        println!("{:<14} {}", m.name, m.summary);
        if !params.is_empty() {
            println!("{:<14}   params: {}", "", params.join(" "));
        }
        if m.origin != "built-in" {
            println!("{:<14}   from {}", "", m.origin);
        }
    }
    Ok(())
}
