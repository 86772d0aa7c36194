//! Many methods on one prompt, at the cost of few: one prefill serves every method whose prefill
//! is plain full attention ([`CacheFactory::shared_prefill`]), each method's caches observing the
//! same steps; then the sequences decode together in batches, each attending through its own
//! caches (any method, any length), with the weights read once per step for the whole batch.
//!
//! Exactness: a method's caches see exactly the Q/K/V it would see alone and keep the same
//! statistics ([`LayerCache::observe`]); batched projections are bit-identical per row
//! ([`crate::model::Model::forward_batch`]). So every token, text and byte count equals the
//! single-sequence path's ([`crate::pipeline::answer`]). Times are not a method's own: the
//! prefill is shared and decoding is interleaved, so callers label them.

use crate::cache::{CacheFactory, FullCacheFactory, LayerCache};
use crate::error::{Error, Result};
use crate::generate::{end_prefill, forward_sequence, new_caches_for, new_sequence, GenerateOptions, GenerationOutput, Greedy, PromptMeasure, SequenceState};
use crate::loader::{Decoder, LoadedModel};
use crate::model::Logits;
use crate::pipeline::PipelineOptions;
use std::collections::VecDeque;
use std::time::Instant;
use tch::Tensor;

/// A sequence whose prompt is in: its caches, the last prompt position's logits, how many
/// tokens went through the model, and when its prompt started.
pub struct Prompted {
    pub caches: Vec<Box<dyn LayerCache>>,
    pub logits: Tensor,
    pub pos: usize,
    pub t0: Instant,
}

fn token_tensor(ids: &[u32], rows: usize, device: tch::Device) -> Tensor {
    let flat: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
    Tensor::from_slice(&flat).to_device(device).view([rows as i64, -1])
}

/// Answers `question` about `context` with every method of `factories` (each must declare
/// [`CacheFactory::shared_prefill`]), as [`crate::pipeline::answer`] does for one: the shared
/// prompt ([`prefill_shared`]), then decoding `max_batch` at a time ([`decode_batch`]). Outputs
/// are in `factories`' order.
pub fn answer_shared(
    lm: &mut LoadedModel,
    context: &[u32],
    question: &[u32],
    opts: &GenerateOptions,
    popts: PipelineOptions,
    factories: &[&dyn CacheFactory],
    max_batch: usize,
) -> Result<Vec<GenerationOutput>> {
    let prompted = prefill_shared(lm, context, question, opts, popts, factories)?;
    decode_batch(lm, prompted, opts, max_batch)
}

