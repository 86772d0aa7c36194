//! LongBench v1 subsets as benchmark tasks: each record of `<subset>[_e].jsonl` becomes a
//! [`Sample`] whose prompt parts concatenate to the official `dataset2prompt[subset].format(...)`,
//! with the context (the part a KV-cache method compresses) kept apart from the instruction and
//! the question, and scored exactly as `eval.py`'s `scorer` scores one prediction.
//!
//! What the samples leave to the runner (as `pred.py` / longctx_bench do it): middle truncation of
//! the *whole* prompt by tokens to the model's `model2maxlen` before any chat template (see
//! [`truncate_middle`](super::prompts::truncate_middle)); the chat template, only where
//! `metadata["chat_template"]` is true; and for samsum (`metadata["stop_at_newline"]`) stopping at
//! the token of `"\n"` with at least one new token.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use super::dataset::{load_subset, DataError, LongBenchRecord};
use super::prompts::{fill_template, subset, Subset};
use crate::sample::{context_id, Sample, ScoringKind, CONTEXT_ID_KEY};

/// The category reported for subsets outside the paper's six categories: passage_count (run by
/// the paper but excluded from every average) and the five Chinese subsets.
pub const OTHER_CATEGORY: &str = "other";

/// The leaderboard column of `subset` in the paper's grouping (longctx_bench's
/// `longbench_result_summary.json` keys): `single_doc_qa`, `multi_doc_qa`, `summarization`,
/// `few_shots`, `synthetic` (passage_retrieval_en only), `code`; [`OTHER_CATEGORY`] for the
/// subsets no category average includes, and for unknown names.
pub fn category_of(subset_name: &str) -> &'static str {
    subset(subset_name).and_then(|s| s.category).map_or(OTHER_CATEGORY, |c| c.key())
}

/// The task name of a subset: `longbench/<subset>`, or `longbench_e/<subset>` for LongBench-E.
pub fn task_name(subset_name: &str, longbench_e: bool) -> String {
    if longbench_e {
        format!("longbench_e/{subset_name}")
    } else {
        format!("longbench/{subset_name}")
    }
}

/// A filled prompt in three parts; `prefix_instruction + context + question` is
/// `fill_template(template, context, input)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptParts {
    /// the template text before `{context}`
    pub prefix_instruction: String,
    /// the record's context
    pub context: String,
    /// everything after the context: template text with `{input}` filled in
    pub question: String,
}

/// Byte offset and kind (`true` = `{context}`) of each placeholder, found the way
/// [`fill_template`]'s left-to-right pass finds them.
fn placeholders(template: &str) -> Vec<(usize, bool)> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while let Some(open) = template.get(pos..).and_then(|t| t.find('{')) {
        let at = pos + open;
        let tail = template.get(at..).unwrap_or("");
        if tail.starts_with("{context}") {
            out.push((at, true));
            pos = at + "{context}".len();
        } else if tail.starts_with("{input}") {
            out.push((at, false));
            pos = at + "{input}".len();
        } else {
            pos = at + 1;
        }
    }
    out
}

/// Split the filled prompt at the context. When the template's first placeholder is its only
/// `{context}` (true of all 21 official templates), the text before it is the prefix and the rest,
/// filled, is the question. Otherwise (`{input}` before `{context}`, no `{context}`, or several)
/// there is no clean split, and the whole filled prompt goes into `context` with an empty prefix
/// and question.
pub fn split_prompt(template: &str, context: &str, input: &str) -> PromptParts {
    let marks = placeholders(template);
    let contexts = marks.iter().filter(|(_, is_ctx)| *is_ctx).count();
    match marks.first() {
        Some(&(at, true)) if contexts == 1 => {
            let before = template.get(..at).unwrap_or("");
            let after = template.get(at + "{context}".len()..).unwrap_or("");
            PromptParts { prefix_instruction: before.to_string(), context: context.to_string(), question: fill_template(after, "", input) }
        }
        _ => PromptParts { prefix_instruction: String::new(), context: fill_template(template, context, input), question: String::new() },
    }
}

