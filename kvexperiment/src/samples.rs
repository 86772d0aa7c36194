//! A cell's samples: the task spec a cell stands for, the data sets it needs, the seeded subset
//! `fraction` keeps, and each sample as context and question token ids (middle-truncated to the
//! input limit), or as a prompt compressor rewrote it.

use anyhow::{bail, Context, Result};
use kvconfig::{Cell, Truncation};
use kvcore::loader::LoadedModel;
use kvtasks::sample::{Sample, TextTokenizer};
use kvtasks::spec::TaskSpec;

/// The engine's tokenizer seen through the task generators' abstraction, with the chat template
/// the run reads samples through (`None`: plain), so that a generator sizing its input to a
/// token budget counts the template's tokens ([`TextTokenizer::count_input`]).
pub struct EngineTokenizer<'a> {
    pub tokenizer: &'a kvcore::lm_tokenizer::LmTokenizer,
    pub chat: Option<&'a kvformats::chat::ChatTemplate>,
}

impl<'a> EngineTokenizer<'a> {
    /// The model's tokenizer; samples sized with `chat` when it is `Some`.
    pub fn new(lm: &'a LoadedModel, chat: bool) -> Self {
        EngineTokenizer { tokenizer: &lm.tokenizer, chat: if chat { lm.chat_template.as_ref() } else { None } }
    }
}

impl TextTokenizer for EngineTokenizer<'_> {
    fn encode(&self, text: &str) -> Vec<u32> {
        self.tokenizer.encode(text, false).map(|e| e.get_ids().to_vec()).unwrap_or_default()
    }
    fn decode(&self, ids: &[u32]) -> String {
        self.tokenizer.decode(ids, false).unwrap_or_default()
    }
    fn count_input(&self, sample: &Sample) -> usize {
        // A template that fails to render here fails again, with its error, when the sample is
        // encoded; sizing falls back to the plain text meanwhile.
        self.count(&sample.input_text(self.chat).unwrap_or_else(|_| sample.plain_input()))
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
    let ids: Vec<&str> = samples.iter().map(|s| s.id.as_str()).collect();
    let chosen = fraction_indices(&ids, fraction, seed);
    samples.into_iter().enumerate().filter(|(i, _)| chosen.contains(i)).map(|(_, s)| s).collect()
}

/// The positions in `ids` of [`select_fraction`]'s choice.
pub fn fraction_indices(ids: &[&str], fraction: f64, seed: u64) -> std::collections::BTreeSet<usize> {
    let keep = fraction_keep(ids.len(), fraction);
    let mut keyed: Vec<(String, usize)> =
        ids.iter().enumerate().map(|(i, id)| (hex::encode(<sha2::Sha256 as sha2::Digest>::digest(format!("{seed}:{id}").as_bytes())), i)).collect();
    keyed.sort();
    keyed.into_iter().take(keep).map(|(_, i)| i).collect()
}

/// A task's samples, or with `fraction` the [`select_fraction`] of them, building only those
/// when the task's ids are known beforehand ([`TaskSpec::sample_ids`]): a one-sample
/// probe of a generated task then tokenizes one sample, not all of them.
pub fn build_samples(spec: &TaskSpec, tok: &dyn TextTokenizer, fraction: Option<f64>, seed: u64) -> Result<Vec<Sample>, kvtasks::sample::TaskError> {
    let Some(f) = fraction else { return spec.build(tok) };
    match spec.sample_ids()? {
        Some(ids) => {
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            let chosen: std::collections::BTreeSet<&str> = fraction_indices(&refs, f, seed).into_iter().map(|i| refs[i]).collect();
            spec.build_where(tok, &|id| chosen.contains(id))
        }
        None => Ok(select_fraction(spec.build(tok)?, f, seed)),
    }
}

/// A built-in conversation format ([`kvformats::chat::ChatTemplate::builtin`]) as `lm`'s chat
/// template. Its BOS text is the token the tokenizer prepends to an encoded input (fastchat leaves
/// BOS to the tokenizer; a rendered template is encoded without added special tokens).
pub fn builtin_chat_template(lm: &LoadedModel, format: &str) -> Result<kvformats::chat::ChatTemplate> {
    let bos = lm.tokenizer.encode("", true).ok().and_then(|e| e.get_ids().first().copied()).and_then(|id| lm.tokenizer.id_to_token(id));
    Ok(kvformats::chat::ChatTemplate::builtin(format, bos)?)
}

