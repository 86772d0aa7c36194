//! `kvbench model fetch|list|init`: the model cache and random-weight models.

use crate::cli::{InitArgs, ModelCommand};
use anyhow::{bail, Context, Result};
use kvcore::config::Architecture;
use kvcore::device::DType;
use kvcore::random_init::{write_random_model, write_random_recurrent, write_random_rwkv, InitOptions, PRESETS, RECURRENT_PRESETS};
use kvcore::sources::{cached_path, fetch, known_model, kvbench_home, list_cached, KNOWN_MODELS};

pub fn run(cmd: ModelCommand) -> Result<()> {
    let home = kvbench_home();
    match cmd {
        ModelCommand::Fetch { names } => {
            let names = if names.is_empty() { vec!["smollm2-135m".to_string()] } else { names };
            for n in names {
                let files = fetch(&n, &home).with_context(|| format!("fetching {n}"))?;
                println!("{n}\t{}", files.path().display());
            }
        }
        ModelCommand::List => {
            println!("cache: {}", home.display());
            let cached = list_cached(&home);
            for c in &cached {
                println!("  {:<16} {:>10}  {}", c.name, super::generate::human_bytes(c.bytes), c.path.display());
            }
            println!("known models (kvbench model fetch NAME):");
            for m in KNOWN_MODELS {
                let have = if cached_path(&home, m).is_file() { "cached" } else { "not fetched" };
                println!("  {:<16} {:<12} {}", m.name, have, m.description);
            }
        }
        ModelCommand::Init(a) => init(a, &home)?,
    }
    Ok(())
}

fn init(a: InitArgs, home: &std::path::Path) -> Result<()> {
    if !a.random {
        bail!("`kvbench model init` writes random weights only: pass --random to say so (it converts no checkpoint)");
    }
    let dtype: DType = a.dtype;
    let arch_name = a.arch.name();
    if let Some(version) = arch_name.strip_prefix("rwkv").and_then(|v| v.parse::<u8>().ok()).filter(|v| [5, 6].contains(v)) {
        if !["tiny", "169m"].contains(&a.preset.as_str()) {
            bail!("--preset `{}`: expected tiny or 169m for --arch {arch_name}", a.preset);
        }
        let vocab = kvcore::sources::fetch_known(&kvcore::sources::RWKV_WORLD_VOCAB, home).context("fetching the RWKV World vocabulary")?;
        write_random_rwkv(version, &a.preset, a.seed, dtype.kind(), &vocab, &a.out_dir)?;
        println!("wrote a random {arch_name} {} model to {}", a.preset, a.out_dir.display());
        return Ok(());
    }
    if let Some((arch, presets)) = RECURRENT_PRESETS.iter().find(|(arch, _)| *arch == arch_name) {
        if !presets.contains(&a.preset.as_str()) {
            bail!("--preset `{}`: expected one of {} for --arch {arch}", a.preset, presets.join(", "));
        }
        let tokenizer_gguf = tokenizer_gguf_or_default(a.tokenizer_gguf, home)?;
        write_random_recurrent(arch, &a.preset, a.seed, dtype.kind(), &tokenizer_gguf, &a.out_dir)?;
        println!("wrote a random {arch} {} model to {}", a.preset, a.out_dir.display());
        return Ok(());
    }
    let arch = Architecture::from_name(arch_name).with_context(|| format!("--arch `{arch_name}`: not a transformer architecture"))?;
    let preset = *PRESETS
        .iter()
        .find(|p| p.name == a.preset)
        .with_context(|| format!("--preset `{}`: expected one of {}", a.preset, PRESETS.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")))?;
    let tokenizer_gguf = tokenizer_gguf_or_default(a.tokenizer_gguf, home)?;
    let opts = InitOptions { arch, preset, seed: a.seed, dtype: dtype.kind(), tokenizer_gguf, sliding_window: a.sliding_window };
    write_random_model(&opts, &a.out_dir)?;
    println!("wrote a random {arch_name} {} model to {}", preset.name, a.out_dir.display());
    Ok(())
}

/// `--tokenizer-gguf`, else the cached SmolLM2 GGUF (fetched if needed).
fn tokenizer_gguf_or_default(given: Option<std::path::PathBuf>, home: &std::path::Path) -> Result<std::path::PathBuf> {
    Ok(match given {
        Some(p) => p,
        None => {
            let m = known_model("smollm2-135m").expect("smollm2-135m is a known model");
            let p = cached_path(home, m);
            if !p.is_file() {
                fetch(m.name, home)?;
            }
            p
        }
    })
}