/// The [`CONTEXT_ID_KEY`] of the records whose context is `context`: `longbench-` and the
/// FNV-1a 64 hash of the text (records of one subset asking about the same document share it);
/// None for an empty context, which shares nothing.
pub fn longbench_context_id(context: &str) -> Option<String> {
    (!context.is_empty()).then(|| context_id("longbench", context))
}

/// One record of `subset` as a [`Sample`] (see [`longbench_samples`]).
pub fn sample_from_record(subset: &Subset, record: &LongBenchRecord, longbench_e: bool) -> Sample {
    let parts = split_prompt(subset.prompt, &record.context, &record.input);
    let mut metadata = BTreeMap::new();
    metadata.insert("subset".to_string(), Value::from(subset.name));
    metadata.insert("category".to_string(), Value::from(category_of(subset.name)));
    metadata.insert("language".to_string(), Value::from(record.language.as_str()));
    metadata.insert("length".to_string(), Value::from(record.length));
    metadata.insert("chat_template".to_string(), Value::from(subset.chat_template));
    metadata.insert("stop_at_newline".to_string(), Value::from(subset.stops_at_newline()));
    metadata.insert("longbench_e".to_string(), Value::from(longbench_e));
    if let Some(classes) = &record.all_classes {
        metadata.insert("all_classes".to_string(), Value::from(classes.clone()));
    }
    if let Some(cid) = longbench_context_id(&record.context) {
        metadata.insert(CONTEXT_ID_KEY.to_string(), Value::from(cid));
    }
    Sample {
        examples: Vec::new(),
        id: record.id.clone(),
        task: task_name(subset.name, longbench_e),
        prefix_instruction: (!parts.prefix_instruction.is_empty()).then_some(parts.prefix_instruction),
        context: parts.context,
        question: parts.question,
        answer_prefix: None,
        answers: record.answers.clone(),
        scoring: ScoringKind::longbench(subset),
        max_new_tokens: subset.max_new_tokens,
        metadata,
    }
}

/// The records of `<dir>/<subset>.jsonl` (`<subset>_e.jsonl` if `longbench_e`) as samples, one
/// per record in file order, the first `limit` only if given.
///
/// * `id` = the record's `_id`; `task` = [`task_name`]; `answers` = the record's answers;
/// * `prefix_instruction + context + question` = `dataset2prompt[subset].format(context=...,
///   input=...)`, split at the context by [`split_prompt`];
/// * `max_new_tokens` = `dataset2maxlen[subset]`; `scoring` = [`ScoringKind::Longbench`] with the
///   subset's metric and first-line rule;
/// * `metadata`: `subset`, `category` ([`category_of`]), `language` (the record's, `en`/`zh`),
///   `length` (the record's, words or Chinese characters), `chat_template` (whether the official
///   pipeline wraps the prompt in the chat template), `stop_at_newline` (samsum: stop at `"\n"`,
///   at least one new token), `longbench_e`, `all_classes` when the record has them, and
///   [`CONTEXT_ID_KEY`] ([`longbench_context_id`] of the record's context) when the context is
///   not empty.
///
/// Errors: unknown subset, a subset without a LongBench-E file, a missing file (naming its path
/// and the fetch command), unreadable or malformed lines.
pub fn longbench_samples(dir: &Path, subset_name: &str, longbench_e: bool, limit: Option<usize>) -> Result<Vec<Sample>, DataError> {
    let s = subset(subset_name).ok_or_else(|| DataError::UnknownSubset { name: subset_name.to_string() })?;
    let mut records = load_subset(dir, subset_name, longbench_e)?;
    if let Some(n) = limit {
        records.truncate(n);
    }
    Ok(records.iter().map(|r| sample_from_record(s, r, longbench_e)).collect())
}
