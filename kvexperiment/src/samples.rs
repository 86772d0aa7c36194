//! A cell's samples: the task spec a cell stands for, the data sets it needs, the seeded subset
//! `fraction` keeps, and each sample as context and question token ids (middle-truncated to the
//! input limit), or as a prompt compressor rewrote it.

use anyhow::{bail, Context, Result};
use kvconfig::{Cell, Truncation};
use kvcore::loader::LoadedModel;
use kvformats::chat::ChatMessage;
use kvtasks::sample::{Sample, TextTokenizer};
use kvtasks::spec::TaskSpec;

/// The engine's tokenizer seen through the task generators' abstraction.
pub struct EngineTokenizer<'a>(pub &'a kvcore::lm_tokenizer::LmTokenizer);

impl TextTokenizer for EngineTokenizer<'_> {
    fn encode(&self, text: &str) -> Vec<u32> {
        self.0.encode(text, false).map(|e| e.get_ids().to_vec()).unwrap_or_default()
    }
    fn decode(&self, ids: &[u32]) -> String {
        self.0.decode(ids, false).unwrap_or_default()
    }
}

/// The task spec of a cell (its task config, with `kvbench task`'s defaults where it is silent).
pub fn task_spec(cell: &Cell) -> TaskSpec {
    let t = &cell.task_config;
    let d = TaskSpec::default();
    TaskSpec {
        task: t.task.clone(),
        lengths: t.lengths.clone(),
        steps: t.steps,
        depths: t.depths.unwrap_or(d.depths),
        trials: t.trials.unwrap_or(d.trials),
        digits: t.digits.unwrap_or(d.digits),
        samples: t.samples.unwrap_or(d.samples),
        seed: cell.seed,
        limit: t.limit,
    }
}

/// The offline data sets a task is built from (fetched on first use, sha256-checked).
pub fn datasets_for(task: &str) -> Vec<&'static str> {
    if task == "passkey" || task == "kamradt" {
        vec!["pg_essays"]
    } else if task.starts_with("ruler/") {
        vec!["pg_essays", "wonderwords"]
    } else if task == "code" {
        vec!["gguf_py"]
    } else if let Some(c) = task.strip_prefix("retrieval/").or_else(|| task.strip_prefix("count/")) {
        match c {
            "sotu" => vec!["sotu"],
            "moby_dick" => vec!["moby_dick"],
            "kjv" => vec!["kjv"],
            _ => vec![],
        }
    } else {
        vec![]
    }
}

/// How many of `n` samples a `fraction` keeps (at least one).
pub fn fraction_keep(n: usize, fraction: f64) -> usize {
    ((n as f64 * fraction).ceil() as usize).clamp(1, n.max(1))
}

/// A deterministic subset: the `fraction` of samples whose seeded hash of their id is smallest,
/// in their original order.
pub fn select_fraction(samples: Vec<Sample>, fraction: f64, seed: u64) -> Vec<Sample> {
    let keep = fraction_keep(samples.len(), fraction);
    let mut keyed: Vec<(String, usize)> =
        samples.iter().enumerate().map(|(i, s)| (hex::encode(<sha2::Sha256 as sha2::Digest>::digest(format!("{seed}:{}", s.id).as_bytes())), i)).collect();
    keyed.sort();
    let mut chosen: Vec<usize> = keyed.into_iter().take(keep).map(|(_, i)| i).collect();
    chosen.sort_unstable();
    let mut out = Vec::new();
    let mut it = samples.into_iter().enumerate();
    for c in chosen {
        for (i, s) in it.by_ref() {
            if i == c {
                out.push(s);
                break;
            }
        }
    }
    out
}

/// Context and question token ids of a sample (question empty when it has none), truncated in
/// the middle of the context to `limit` input tokens.
pub fn encode_sample(lm: &LoadedModel, s: &Sample, chat: bool, limit: usize, truncation: Truncation) -> Result<(Vec<u32>, Vec<u32>)> {
    let mut text = if chat {
        let tpl = lm.chat_template.as_ref().context("this model has no chat template")?;
        tpl.render(&[ChatMessage { role: "user".into(), content: s.prompt() }], true)?
    } else {
        s.prompt()
    };
    if let Some(p) = &s.answer_prefix {
        text.push_str(p);
    }
    let cut = if s.question.trim().is_empty() { None } else { text.rfind(s.question.as_str()) };
    let tok =
        |t: &str, special: bool| -> Result<Vec<u32>> { Ok(lm.tokenizer.encode(t, special).map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?.get_ids().to_vec()) };
    let (mut ctx, q) = match cut {
        Some(c) => (tok(&text[..c], !chat)?, tok(&text[c..], false)?),
        None => (tok(&text, !chat)?, vec![]),
    };
    if ctx.len() + q.len() > limit {
        if truncation == Truncation::Error {
            bail!("sample {} has {} input tokens, over the limit of {limit} (truncation = \"error\")", s.id, ctx.len() + q.len());
        }
        let room = limit
            .checked_sub(q.len())
            .filter(|&r| r >= 2)
            .with_context(|| format!("sample {}: the question alone ({} tokens) does not fit {limit}", s.id, q.len()))?;
        let head = room / 2;
        let tail = room - head;
        let mut cutv = ctx[..head].to_vec();
        cutv.extend_from_slice(&ctx[ctx.len() - tail..]);
        ctx = cutv;
    }
    Ok((ctx, q))
}

/// The sample a prompt compressor leaves, and the seconds it took: the whole input for the
/// passkey task (as the paper runs LLMLingua-2 there), else only the context (LongBench's
/// `context` field; instruction and question stay intact).
pub fn compress_sample(comp: &dyn kvcore::prompt::PromptCompressor, s: &Sample) -> Result<(Sample, f64)> {
    Ok(compress_sample_rates(comp, s, &[comp.rate()])?.remove(0))
}

/// [`compress_sample`] at each of `rates` from one scoring pass of `comp` (see
/// [`kvcore::prompt::PromptCompressor::compress_rates`]).
pub fn compress_sample_rates(comp: &dyn kvcore::prompt::PromptCompressor, s: &Sample, rates: &[f64]) -> Result<Vec<(Sample, f64)>> {
    let passkey = s.scoring == kvtasks::sample::ScoringKind::Passkey;
    let text = if passkey { s.prompt() } else { s.context.clone() };
    let compressed = comp.compress_rates(&text, rates)?;
    Ok(compressed
        .into_iter()
        .map(|c| {
            let mut out = s.clone();
            if passkey {
                out.prefix_instruction = None;
                out.question = String::new();
            }
            out.context = c.text;
            (out, c.seconds)
        })
        .collect())
}
