//! Selective-Context style prompt compression that runs offline: a small causal LM (SmolLM2 by
//! default) scores each word's self-information, and the least informative words are dropped.
//!
//! Method (Li et al., "Compressing Context to Enhance Inference Efficiency of Large Language
//! Models", EMNLP 2023; the token-level variant of LLMLingua-1 works the same way): every token's
//! self-information `-ln p(token | preceding text)` is computed with the scorer LM over the whole
//! text (chunked, full cache); a lexical unit's information is the sum over its tokens; units are
//! kept, most informative first (Selective-Context's ranking), while they fit in `rate` of the
//! text's tokens; the kept units are joined in their original order.
//!
//! Deviations, on purpose: units are whitespace-delimited words (with their leading whitespace),
//! not spaCy noun phrases, so no NLP pipeline is needed; and the budget is counted in scorer
//! tokens (the paper's rate semantics, `ratio = N` keeps about 1/N of the tokens) instead of
//! Selective-Context's percentile of units, so the rate is met within a few percent. The first
//! word is always kept (its first token has no context to be scored against).

use kvcore::device::{DeviceSpec, RuntimeSettings};
use kvcore::loader::LoadedModel;
use kvcore::prompt::{rate_param, CompressedPrompt, PromptCompressor, PromptRegistration};
use kvcore::registry::{MethodError, ParamDoc, Params};
use std::sync::{Arc, Mutex};

/// A lexical unit: a byte range of the text (leading whitespace + one word).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unit {
    pub start: usize,
    pub end: usize,
}

/// Splits `text` into units that tile it: each is the whitespace before a word plus the word;
/// whitespace at the very end joins the last unit.
pub fn split_units(text: &str) -> Vec<Unit> {
    let mut units = Vec::new();
    let mut start = 0;
    let mut in_word = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            if in_word {
                units.push(Unit { start, end: i });
                start = i;
                in_word = false;
            }
        } else {
            in_word = true;
        }
    }
    if start < text.len() {
        match (in_word, units.last_mut()) {
            (false, Some(last)) => last.end = text.len(),
            _ => units.push(Unit { start, end: text.len() }),
        }
    }
    units
}

/// Chooses which units to keep: `info[u]` is unit `u`'s self-information, `tokens[u]` its token
/// count, `force[u]` keeps it regardless. Units are taken by information, highest first, each
/// while it still fits in `budget` tokens (forced units count against the budget too), so the
/// budget is filled closely even when a long unit is skipped.
pub fn select_units(info: &[f64], tokens: &[usize], force: &[bool], budget: usize) -> Vec<bool> {
    let mut keep = force.to_vec();
    let mut used: usize = tokens.iter().zip(force).filter(|(_, &f)| f).map(|(t, _)| *t).sum();
    let mut order: Vec<usize> = (0..info.len()).filter(|&u| !force[u] && tokens[u] > 0).collect();
    order.sort_by(|&a, &b| info[b].total_cmp(&info[a]).then(a.cmp(&b)));
    for u in order {
        if used >= budget {
            break;
        }
        if used + tokens[u] <= budget {
            keep[u] = true;
            used += tokens[u];
        }
    }
    keep
}

/// The compressor: the scorer model is loaded on first use.
pub struct SelectiveContext {
    rate: f64,
    scorer: String,
    device: DeviceSpec,
    chunk: usize,
    /// The scorer, shared with every instance of the same scorer and device once loaded.
    lm: Mutex<Option<Arc<Mutex<LoadedModel>>>>,
}

impl SelectiveContext {
    /// Runs `f` on the scorer, loading it on first use. Every instance with the same scorer and
    /// device uses one loaded copy ([`kvcore::prompt::shared_model`]): a grid builds one instance
    /// per cell and rate.
    fn with_model<T>(&self, f: impl FnOnce(&mut LoadedModel) -> kvcore::Result<T>) -> kvcore::Result<T> {
        let shared = {
            let mut held = self.lm.lock().unwrap_or_else(|p| p.into_inner());
            if held.is_none() {
                let key = format!("selective-context scorer={} device={}", self.scorer, self.device);
                *held = Some(kvcore::prompt::shared_model(&key, || {
                    let home = kvcore::sources::kvbench_home();
                    let files = kvcore::sources::resolve_or_fetch(&self.scorer, &home)?;
                    let settings = RuntimeSettings::resolve(self.device, None, None)?;
                    kvcore::loader::load(&files, settings)
                })?);
            }
            Arc::clone(held.as_ref().expect("set above"))
        };
        let mut lm = shared.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut lm)
    }
}

fn tokenizer_err(e: impl std::fmt::Display) -> kvcore::Error {
    kvcore::Error::Tokenizer(e.to_string())
}

