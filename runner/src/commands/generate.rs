//! `kvbench generate`: one prompt in, text out, with the speed and memory figures every
//! benchmark cell reports (same keys in `--json`).

use super::runtime_settings;
use crate::cli::GenerateArgs;
use anyhow::{bail, Context, Result};
use kvcore::cache::FullCacheFactory;
use kvcore::generate::{all_logits, generate, GenerateOptions};
use kvcore::loader::LoadedModel;
use kvcore::sources::{kvbench_home, resolve_or_fetch};
use kvformats::chat::ChatMessage;
use serde_json::json;

/// Encodes `text` (plain or as a chat), applying the context check or middle truncation.
pub fn encode_prompt(lm: &LoadedModel, text: &str, chat: bool, system: Option<&str>, reserve: usize, truncate: bool) -> Result<Vec<u32>> {
    let rendered;
    let prompt = if chat {
        let tpl = lm.chat_template.as_ref().context("--chat: this model has no chat template")?;
        let mut msgs = Vec::new();
        if let Some(s) = system {
            msgs.push(ChatMessage { role: "system".into(), content: s.into() });
        }
        msgs.push(ChatMessage { role: "user".into(), content: text.into() });
        rendered = tpl.render(&msgs, true)?;
        rendered.as_str()
    } else {
        text
    };
    // A rendered chat already carries its special tokens; plain prompts get the tokenizer's own.
    let enc = lm.tokenizer.encode(prompt, !chat).map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
    let mut ids = enc.get_ids().to_vec();
    let ctx = lm.max_context().unwrap_or(usize::MAX);
    if ids.len() + reserve > ctx {
        if !truncate {
            return Err(kvcore::Error::PromptTooLong { prompt_tokens: ids.len(), context: ctx, reserved: reserve }.into());
        }
        let budget = ctx.saturating_sub(reserve);
        if budget < 2 {
            bail!("--max-new-tokens {reserve} leaves no room for the prompt in a {ctx}-token context");
        }
        let head = budget / 2;
        let tail = budget - head;
        let mut cut = ids[..head].to_vec();
        cut.extend_from_slice(&ids[ids.len() - tail..]);
        tracing::warn!("prompt truncated from {} to {} tokens (middle removed)", ids.len(), cut.len());
        ids = cut;
    }
    Ok(ids)
}

/// The prompt's last-position logits as a decode step computes them: all but the last token
/// prefilled into a full cache, then the last one decoded (through the decode kernel where it
/// applies), so that `--weight-dtype`'s error covers the path decoding takes.
fn last_logits_decoded(lm: &mut kvcore::loader::LoadedModel, ids: &[u32]) -> Result<tch::Tensor> {
    let _guard = tch::no_grad_guard();
    let n = ids.len();
    anyhow::ensure!(n > 0, "an empty prompt has no logits");
    let mut seq = kvcore::generate::new_sequence(lm, &FullCacheFactory, n, None)?;
    if n > 1 {
        let _prefix = kvcore::generate::forward_sequence(lm, &mut seq, &ids[..n - 1], 0, None, false)?;
    }
    Ok(kvcore::generate::forward_sequence(lm, &mut seq, &ids[n - 1..], n - 1, None, false)?.to_kind(tch::Kind::Float).reshape([-1]))
}

