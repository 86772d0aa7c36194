//! `kvbench perplexity`: the quality cost of a method measured without a task: perplexity of the
//! last tokens of a text, fed through the method's cache after a long prefill (so a quantized or
//! evicting cache is really what the model attends to).

use super::runtime_settings;
use crate::cli::PerplexityArgs;
use anyhow::{bail, Context, Result};
use kvcore::generate::perplexity;
use kvcore::sources::{kvbench_home, resolve_or_fetch};
use serde_json::json;

pub fn run(a: PerplexityArgs, plugins: &[std::path::PathBuf]) -> Result<()> {
    let reg = super::methods::registry(plugins)?;
    let params = kvcore::registry::parse_settings(&a.set)?;
    let factory = reg.build(&a.method, &params)?;
    if a.prefill == 0 || a.prefill >= a.tokens {
        bail!("--prefill {} must be at least 1 and below --tokens {}", a.prefill, a.tokens);
    }
    let (settings, threads) = runtime_settings(&a.runtime)?;
    let text = match &a.text_file {
        Some(f) => std::fs::read_to_string(f).with_context(|| format!("reading --text-file {}", f.display()))?,
        None => {
            let dir = kvtasks::data::data_dir("pg_essays").or_else(|_| kvtasks::data::fetch("pg_essays", &kvtasks::data::kvbench_home()?))?;
            let essays = kvtasks::needle::Essays::load(&dir)?;
            essays.files.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>().join("\n\n")
        }
    };
    let files = resolve_or_fetch(&a.model, &kvbench_home())?;
    let mut lm = super::load_guarded(&files, settings, &Default::default(), a.tokens, &a.runtime.guard)?;
    let enc = lm.tokenizer.encode(text.as_str(), true).map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
    let ids = enc.get_ids();
    if ids.len() < a.tokens {
        bail!("the text has {} tokens; --tokens {} asks for more", ids.len(), a.tokens);
    }
    if let Some(ctx) = lm.max_context().filter(|&c| a.tokens > c) {
        bail!("--tokens {} exceeds the model's context of {ctx}", a.tokens);
    }
    let out = perplexity(&mut lm, factory.as_ref(), &ids[..a.tokens], a.prefill, a.step, a.prefill_chunk)?;
    let ratio = if out.kv_bytes_held > 0 { out.kv_bytes_full as f64 / out.kv_bytes_held as f64 } else { 0.0 };
    if a.json {
        let v = json!({
            "method": a.method,
            "method_params": params,
            "model": files.path(),
            "prefill_tokens": out.prefill_tokens,
            "scored_tokens": out.scored_tokens,
            "nll": out.nll,
            "perplexity": out.perplexity,
            "kv_bytes_held": out.kv_bytes_held,
            "kv_bytes_full": out.kv_bytes_full,
            "compression_ratio": ratio,
            "seconds": out.seconds,
            "kv_dtype": settings.kv_dtype.name(),
            "threads": threads,
        });
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!(
            "{}: perplexity {:.4} over {} tokens after a {}-token prefill; KV held {:.1} MiB of {:.1} MiB full ({:.2}x, {} cache); {:.1}s",
            a.method,
            out.perplexity,
            out.scored_tokens,
            out.prefill_tokens,
            out.kv_bytes_held as f64 / 1048576.0,
            out.kv_bytes_full as f64 / 1048576.0,
            ratio,
            settings.kv_dtype.name(),
            out.seconds
        );
    }
    Ok(())
}