/// The newline token that ends LongBench samsum's answers: the last id of `"\n"` encoded, as
/// THUDM's `pred.py` takes it (`None` if the tokenizer encodes it as nothing).
pub fn newline_stop_id(lm: &LoadedModel) -> Option<u32> {
    lm.tokenizer.encode("\n", false).ok().and_then(|e| e.get_ids().last().copied())
}

/// Applies a sample's own stop rule to `opts`. LongBench's samsum (`metadata.stop_at_newline`)
/// stops as `pred.py` does: the newline token ([`newline_stop_id`]) ends generation like EOS,
/// and neither may end it before one token is generated (`min_length = context_length + 1`).
pub fn apply_stop_rules(s: &Sample, newline: Option<u32>, opts: &mut kvcore::generate::GenerateOptions) -> Result<()> {
    if s.metadata.get("stop_at_newline").and_then(|v| v.as_bool()) == Some(true) {
        let id = newline.with_context(|| format!("sample {} stops at a newline, which this tokenizer encodes as no token", s.id))?;
        if !opts.extra_stop_token_ids.contains(&id) {
            opts.extra_stop_token_ids.push(id);
        }
        opts.min_new_tokens = opts.min_new_tokens.max(1);
    }
    Ok(())
}

/// Context and question token ids of a sample (question empty when it has none), truncated in
/// the middle of the context to `limit` input tokens.
pub fn encode_sample(lm: &LoadedModel, s: &Sample, chat: bool, limit: usize, truncation: Truncation) -> Result<(Vec<u32>, Vec<u32>)> {
    let tpl = if chat { Some(lm.chat_template.as_ref().context("this model has no chat template")?) } else { None };
    let text = s.input_text(tpl)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(stop_at_newline: Option<bool>) -> Sample {
        let mut metadata = std::collections::BTreeMap::new();
        if let Some(b) = stop_at_newline {
            metadata.insert("stop_at_newline".to_string(), serde_json::json!(b));
        }
        Sample {
            id: "s".into(),
            task: "longbench/samsum".into(),
            examples: Vec::new(),
            prefix_instruction: None,
            context: "c".into(),
            question: String::new(),
            answer_prefix: None,
            answers: vec!["a".into()],
            scoring: kvtasks::sample::ScoringKind::Passkey,
            max_new_tokens: 128,
            metadata,
        }
    }

    #[test]
    fn samsum_stops_at_the_newline_token_after_at_least_one_token() {
        let mut o = kvcore::generate::GenerateOptions::default();
        apply_stop_rules(&sample(Some(true)), Some(198), &mut o).unwrap();
        assert_eq!((o.extra_stop_token_ids.clone(), o.min_new_tokens), (vec![198], 1));
        // Applying twice adds nothing.
        apply_stop_rules(&sample(Some(true)), Some(198), &mut o).unwrap();
        assert_eq!(o.extra_stop_token_ids, vec![198]);
        for s in [sample(None), sample(Some(false))] {
            let mut o = kvcore::generate::GenerateOptions::default();
            apply_stop_rules(&s, Some(198), &mut o).unwrap();
            assert!(o.extra_stop_token_ids.is_empty() && o.min_new_tokens == 0);
        }
        let err = apply_stop_rules(&sample(Some(true)), None, &mut kvcore::generate::GenerateOptions::default()).unwrap_err();
        assert!(err.to_string().contains("stops at a newline"), "{err}");
    }

    #[test]
    fn a_fraction_built_from_ids_is_the_fraction_of_the_full_build() {
        // The tasks' data come from `kvbench data fetch`: the RULER essays and the code package.
        for task in ["ruler/niah_single_1", "code"] {
            let spec = TaskSpec { task: task.into(), lengths: vec![2048], samples: 40, seed: 9, ..TaskSpec::default() };
            let tok = kvtasks::sample::ByteTokenizer;
            let all = spec.build(&tok).unwrap();
            for f in [0.0025, 0.1, 0.5] {
                let by_ids = build_samples(&spec, &tok, Some(f), 42).unwrap();
                let reference = select_fraction(all.clone(), f, 42);
                assert_eq!(kvtasks::sample::to_jsonl(&by_ids).unwrap(), kvtasks::sample::to_jsonl(&reference).unwrap(), "{task} at {f}");
                assert_eq!(by_ids.len(), fraction_keep(40, f));
            }
        }
    }
}
