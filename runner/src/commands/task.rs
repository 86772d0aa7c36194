//! `kvbench task eval|dump`: builds a task's samples (the paper's passkey needle, Kamradt's needle,
//! RULER-style tasks, real-text tasks), runs a model over them with the full cache, scores the
//! answers, and prints per-sample results and means with a 95% confidence interval; predictions
//! go to a JSONL file that later runs and reports can read.

use super::generate::human_bytes;
use super::runtime_settings;
use crate::cli::{TaskArgs, TaskCommand, TemplateMode};
use anyhow::{bail, Context, Result};
use kvcore::cache::FullCacheFactory;
use kvcore::generate::{generate, GenerateOptions};
use kvcore::loader::LoadedModel;
use kvcore::sources::{kvbench_home, resolve_or_fetch};
use kvtasks::sample::Sample;
use std::collections::BTreeMap;
use std::io::Write;

pub use kvexperiment::samples::EngineTokenizer;

pub fn run(cmd: TaskCommand) -> Result<()> {
    match cmd {
        TaskCommand::Eval(a) => eval(a),
        TaskCommand::Dump(a) => {
            let (settings, _) = runtime_settings(&a.runtime)?;
            let files = resolve_or_fetch(&a.model, &kvbench_home())?;
            let lm = super::load_guarded(&files, settings, &Default::default(), usize::MAX, &a.runtime.guard)?;
            let samples = build_samples(&a, &lm)?;
            print!("{}", kvtasks::sample::to_jsonl(&samples)?);
            Ok(())
        }
    }
}

/// The task spec `kvbench task` arguments stand for.
pub fn task_spec(a: &TaskArgs) -> kvtasks::spec::TaskSpec {
    kvtasks::spec::TaskSpec {
        task: a.task.clone(),
        lengths: a.lengths.clone(),
        steps: a.steps,
        depths: a.depths,
        trials: a.trials,
        digits: a.digits,
        samples: a.samples,
        seed: a.seed,
        limit: a.limit,
    }
}

/// Builds the samples a task name stands for, sized (RULER) with the chat template where the
/// samples will be read through it.
pub fn build_samples(a: &TaskArgs, lm: &LoadedModel) -> Result<Vec<Sample>> {
    let chat = match a.template {
        TemplateMode::Chat => true,
        TemplateMode::Plain => false,
        TemplateMode::Auto => lm.chat_template.is_some(),
    };
    Ok(task_spec(a).build(&EngineTokenizer::new(lm, chat))?)
}

/// Token ids for a sample: the paper's passkey runs without a chat template; others use it.
fn sample_ids(lm: &LoadedModel, s: &Sample, mode: TemplateMode) -> Result<Vec<u32>> {
    let chat = match mode {
        TemplateMode::Chat => true,
        TemplateMode::Plain => false,
        TemplateMode::Auto => {
            // LongBench subsets carry the official pipeline's choice (few-shot and code run plain).
            let wants = s.metadata.get("chat_template").and_then(|v| v.as_bool()).unwrap_or(true);
            s.scoring != kvtasks::sample::ScoringKind::Passkey && lm.chat_template.is_some() && wants
        }
    };
    let tpl = if chat { Some(lm.chat_template.as_ref().context("this model has no chat template")?) } else { None };
    let text = s.input_text(tpl)?;
    let enc = lm.tokenizer.encode(text.as_str(), !chat).map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
    Ok(enc.get_ids().to_vec())
}

fn eval(a: TaskArgs) -> Result<()> {
    let (settings, threads) = runtime_settings(&a.runtime)?;
    let files = resolve_or_fetch(&a.model, &kvbench_home())?;
    let mut lm = super::load_guarded(&files, settings, &Default::default(), usize::MAX, &a.runtime.guard)?;
    let samples = build_samples(&a, &lm)?;
    if samples.is_empty() {
        bail!("task `{}` produced no samples with these settings", a.task);
    }
    eprintln!("{}: {} samples on {} ({threads} threads)", a.task, samples.len(), files.path().display());
    let mut out = match &a.out {
        Some(p) => Some(std::io::BufWriter::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?)),
        None => None,
    };
    let mut sums: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for (i, s) in samples.iter().enumerate() {
        let ids = sample_ids(&lm, s, a.template)?;
        let ctx = lm.max_context().unwrap_or(usize::MAX);
        let max_new = a.max_new_tokens.unwrap_or(s.max_new_tokens);
        if ids.len() + max_new > ctx {
            bail!("sample {} has {} tokens; with {max_new} to generate it exceeds the model's {ctx}-token context", s.id, ids.len());
        }
        let mut opts = GenerateOptions { max_new_tokens: max_new, ..Default::default() };
        kvexperiment::samples::apply_stop_rules(s, kvexperiment::samples::newline_stop_id(&lm), &mut opts)?;
        let g = generate(&mut lm, &ids, &opts, &FullCacheFactory)?;
        let scores = s.score(&g.text)?;
        for (k, v) in &scores {
            sums.entry(k).or_default().push(*v);
        }
        let brief: String = g.text.trim().chars().take(60).collect::<String>().replace('\n', " ");
        eprintln!(
            "[{}/{}] {} tokens={} {} | {:.1}s | {:?}",
            i + 1,
            samples.len(),
            s.id,
            ids.len(),
            scores.iter().map(|(k, v)| format!("{k}={v:.2}")).collect::<Vec<_>>().join(" "),
            g.prefill_seconds + g.decode_seconds,
            brief
        );
        if let Some(w) = out.as_mut() {
            let rec = serde_json::json!({
                "id": s.id, "task": s.task, "metadata": s.metadata, "answers": s.answers, "pred": g.text,
                "scores": scores, "prompt_tokens": g.prompt_tokens, "generated_tokens": g.generated_tokens,
                "prefill_seconds": g.prefill_seconds, "decode_tokens_per_s": g.decode_tokens_per_s(),
                "kv_bytes_held": g.kv_bytes_held, "kv_bytes_full": g.kv_bytes_full,
            });
            writeln!(w, "{rec}")?;
            w.flush()?;
        }
    }
    println!("task {} on {} ({} samples, full cache)", a.task, files.path().display(), samples.len());
    for (k, v) in &sums {
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = if v.len() > 1 { v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
        println!("  {k:<18} {:>6.2}  ± {:.2} (95% CI, n={})", 100.0 * mean, 100.0 * 1.96 * (var / n).sqrt(), v.len());
    }
    if let Some(p) = kvcore::memory::peak_rss_bytes() {
        println!("  peak RSS {}", human_bytes(p));
    }
    Ok(())
}
