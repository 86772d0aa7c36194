//! The generation pipeline with a context/question split, as kvpress does it: with
//! `query_aware = false` (the default) the context alone is prefilled and compressed, then the
//! question is appended uncompressed, so a method cannot look at the question to decide what to
//! keep; with `query_aware = true` context and question are compressed together. "Compress once,
//! ask many": several questions reuse one compressed context (each question works on a copy).

use crate::cache::CacheFactory;
use crate::error::{Error, Result};
use crate::generate::{decode, forward_sequence, new_sequence, GenerateOptions, GenerationOutput, SequenceState};
use crate::loader::LoadedModel;
use crate::reconstruct::finish_sequence_prefill;

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
        let empty = [Vec::new()];
        let qs = if questions.is_empty() { &empty[..] } else { questions };
        for q in qs {
            let t0 = std::time::Instant::now();
            let mut ids = context.to_vec();
            ids.extend_from_slice(q);
            let mut seq = new_sequence(lm, factory, expected, Some(opts.budget_context(ids.len())))?;
            let logits = forward_sequence(lm, &mut seq, &ids, 0, opts.prefill_chunk, false)?;
            finish_sequence_prefill(lm, &mut seq, factory, &ids)?;
            outs.push(decode(lm, &mut seq, logits, ids.len(), opts, t0)?);
        }
        return Ok(outs);
    }
    // Compress the context once.
    let t0 = std::time::Instant::now();
    let mut base = Some(new_sequence(lm, factory, expected, Some(opts.budget_context(context.len())))?);
    let mut context_logits = Some(forward_sequence(lm, base.as_mut().expect("just set"), context, 0, opts.prefill_chunk, false)?);
    finish_sequence_prefill(lm, base.as_mut().expect("just set"), factory, context)?;
    let context_seconds = t0.elapsed();
    for (i, q) in questions.iter().enumerate() {
        let t0 = std::time::Instant::now() - if i == 0 { context_seconds } else { std::time::Duration::ZERO };
        let last = i + 1 == questions.len();
        let base_ref = base.as_ref().expect("taken only for the last question");
        let mut seq: SequenceState = if last {
            base.take().expect("taken only for the last question")
        } else {
            match base_ref.fork() {
                Some(c) => c,
                None => {
                    // The method cannot copy its state: rebuild the compressed context.
                    let mut c = new_sequence(lm, factory, expected, Some(opts.budget_context(context.len())))?;
                    let _ = forward_sequence(lm, &mut c, context, 0, opts.prefill_chunk, false)?;
                    finish_sequence_prefill(lm, &mut c, factory, context)?;
                    c
                }
            }
        };
        let logits = if q.is_empty() {
            context_logits.take().ok_or_else(|| Error::InvalidArgument {
                what: "question",
                value: String::new(),
                expected: "non-empty questions after the first".into(),
            })?
        } else {
            forward_sequence(lm, &mut seq, q, context.len(), opts.prefill_chunk, false)?
        };
        outs.push(decode(lm, &mut seq, logits, context.len() + q.len(), opts, t0)?);
    }
    Ok(outs)
}
