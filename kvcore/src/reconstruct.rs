//! Context reconstruction, the engine stage KVzip needs (arXiv 2505.23416): once the prompt is in,
//! the model is asked to repeat the context, chunk by chunk, on top of the uncompressed cache, and
//! each layer's cache scores its tokens by the attention they receive from the repeating tokens
//! ([`LayerCache::reconstruct`]). The passes store nothing; they run before `end_prefill`, so
//! their cost is part of the method's prefill time.

use crate::cache::{CacheFactory, LayerCache, ReconstructionPass};
use crate::error::{Error, Result};
use crate::generate::{end_prefill, SequenceState};
use crate::loader::{Decoder, LoadedModel};
use crate::model::Logits;
use kvcache::scorer::Reconstruction;
use kvformats::chat::ChatMessage;
use tch::Tensor;

/// Ends the prefill of `prompt` (the tokens the caches hold) for the method of `factory`: its
/// context reconstruction passes when it asks for them ([`CacheFactory::reconstruction`]), then
/// [`end_prefill`] (a budget pooled over layers, then every layer's hook).
pub fn finish_prefill(lm: &mut LoadedModel, caches: &mut [Box<dyn LayerCache>], factory: &dyn CacheFactory, prompt: &[u32]) -> Result<()> {
    if let Some(rec) = factory.reconstruction() {
        reconstruct_context(lm, &mut [caches], &rec, prompt)?;
    }
    end_prefill(caches)
}

/// [`finish_prefill`] for a sequence (a recurrent state has nothing to finish).
pub fn finish_sequence_prefill(lm: &mut LoadedModel, seq: &mut SequenceState, factory: &dyn CacheFactory, prompt: &[u32]) -> Result<()> {
    match seq {
        SequenceState::Caches(c) => finish_prefill(lm, c, factory, prompt),
        SequenceState::Recurrent(_) => Ok(()),
    }
}

/// The token ids a chat model puts before a user message's content (system turn, user-turn
/// opening) and after it (turn end, assistant-turn opening), as kvpress derives them: the chat
/// template rendered around a placeholder and split there. Without a template: none, and a newline.
pub fn chat_affixes(lm: &LoadedModel) -> Result<(Vec<u32>, Vec<u32>)> {
    let encode = |text: &str| -> Result<Vec<u32>> {
        Ok(lm.tokenizer.encode(text, false).map_err(|e| Error::Other(format!("tokenizing the reconstruction prompt: {e}")))?.into_ids())
    };
    let Some(tpl) = &lm.chat_template else { return Ok((Vec::new(), encode("\n")?)) };
    let placeholder = "dummy context";
    let separator = format!("\n{}", "#".repeat(placeholder.len()));
    let rendered = tpl
        .render(&[ChatMessage::new("user", format!("{placeholder}{separator}"))], true)
        .map_err(|e| Error::Other(format!("rendering the chat template for context reconstruction: {e}")))?;
    let (before, after) = rendered.split_once(&separator).ok_or_else(|| Error::Other("the chat template drops the user message's content".into()))?;
    let prefix = before.split(placeholder).next().unwrap_or("");
    Ok((encode(prefix)?, encode(after)?))
}

/// Runs the reconstruction passes of `rec` over `prompt` (the tokens every sequence of `groups`
/// holds, uncompressed) once for all of them: the first sequence's caches compute each pass's
/// attention output and scores, and the others record those scores (the same pass over the same
/// uncompressed prompt with the same `rec` scores the same). Pass `i` repeats the chunk `i` of the context that
/// follows the chat-template prefix (when `prompt` starts with it).
pub fn reconstruct_context(lm: &mut LoadedModel, groups: &mut [&mut [Box<dyn LayerCache>]], rec: &Reconstruction, prompt: &[u32]) -> Result<()> {
    if groups.is_empty() || prompt.is_empty() {
        return Ok(());
    }
    let (prefix, suffix) = chat_affixes(lm)?;
    let encode = |text: &str| -> Result<Vec<u32>> {
        Ok(lm.tokenizer.encode(text, false).map_err(|e| Error::Other(format!("tokenizing the reconstruction prompt: {e}")))?.into_ids())
    };
    let (first, next) = (encode(&rec.first_prompt)?, encode(&rec.next_prompt)?);
    let start = if !prefix.is_empty() && prompt.len() > prefix.len() && prompt.starts_with(&prefix) { prefix.len() } else { 0 };
    let device = lm.settings.device;
    let Decoder::Transformer(model) = &mut lm.decoder else {
        return Err(Error::Unsupported("context reconstruction needs a transformer (a recurrent model has no KV cache)".into()));
    };
    let s = prompt.len();
    let chunks: Vec<&[u32]> = prompt[start..].chunks(rec.chunk_tokens.max(1)).collect();
    let mut at = start;
    for (i, chunk) in chunks.iter().enumerate() {
        let mut ids = if i == 0 {
            first.clone()
        } else {
            let prev = chunks[i - 1];
            [&next[..], &prev[prev.len().saturating_sub(rec.overlap_tokens)..]].concat()
        };
        ids.extend_from_slice(&suffix);
        ids.extend_from_slice(chunk);
        let target = at..at + chunk.len();
        let input = Tensor::from_slice(&ids.iter().map(|&t| t as i64).collect::<Vec<_>>()).to_device(device).unsqueeze(0);
        let _ = model.forward_with(&input, &[s], Logits::Last, &mut |step| {
            let (lead, rest) = groups.split_first_mut().expect("at least one sequence");
            let pass = ReconstructionPass { step, target: target.clone(), want_output: true, scores: None };
            let first = lead[step.layer].reconstruct(&pass)?;
            for g in rest.iter_mut() {
                let pass = ReconstructionPass { step, target: target.clone(), want_output: false, scores: first.scores.as_ref() };
                let _ = g[step.layer].reconstruct(&pass)?;
            }
            first.output.ok_or_else(|| Error::Other("a reconstruction pass returned no attention output".into()))
        })?;
        at += chunk.len();
    }
    Ok(())
}
