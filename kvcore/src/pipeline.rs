//! The generation pipeline with a context/question split, as kvpress does it: with
//! `query_aware = false` (the default) the context alone is prefilled and compressed, then the
//! question is appended uncompressed, so a method cannot look at the question to decide what to
//! keep; with `query_aware = true` context and question are compressed together. "Compress once,
//! ask many": several questions reuse one compressed context (each question works on a copy).

use crate::cache::{CacheFactory, LayerCache};
use crate::error::{Error, Result};
use crate::generate::{decode, end_prefill, new_caches_for, prefill, GenerateOptions, GenerationOutput};
use crate::loader::LoadedModel;

/// How the pipeline treats the question.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PipelineOptions {
    /// Compress context and question together (lets question-aware methods see the question).
    pub query_aware: bool,
}

/// Answers every question of `questions` about `context` with the method of `factory`.
/// Each output's `kv_bytes_held_prompt` is measured after the context was compressed and the
/// question appended.
pub fn answer(
    lm: &mut LoadedModel,
    context: &[u32],
    questions: &[Vec<u32>],
    opts: &GenerateOptions,
    popts: PipelineOptions,
    factory: &dyn CacheFactory,
) -> Result<Vec<GenerationOutput>> {
    let _guard = tch::no_grad_guard();
    if context.is_empty() {
        return Err(Error::InvalidArgument { what: "context", value: String::new(), expected: "at least one token".into() });
    }
    let longest_q = questions.iter().map(|q| q.len()).max().unwrap_or(0);
    let expected = context.len() + longest_q + opts.max_new_tokens;
    let mut outs = Vec::new();
    if popts.query_aware || questions.is_empty() {
        // Compress context + question together: one compression per question.
        let empty = vec![Vec::new()];
        let qs = if questions.is_empty() { &empty[..] } else { questions };
        for q in qs {
            let t0 = std::time::Instant::now();
            let mut ids = context.to_vec();
            ids.extend_from_slice(q);
            let mut caches = new_caches_for(lm, factory, expected, Some(ids.len()))?;
            let logits = prefill(lm, &mut caches, &ids, 0, opts.prefill_chunk)?;
            end_prefill(&mut caches)?;
            outs.push(decode(lm, &mut caches, logits, ids.len(), opts, t0)?);
        }
        return Ok(outs);
    }
    // Compress the context once.
    let t0 = std::time::Instant::now();
    let mut base = new_caches_for(lm, factory, expected, Some(context.len()))?;
    let mut context_logits = Some(prefill(lm, &mut base, context, 0, opts.prefill_chunk)?);
    end_prefill(&mut base)?;
    let context_seconds = t0.elapsed();
    for (i, q) in questions.iter().enumerate() {
        let t0 = std::time::Instant::now() - if i == 0 { context_seconds } else { std::time::Duration::ZERO };
        let last = i + 1 == questions.len();
        let mut caches: Vec<Box<dyn LayerCache>> = if last {
            std::mem::take(&mut base)
        } else {
            match base.iter().map(|c| c.fork()).collect::<Option<Vec<_>>>() {
                Some(c) => c,
                None => {
                    // The method cannot copy its state: rebuild the compressed context.
                    let mut c = new_caches_for(lm, factory, expected, Some(context.len()))?;
                    let _ = prefill(lm, &mut c, context, 0, opts.prefill_chunk)?;
                    end_prefill(&mut c)?;
                    c
                }
            }
        };
        let logits = if q.is_empty() {
            context_logits.take().ok_or_else(|| Error::InvalidArgument { what: "question", value: String::new(), expected: "non-empty questions after the first".into() })?
        } else {
            prefill(lm, &mut caches, q, context.len(), opts.prefill_chunk)?
        };
        outs.push(decode(lm, &mut caches, logits, context.len() + q.len(), opts, t0)?);
    }
    Ok(outs)
}