impl PromptCompressor for SelectiveContext {
    fn name(&self) -> &str {
        "selective-context"
    }
    fn rate(&self) -> f64 {
        self.rate
    }
    fn compress(&self, text: &str) -> kvcore::Result<CompressedPrompt> {
        Ok(self.compress_rates(text, &[self.rate])?.remove(0))
    }
    fn scoring_key(&self) -> Option<String> {
        Some(format!("selective-context scorer={} device={} chunk={}", self.scorer, self.device, self.chunk))
    }
    /// One self-information pass, then a selection per rate.
    fn compress_rates(&self, text: &str, rates: &[f64]) -> kvcore::Result<Vec<CompressedPrompt>> {
        let chunk = self.chunk;
        self.with_model(|lm| {
            let t0 = std::time::Instant::now();
            let enc = lm.tokenizer.encode(text, false).map_err(tokenizer_err)?;
            let ids = enc.get_ids().to_vec();
            let units = split_units(text);
            if ids.is_empty() || units.is_empty() {
                let seconds = t0.elapsed().as_secs_f64();
                return Ok(rates
                    .iter()
                    .map(|_| CompressedPrompt { text: text.to_string(), original_tokens: ids.len(), compressed_tokens: ids.len(), seconds })
                    .collect());
            }
            let surprisal = kvcore::generate::token_surprisal(lm, &ids, chunk)?;
            // Each token belongs to the unit holding its first byte.
            let mut info = vec![0f64; units.len()];
            let mut tokens = vec![0usize; units.len()];
            let mut force = vec![false; units.len()];
            let mut u = 0;
            for (i, &(start, _)) in enc.get_offsets().iter().enumerate() {
                while u + 1 < units.len() && start >= units[u].end {
                    u += 1;
                }
                tokens[u] += 1;
                if i == 0 {
                    force[u] = true;
                } else {
                    info[u] += f64::from(surprisal[i - 1]);
                }
            }
            let scoring = t0.elapsed().as_secs_f64();
            let mut out = Vec::with_capacity(rates.len());
            for &rate in rates {
                let t1 = std::time::Instant::now();
                let budget = (rate * ids.len() as f64).round() as usize;
                let keep = select_units(&info, &tokens, &force, budget);
                let mut kept = String::with_capacity(text.len());
                for (unit, k) in units.iter().zip(&keep) {
                    if *k {
                        kept.push_str(&text[unit.start..unit.end]);
                    }
                }
                let compressed_tokens = lm.tokenizer.encode(kept.as_str(), false).map_err(tokenizer_err)?.get_ids().len();
                out.push(CompressedPrompt { text: kept, original_tokens: ids.len(), compressed_tokens, seconds: scoring + t1.elapsed().as_secs_f64() });
            }
            Ok(out)
        })
    }
}

fn build(t: &toml::Table) -> Result<Arc<dyn PromptCompressor>, MethodError> {
    let mut p = Params::new("selective-context", t);
    let rate = rate_param(&mut p, 4.0)?;
    let scorer: String = p.get("scorer", "smollm2-135m".to_string(), "a model name or path (as `kvbench generate --model` takes)")?;
    let device_s: String = p.get("device", "cpu".to_string(), "cpu, cuda, cuda:N or auto")?;
    let device = device_s.parse::<DeviceSpec>().map_err(|_| MethodError::BadParam {
        method: "selective-context".into(),
        key: "device".into(),
        value: format!("{device_s:?}"),
        expected: "cpu, cuda, cuda:N or auto".into(),
    })?;
    let chunk = p.int("chunk", 512, 16, 1 << 16)?;
    p.finish()?;
    Ok(Arc::new(SelectiveContext { rate, scorer, device, chunk, lm: Mutex::new(None) }))
}

inventory::submit! {
    PromptRegistration {
        name: "selective-context",
        family: "selective-context",
        summary: "prompt compression: drop the words a small LM finds least informative (Selective-Context / LLMLingua-1 style; offline)",
        detail: "Li et al., EMNLP 2023 (Selective-Context); the token-level self-information pruning LLMLingua-1 also builds on.\n\
Every token's self-information -ln p(token | preceding text) is computed with the scorer LM (SmolLM2-135M by default, which works offline) over the whole text, in chunks of `chunk` tokens with a full cache. A word's information is the sum over its tokens; words are kept by information, highest first, while they fit in 1/N of the text's tokens (ratio = N); kept words are joined in their original order, each with its leading whitespace.\n\
Applied to the part of a sample the paper compresses with LLMLingua-2: LongBench's context field, or the whole input for the passkey task. The model under test then runs with the full cache over the shorter prompt; records report the original and compressed token counts, and the compression time is counted in the prefill time.\n\
Deviations: words instead of spaCy noun phrases; the budget is a token count (rate semantics as LLMLingua-2), not a percentile of units. The scorer's weights add to the process memory (about 0.55 GB for SmolLM2 in f32).",
        params: &[
            ParamDoc { name: "ratio", default: "4", help: "keep about 1/N of the prompt's tokens" },
            ParamDoc { name: "scorer", default: "smollm2-135m", help: "the causal LM that scores self-information (a model name or path)" },
            ParamDoc { name: "device", default: "cpu", help: "where the scorer runs: cpu, cuda, cuda:N or auto" },
            ParamDoc { name: "chunk", default: "512", help: "tokens per scoring forward pass" },
        ],
        build,
    }
}
