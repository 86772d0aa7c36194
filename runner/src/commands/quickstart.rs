//! `kvbench quickstart`: the first thing a newcomer runs. Fetches the default model on first use,
//! answers a few prompts with the full cache, and prints each answer with its speed and memory.

use super::generate::{encode_prompt, human_bytes};
use super::runtime_settings;
use crate::cli::QuickstartArgs;
use anyhow::{Context, Result};
use kvcore::cache::FullCacheFactory;
use kvcore::generate::{generate, GenerateOptions};
use kvcore::loader::load;
use kvcore::sources::{kvbench_home, resolve_or_fetch};

const PROMPTS: &[&str] = &[
    "What is the capital of France?",
    "Name three primary colors.",
    "Write one sentence about the sea.",
];

pub fn run(a: QuickstartArgs) -> Result<()> {
    let (settings, threads) = runtime_settings(&a.runtime)?;
    let files = resolve_or_fetch(&a.model, &kvbench_home())?;
    let mut lm = load(&files, settings).with_context(|| format!("loading {}", files.path().display()))?;
    println!(
        "model {} ({} layers, {} KV heads) on {}, {} compute, {} cache, {threads} threads; loaded in {:.1}s",
        files.path().display(),
        lm.model.config.num_hidden_layers,
        lm.model.config.num_key_value_heads,
        kvcore::device::describe(settings.device),
        settings.dtype.name(),
        settings.kv_dtype.name(),
        lm.load_seconds
    );
    println!("{:<36} | {:>6} | {:>9} | {:>8} | {:>10} | answer", "prompt", "tokens", "prefill/s", "decode/s", "KV held");
    for p in PROMPTS {
        let ids = encode_prompt(&lm, p, true, None, 48, false)?;
        let opts = GenerateOptions { max_new_tokens: 48, ..Default::default() };
        let out = generate(&mut lm, &ids, &opts, &FullCacheFactory)?;
        println!(
            "{:<36} | {:>6} | {:>9.1} | {:>8.1} | {:>10} | {}",
            p,
            out.prompt_tokens,
            out.prefill_tokens_per_s(),
            out.decode_tokens_per_s(),
            human_bytes(out.kv_bytes_held),
            out.text.trim().replace('\n', " ")
        );
    }
    if let Some(peak) = kvcore::memory::peak_rss_bytes() {
        println!("peak RSS {}", human_bytes(peak));
    }
    Ok(())
}