pub fn run(a: GenerateArgs, plugins: &[std::path::PathBuf]) -> Result<()> {
    let reg = super::methods::registry(plugins)?;
    let method_params = kvcore::registry::parse_settings(&a.set)?;
    let factory = reg.build(&a.method, &method_params)?;
    let (settings, threads) = runtime_settings(&a.runtime)?;
    let text = match (&a.prompt, &a.prompt_file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => std::fs::read_to_string(f).with_context(|| format!("reading --prompt-file {}", f.display()))?,
        (None, None) => bail!("give --prompt or --prompt-file"),
    };
    // A prompt compressor shortens the text (the context, when questions are given) first.
    let compressed = match reg.build_prompt(&a.method, &method_params)? {
        Some(c) => Some(c.compress(&text).with_context(|| format!("compressing the prompt with {}", a.method))?),
        None => None,
    };
    let text = compressed.as_ref().map(|c| c.text.clone()).unwrap_or(text);
    let files = resolve_or_fetch(&a.model, &kvbench_home())?;
    // The prompt's tokens are not known before the tokenizer loads; its length in bytes bounds them.
    let context = text.len().saturating_add(a.max_new_tokens).saturating_add(64);
    let mut lm = super::load_guarded(&files, settings, &Default::default(), context, &a.runtime.guard)?;
    tracing::info!("loaded {} in {:.1}s", files.path().display(), lm.load_seconds);
    let (ids, questions) = if a.question.is_empty() {
        (encode_prompt(&lm, &text, a.chat, a.system.as_deref(), a.max_new_tokens, a.truncate)?, vec![])
    } else {
        split_context_questions(&lm, &text, &a)?
    };

    // 16-bit weight storage; with --json, how far it moves the prompt's last logits from f32's.
    let weight_logit_error = match a.weight_dtype.filter(|w| *w != kvcore::device::DType::F32) {
        Some(w) => {
            let reference = if a.json { Some(last_logits_decoded(&mut lm, &ids)?) } else { None };
            lm.store_weights_as(w).context("--weight-dtype")?;
            match reference {
                Some(r) => Some((last_logits_decoded(&mut lm, &ids)? - r).abs().max().double_value(&[])),
                None => None,
            }
        }
        None => None,
    };
    if let Some(path) = &a.dump_logits {
        let logits = all_logits(&mut lm, &ids, &FullCacheFactory)?;
        let logits = if a.all_positions { logits } else { logits.get(logits.size()[0] - 1) };
        write_logits(&logits, path)?;
    }
    let opts = GenerateOptions {
        max_new_tokens: a.max_new_tokens,
        min_new_tokens: a.min_new_tokens,
        penalties: a.penalties.as_deref().and_then(kvcore::generate::Penalties::by_name),
        stop_strings: a.stop.clone(),
        prefill_chunk: a.prefill_chunk,
        measure_decode_rss: a.decode_peak_rss || a.prefill_peak_rss,
        ..Default::default()
    };
    // The load's peak, kept for `peak_rss_bytes`; from here the counter measures the prompt.
    let load_peak = if a.prefill_peak_rss {
        let p = kvcore::memory::peak_rss_bytes();
        kvcore::memory::release_free_memory();
        kvcore::memory::reset_peak_rss();
        p
    } else {
        None
    };
    let outs = if questions.is_empty() {
        vec![generate(&mut lm, &ids, &opts, factory.as_ref())?]
    } else {
        let popts = kvcore::pipeline::PipelineOptions { query_aware: a.query_aware };
        kvcore::pipeline::answer(&mut lm, &ids, &questions, &opts, popts, factory.as_ref())?
    };
    let peak = kvcore::memory::peak_rss_bytes();
    for out in outs {
        let peak = [out.peak_rss_prefill_bytes, peak, load_peak].into_iter().flatten().max();
        if a.json {
            let v = json!({
                "text": out.text,
                "prompt_tokens": out.prompt_tokens,
                "generated_tokens": out.generated_tokens,
                "stop_reason": out.stop_reason,
                "prefill_seconds": out.prefill_seconds,
                "prefill_tokens_per_s": out.prefill_tokens_per_s(),
                "decode_seconds": out.decode_seconds,
                "decode_tokens_per_s": out.decode_tokens_per_s(),
                "kv_bytes_held": out.kv_bytes_held,
                "kv_bytes_attended": out.kv_bytes_attended,
                "kv_bytes_allocated": out.kv_bytes_allocated,
                "kv_bytes_full": out.kv_bytes_full,
                "kv_bytes_held_prompt": out.kv_bytes_held_prompt,
                "kv_bytes_full_prompt": out.kv_bytes_full_prompt,
                "kv_bytes_offloaded": out.kv_bytes_offloaded,
                "compression_ratio": out.compression_ratio(),
                "compression_ratio_prompt": if out.kv_bytes_held_prompt > 0 { out.kv_bytes_full_prompt as f64 / out.kv_bytes_held_prompt as f64 } else { 0.0 },
                "prompt_compression": &compressed.as_ref().map(|c| json!({"original_tokens": c.original_tokens, "compressed_tokens": c.compressed_tokens, "seconds": c.seconds})),
                "method": &a.method,
                "method_params": &method_params,
                "query_aware": a.query_aware,
                "peak_rss_prefill_bytes": out.peak_rss_prefill_bytes,
                "peak_rss_decode_bytes": out.peak_rss_decode_bytes,
                "rss_end_bytes": out.rss_end_bytes,
                "peak_rss_bytes": peak,
                "weight_bytes": lm.weight_bytes(),
                "architecture": lm.architecture(),
                "load_seconds": lm.load_seconds,
                "model": files.path(),
                "device": kvcore::device::describe(settings.device),
                "dtype": settings.dtype.name(),
                "kv_dtype": settings.kv_dtype.name(),
                "weight_dtype": a.weight_dtype.unwrap_or(settings.dtype).name(),
                "weight_logit_error": weight_logit_error,
                "threads": threads,
                "token_ids": out.token_ids,
            });
            println!("{}", serde_json::to_string(&v)?);
        } else {
            println!("{}", out.text);
            if a.stats {
                if let Some(c) = &compressed {
                    eprintln!(
                        "prompt compressed by {}: {} -> {} tokens ({:.2}x) in {:.2}s",
                        a.method,
                        c.original_tokens,
                        c.compressed_tokens,
                        c.ratio(),
                        c.seconds
                    );
                }
                let attended =
                    if out.kv_bytes_attended != out.kv_bytes_held { format!(" ({} attended)", human_bytes(out.kv_bytes_attended)) } else { String::new() };
                eprintln!(
                    "prompt {} tokens, prefill {:.2}s ({:.1} tok/s); generated {} tokens, decode {:.1} tok/s; KV {} held{attended} / {} full; peak RSS {}",
                    out.prompt_tokens,
                    out.prefill_seconds,
                    out.prefill_tokens_per_s(),
                    out.generated_tokens,
                    out.decode_tokens_per_s(),
                    human_bytes(out.kv_bytes_held),
                    human_bytes(out.kv_bytes_full),
                    peak.map(human_bytes).unwrap_or_else(|| "n/a".into()),
                );
            }
        }
    }
    Ok(())
}