/// The prompt of every method of `factories` from one prefill: with `query_aware` (or no
/// question) context and question are prefilled together, else the context is prefilled and
/// compressed, then the question appended to each method's cache (in one batched step).
pub fn prefill_shared(
    lm: &mut LoadedModel,
    context: &[u32],
    question: &[u32],
    opts: &GenerateOptions,
    popts: PipelineOptions,
    factories: &[&dyn CacheFactory],
) -> Result<Vec<Prompted>> {
    let _guard = tch::no_grad_guard();
    if context.is_empty() {
        return Err(Error::InvalidArgument { what: "context", value: String::new(), expected: "at least one token".into() });
    }
    if let Some(f) = factories.iter().find(|f| !f.shared_prefill()) {
        return Err(Error::InvalidArgument {
            what: "shared prefill",
            value: f.name().to_string(),
            expected: "methods whose prefill is plain full attention (CacheFactory::shared_prefill)".into(),
        });
    }
    if factories.is_empty() {
        return Ok(Vec::new());
    }
    let together = popts.query_aware || question.is_empty();
    let prompt: Vec<u32> = if together { [context, question].concat() } else { context.to_vec() };
    let expected = context.len() + question.len() + opts.max_new_tokens;
    let device = lm.settings.device;

    let t0 = Instant::now();
    let mut members: Vec<Vec<Box<dyn LayerCache>>> =
        factories.iter().map(|f| new_caches_for(lm, *f, expected, Some(opts.budget_context(prompt.len())))).collect::<Result<_>>()?;
    // The leader computes each step's attention output once: full causal attention over the
    // exact K/V, which is what every member computes during its prefill.
    let mut leader = new_caches_for(lm, &FullCacheFactory, expected, Some(prompt.len()))?;
    let Decoder::Transformer(model) = &mut lm.decoder else {
        return Err(Error::Unsupported("shared prefill needs a transformer (a recurrent model has no KV cache to share)".into()));
    };
    let chunk = opts.prefill_chunk.unwrap_or(prompt.len()).max(1);
    let mut pos = 0;
    let mut logits = None;
    // Where the shared prefill's time goes, per member (KVBENCH_LOG=kvcore=debug).
    let mut observe_s = vec![0f64; members.len()];
    for part in prompt.chunks(chunk) {
        let input = token_tensor(part, 1, device);
        logits = Some(model.forward_with(&input, &[pos], Logits::Last, &mut |step| {
            let out = leader[step.layer].attend(step)?;
            for (m, secs) in members.iter_mut().zip(observe_s.iter_mut()) {
                let t = Instant::now();
                m[step.layer].observe(step)?;
                *secs += t.elapsed().as_secs_f64();
            }
            Ok(out)
        })?);
        pos += part.len();
    }
    drop(leader);
    let prompt_logits = logits.expect("a non-empty prompt has a chunk");
    // Context reconstruction (KVzip): one set of passes for the members that ask for the same,
    // every member recording its own scores (they hold the same uncompressed prompt).
    let recs: Vec<_> = factories.iter().map(|f| f.reconstruction()).collect();
    let mut done = vec![false; members.len()];
    for i in 0..members.len() {
        let Some(rec) = recs[i].clone().filter(|_| !done[i]) else { continue };
        let mut group: Vec<&mut [Box<dyn LayerCache>]> = Vec::new();
        for (j, m) in members.iter_mut().enumerate() {
            if recs[j].as_ref() == Some(&rec) && !done[j] {
                done[j] = true;
                group.push(m.as_mut_slice());
            }
        }
        crate::reconstruct::reconstruct_context(lm, &mut group, &rec, &prompt)?;
    }
    let Decoder::Transformer(model) = &mut lm.decoder else { unreachable!("checked above") };
    let forward_s = t0.elapsed().as_secs_f64();
    let mut end_s = Vec::with_capacity(members.len());
    for m in members.iter_mut() {
        let t = Instant::now();
        end_prefill(m)?;
        end_s.push(t.elapsed().as_secs_f64());
    }
    if tracing::enabled!(tracing::Level::DEBUG) {
        let per: Vec<String> =
            factories.iter().zip(observe_s.iter().zip(&end_s)).map(|(f, (o, e))| format!("{} observe {o:.2} s + end_prefill {e:.2} s", f.name())).collect();
        tracing::debug!(
            "shared prefill of {} tokens for {} methods: forward {forward_s:.2} s (observing {:.2} s of it), then {}",
            prompt.len(),
            factories.len(),
            observe_s.iter().sum::<f64>(),
            per.join(", ")
        );
    }

    // The question, appended to every compressed context in one batched step per chunk.
    let rows = members.len();
    let question_logits = if together {
        None
    } else {
        let mut qpos = pos;
        let mut out = None;
        for part in question.chunks(opts.prefill_chunk.unwrap_or(question.len()).max(1)) {
            let ids: Vec<u32> = (0..rows).flat_map(|_| part.iter().copied()).collect();
            let input = token_tensor(&ids, rows, device);
            out = Some(
                model.forward_batch(&input, &vec![qpos; rows], Logits::Last, &mut |row, step| members[row][step.layer].attend(step).map_err(Error::from))?,
            );
            qpos += part.len();
        }
        pos = qpos;
        out
    };
    Ok(members
        .into_iter()
        .enumerate()
        .map(|(i, caches)| Prompted {
            caches,
            logits: match &question_logits {
                Some(l) => l.narrow(0, i as i64, 1).copy(),
                None => prompt_logits.copy(),
            },
            pos,
            t0,
        })
        .collect())
}

/// One method's prompt alone, exactly as [`crate::pipeline::answer`] (or, without a question,
/// [`crate::generate::generate`]) runs it, stopping before the first token is chosen, so that
/// it can decode in a batch with others.
pub fn prompt_alone(
    lm: &mut LoadedModel,
    context: &[u32],
    question: &[u32],
    opts: &GenerateOptions,
    popts: PipelineOptions,
    factory: &dyn CacheFactory,
) -> Result<Prompted> {
    let _guard = tch::no_grad_guard();
    if context.is_empty() {
        return Err(Error::InvalidArgument { what: "context", value: String::new(), expected: "at least one token".into() });
    }
    let expected = context.len() + question.len() + opts.max_new_tokens;
    let t0 = Instant::now();
    let together = popts.query_aware || question.is_empty();
    let first: Vec<u32> = if together { [context, question].concat() } else { context.to_vec() };
    let mut seq = new_sequence(lm, factory, expected, Some(opts.budget_context(first.len())))?;
    let mut logits = forward_sequence(lm, &mut seq, &first, 0, opts.prefill_chunk, false)?;
    crate::reconstruct::finish_sequence_prefill(lm, &mut seq, factory, &first)?;
    let mut pos = first.len();
    if !together {
        logits = forward_sequence(lm, &mut seq, question, pos, opts.prefill_chunk, false)?;
        pos += question.len();
    }
    match seq {
        SequenceState::Caches(caches) => Ok(Prompted { caches, logits, pos, t0 }),
        SequenceState::Recurrent(_) => Err(Error::Unsupported("batched decoding needs a transformer (a recurrent model decodes alone)".into())),
    }
}