/// Tokenises a context and its questions so the split falls exactly where each question starts
/// (with --chat, the user message is the context, a blank line, then the question).
fn split_context_questions(lm: &LoadedModel, context: &str, a: &GenerateArgs) -> Result<(Vec<u32>, Vec<Vec<u32>>)> {
    let mut ctx_ids: Option<Vec<u32>> = None;
    let mut qs = Vec::new();
    for q in &a.question {
        let whole = if a.chat {
            let tpl = lm.chat_template.as_ref().context("--chat: this model has no chat template")?;
            let mut msgs = Vec::new();
            if let Some(s) = &a.system {
                msgs.push(ChatMessage { role: "system".into(), content: s.clone() });
            }
            msgs.push(ChatMessage { role: "user".into(), content: format!("{context}\n\n{q}") });
            tpl.render(&msgs, true)?
        } else {
            format!("{context}\n\n{q}")
        };
        let cut = whole.rfind(q.as_str()).context("question not found in the rendered prompt")?;
        let c = lm.tokenizer.encode(&whole[..cut], !a.chat).map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?.get_ids().to_vec();
        let qi = lm.tokenizer.encode(&whole[cut..], false).map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?.get_ids().to_vec();
        if let Some(prev) = &ctx_ids {
            if *prev != c {
                bail!("--question: the context tokenises differently for different questions");
            }
        }
        let ctx = lm.max_context().unwrap_or(usize::MAX);
        if c.len() + qi.len() + a.max_new_tokens > ctx {
            return Err(kvcore::Error::PromptTooLong { prompt_tokens: c.len() + qi.len(), context: ctx, reserved: a.max_new_tokens }.into());
        }
        ctx_ids = Some(c);
        qs.push(qi);
    }
    Ok((ctx_ids.unwrap_or_default(), qs))
}

fn write_logits(t: &tch::Tensor, path: &std::path::Path) -> Result<()> {
    let t = t.to_device(tch::Device::Cpu).contiguous();
    match path.extension().and_then(|e| e.to_str()) {
        Some("npy") => t.write_npy(path)?,
        Some("safetensors") => tch::Tensor::write_safetensors(&[("logits", &t)], path)?,
        _ => bail!("--dump-logits {}: expected a .npy or .safetensors file name", path.display()),
    }
    Ok(())
}

/// Bytes in KiB/MiB/GiB for people.
pub fn human_bytes(b: u64) -> String {
    let b = b as f64;
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", b / (1024.0 * 1024.0 * 1024.0))
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b} B")
    }
}