/// Greedy decoding of several sequences together (continuous batching): up to `max_batch` at a
/// time go through one batched forward per step, each attending through its own caches at its
/// own position; a sequence leaves when it stops (EOS, stop string, `max_new_tokens`) and the
/// next waiting one joins. Outputs are in `prompted`'s order and equal [`crate::generate::decode`]
/// of each sequence alone, token for token and byte for byte.
pub fn decode_batch(lm: &mut LoadedModel, prompted: Vec<Prompted>, opts: &GenerateOptions, max_batch: usize) -> Result<Vec<GenerationOutput>> {
    let _guard = tch::no_grad_guard();
    struct Live<'o> {
        index: usize,
        seq: SequenceState,
        logits: Tensor,
        pos: usize,
        t0: Instant,
        greedy: Greedy<'o>,
        prompt: PromptMeasure,
        prefill_seconds: f64,
        next: Option<u32>,
    }
    let device = lm.settings.device;
    let n = prompted.len();
    let mut waiting: VecDeque<(usize, Prompted)> = prompted.into_iter().enumerate().collect();
    let mut live: Vec<Live> = Vec::new();
    let mut outs: Vec<Option<GenerationOutput>> = (0..n).map(|_| None).collect();
    loop {
        while live.len() < max_batch.max(1) {
            let Some((index, p)) = waiting.pop_front() else { break };
            let seq = SequenceState::Caches(p.caches);
            let prompt = PromptMeasure::of(lm, &seq, p.pos);
            live.push(Live { index, seq, logits: p.logits, pos: p.pos, t0: p.t0, greedy: Greedy::new(lm, opts), prompt, prefill_seconds: 0.0, next: None });
        }
        if live.is_empty() {
            break;
        }
        // Each sequence chooses its next token; the finished ones leave.
        let mut still = Vec::with_capacity(live.len());
        for mut l in live.drain(..) {
            if l.next.is_none() && l.greedy.wants_token() {
                if l.greedy.out_ids.is_empty() {
                    crate::device::synchronize(device);
                    l.prefill_seconds = l.t0.elapsed().as_secs_f64();
                }
                l.next = l.greedy.choose(lm, &mut l.logits)?;
            }
            if l.next.is_some() {
                still.push(l);
                continue;
            }
            crate::device::synchronize(device);
            let total = l.t0.elapsed().as_secs_f64();
            let prefill_seconds = if l.greedy.out_ids.is_empty() { total } else { l.prefill_seconds };
            outs[l.index] = Some(l.prompt.output(lm, &l.seq, l.greedy, l.pos, prefill_seconds, total)?);
        }
        live = still;
        if live.is_empty() {
            continue;
        }
        let ids: Vec<u32> = live.iter().map(|l| l.next.expect("only sequences with a next token stay")).collect();
        let starts: Vec<usize> = live.iter().map(|l| l.pos).collect();
        let input = token_tensor(&ids, live.len(), device);
        let Decoder::Transformer(model) = &mut lm.decoder else {
            return Err(Error::Unsupported("batched decoding needs a transformer".into()));
        };
        let logits = model.forward_batch(&input, &starts, Logits::Last, &mut |row, step| match &mut live[row].seq {
            SequenceState::Caches(c) => c[step.layer].attend(step).map_err(Error::from),
            SequenceState::Recurrent(_) => Err(Error::Other("internal: a recurrent state in a batch of KV caches".into())),
        })?;
        for (row, l) in live.iter_mut().enumerate() {
            l.logits = logits.narrow(0, row as i64, 1);
            l.pos += 1;
            l.next = None;
        }
    }
    outs.into_iter().map(|o| o.ok_or_else(|| Error::Other("internal: a batched sequence ended without output".into()))).collect()
}
