//! Batched decoding and shared prefill against the single-sequence path, on the real SmolLM2 in
//! f32: sequences of different methods and lengths decoded together give, step by step, the
//! logits each gives alone (checked within 1e-5 and reported bit for bit), the same greedy
//! tokens over 64 steps; and one shared prefill serving several methods gives every method the
//! outputs (tokens, text, bytes) of `pipeline::answer` run for it alone.

mod common;

use kvcore::cache::{CacheFactory, LayerCache};
use kvcore::device::{DType, RuntimeSettings};
use kvcore::generate::{new_caches_for, prefill, GenerateOptions, GenerationOutput};
use kvcore::loader::{load, Decoder, LoadedModel};
use kvcore::model::Logits;
use kvcore::pipeline::{answer, PipelineOptions};
use kvcore::reconstruct::finish_prefill;
use kvcore::registry::{parse_settings, Registry};
use kvcore::shared::answer_shared;
use kvcore::sources::ModelFiles;
use std::sync::Arc;
use tch::{Device, Tensor};

use kvplugins as _;

/// (method, settings): full, SnapKV, KIVI-2, Quest, H2O with decode eviction, TOVA, Knorm,
/// StreamingLLM (chunked prefill: not shareable, but it decodes in a batch like any other), ...;
/// the two batches of 8 hold every one of them.
const METHODS: &[(&str, &[&str])] = &[
    ("full", &[]),
    ("snapkv", &["ratio=4", "window=8"]),
    ("kivi", &["bits=2", "group_size=32", "residual_length=32"]),
    ("quest", &["ratio=4", "page_size=16"]),
    ("h2o", &["ratio=4", "mode=\"decode\""]),
    ("tova", &["ratio=2"]),
    ("knorm", &["ratio=4"]),
    ("keydiff", &["ratio=4"]),
    ("expected-attention", &["ratio=4"]),
    ("chunkkv", &["ratio=4", "window=8", "chunk_length=8"]),
    ("streamingllm", &["ratio=4"]),
    // Context reconstruction: two members with the same passes (one set serves both) and one with its own.
    ("kvzip", &["ratio=4"]),
    ("kvzip", &["ratio=2"]),
    ("kvzip", &["ratio=4", "chunk_size=64", "layerwise=true"]),
    // FlexGen's simulation (the offline-v1 setting) re-quantizes every key and value at every
    // step, so a last-bit difference becomes a quantization step: the most sensitive member.
    ("flexgen", &["bits=4", "group_size=32", "fake=true"]),
    ("int8", &[]),
];

fn model() -> LoadedModel {
    let settings = RuntimeSettings { device: Device::Cpu, dtype: DType::F32, kv_dtype: DType::F32 };
    load(&ModelFiles::Gguf(common::smollm2_gguf()), settings).expect("load SmolLM2")
}

fn factory(name: &str, set: &[&str]) -> Arc<dyn CacheFactory> {
    let table = parse_settings(&set.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    Registry::builtin().unwrap().build(name, &table).unwrap_or_else(|e| panic!("{name} {set:?}: {e}"))
}

fn tokens(lm: &LoadedModel, text: &str) -> Vec<u32> {
    lm.tokenizer.encode(text, false).expect("encode").get_ids().to_vec()
}

const TEXT: &str = "The archive kept its records in a long hall. Each shelf held letters from a different year, \
    and the keeper knew which drawer held which name. One winter a visitor asked for the letters of a sailor \
    called Ines Marlow, who had written home from every port between Lisbon and Valparaiso. The keeper walked \
    to the far end of the hall, counted seven shelves from the window, and pulled out a box tied with red string. ";

/// Prompts of different lengths: the text repeated and cut at `len` tokens.
fn prompt(lm: &LoadedModel, len: usize) -> Vec<u32> {
    let base = tokens(lm, TEXT);
    base.iter().cycle().take(len).copied().collect()
}

/// One sequence's per-layer caches.
type Caches = Vec<Box<dyn LayerCache>>;

fn argmax(t: &Tensor) -> u32 {
    t.view([-1]).argmax(-1, false).int64_value(&[]) as u32
}

/// B sequences (method (first + i) % METHODS, prompt lengths varied) decoded 64 steps alone and
/// batched, teacher-forced with the single path's greedy tokens; returns the largest logit
/// difference and whether every step was bit-identical.
fn batched_vs_single(b: usize, first: usize) -> (f64, bool) {
    let _g = tch::no_grad_guard();
    tch::set_num_threads(2);
    let mut lm = model();
    let steps = 64;
    let mut single: Vec<(Caches, Tensor, usize)> = Vec::new();
    let mut batch: Vec<Caches> = Vec::new();
    for i in 0..b {
        let (name, set) = METHODS[(first + i) % METHODS.len()];
        let f = factory(name, set);
        let ids = prompt(&lm, 150 + 37 * i);
        let mut prefilled = || {
            let mut c = new_caches_for(&lm, f.as_ref(), ids.len() + steps + 1, Some(ids.len())).unwrap();
            let logits = prefill(&mut lm, &mut c, &ids, 0, Some(64)).unwrap();
            finish_prefill(&mut lm, &mut c, f.as_ref(), &ids).unwrap();
            (c, logits)
        };
        let (c1, l1) = prefilled();
        let (c2, l2) = prefilled();
        assert!(l1.equal(&l2), "prefill of {name} is not deterministic");
        single.push((c1, l1, ids.len()));
        batch.push(c2);
    }
    let mut worst = 0f64;
    let mut bitwise = true;
    let mut next: Vec<u32> = single.iter().map(|(_, l, _)| argmax(l)).collect();
    for step in 0..steps {
        // Alone, one after the other.
        let mut alone = Vec::new();
        for (i, (caches, _, pos)) in single.iter_mut().enumerate() {
            let input = Tensor::from_slice(&[next[i] as i64]).view([1, 1]);
            let Decoder::Transformer(m) = &mut lm.decoder else { panic!("a transformer") };
            alone.push(m.forward(&input, *pos, caches, Logits::Last).unwrap());
        }
        // Together.
        let starts: Vec<usize> = single.iter().map(|(_, _, p)| *p).collect();
        let input = Tensor::from_slice(&next.iter().map(|&t| t as i64).collect::<Vec<_>>()).view([b as i64, 1]);
        let Decoder::Transformer(m) = &mut lm.decoder else { panic!("a transformer") };
        let together = m.forward_batch(&input, &starts, Logits::Last, &mut |row, s| batch[row][s.layer].attend(s).map_err(Into::into)).unwrap();
        for (i, a) in alone.iter().enumerate() {
            let row = together.narrow(0, i as i64, 1);
            let d = common::max_abs_diff(a, &row);
            worst = worst.max(d);
            bitwise &= a.equal(&row);
            assert_eq!(argmax(a), argmax(&row), "B={b}, sequence {i} ({}), step {step}: greedy tokens differ", METHODS[(first + i) % METHODS.len()].0);
        }
        for (i, (_, _, pos)) in single.iter_mut().enumerate() {
            next[i] = argmax(&alone[i]);
            *pos += 1;
        }
    }
    (worst, bitwise)
}

#[test]
fn batched_decoding_equals_single_sequence_decoding() {
    assert_eq!(METHODS.len(), 16, "the two batches of 8 are meant to cover every method once");
    // B = 1, 3 and 8 from the first method (full, SnapKV, KIVI-2, Quest, H2O with decode
    // eviction among the 8), then 8 more from the ninth, so every method decodes in a batch.
    for (b, first) in [(1, 0), (3, 0), (8, 0), (8, 8)] {
        let (worst, bitwise) = batched_vs_single(b, first);
        println!("B={b} from method {first}: max |logit difference| over 64 steps = {worst:e}, bit-identical: {bitwise}");
        assert!(worst <= 1e-5, "B={b}: batched logits differ from single-sequence logits by {worst:e} (bound 1e-5)");
        // The batched projections run each row through the kernel it runs alone through, so in
        // f32 on CPU the logits are expected bit for bit (stronger than the 1e-5 bound).
        assert!(bitwise, "B={b}: logits within {worst:e} but not bit-identical");
    }
}

fn same_output(name: &str, shared: &GenerationOutput, alone: &GenerationOutput) {
    assert_eq!(shared.token_ids, alone.token_ids, "{name}: token ids");
    assert_eq!(shared.text, alone.text, "{name}: text");
    assert_eq!(shared.stop_reason, alone.stop_reason, "{name}: stop reason");
    assert_eq!(shared.prompt_tokens, alone.prompt_tokens, "{name}: prompt tokens");
    assert_eq!(shared.generated_tokens, alone.generated_tokens, "{name}: generated tokens");
    for (what, s, a) in [
        ("kv_bytes_held", shared.kv_bytes_held, alone.kv_bytes_held),
        ("kv_bytes_attended", shared.kv_bytes_attended, alone.kv_bytes_attended),
        ("kv_bytes_allocated", shared.kv_bytes_allocated, alone.kv_bytes_allocated),
        ("kv_bytes_full", shared.kv_bytes_full, alone.kv_bytes_full),
        ("kv_bytes_held_prompt", shared.kv_bytes_held_prompt, alone.kv_bytes_held_prompt),
        ("kv_bytes_full_prompt", shared.kv_bytes_full_prompt, alone.kv_bytes_full_prompt),
        ("kv_bytes_offloaded", shared.kv_bytes_offloaded, alone.kv_bytes_offloaded),
    ] {
        assert_eq!(s, a, "{name}: {what}");
    }
}

#[test]
fn shared_prefill_gives_every_method_its_own_outputs() {
    let _g = tch::no_grad_guard();
    tch::set_num_threads(2);
    let mut lm = model();
    let shareable: Vec<(&str, Arc<dyn CacheFactory>)> = METHODS.iter().map(|(n, s)| (*n, factory(n, s))).filter(|(_, f)| f.shared_prefill()).collect();
    let names: Vec<&str> = shareable.iter().map(|(n, _)| *n).collect();
    assert!(!names.contains(&"streamingllm"), "chunked StreamingLLM changes prefill and must not declare a shared one");
    for n in ["full", "snapkv", "kivi", "quest", "h2o", "tova", "knorm", "keydiff", "expected-attention", "chunkkv", "kvzip"] {
        assert!(names.contains(&n), "{n} prefills with full attention and should declare a shared prefill");
    }
    let context = prompt(&lm, 200);
    let question = tokens(&lm, "Question: who kept the records? Answer:");
    let opts = GenerateOptions { max_new_tokens: 24, prefill_chunk: Some(128), ..Default::default() };
    let factories: Vec<&dyn CacheFactory> = shareable.iter().map(|(_, f)| f.as_ref()).collect();
    for query_aware in [false, true] {
        let popts = PipelineOptions { query_aware };
        // A batch smaller than the group, so sequences join as others finish.
        let shared = answer_shared(&mut lm, &context, &question, &opts, popts, &factories, 3).unwrap();
        assert_eq!(shared.len(), factories.len());
        for ((name, f), s) in shareable.iter().zip(&shared) {
            let alone = answer(&mut lm, &context, std::slice::from_ref(&question), &opts, popts, f.as_ref()).unwrap().remove(0);
            same_output(&format!("{name} (query_aware = {query_aware})"), s, &alone);
        }
    }
    // No question: the whole prompt is the context.
    let shared = answer_shared(&mut lm, &context, &[], &opts, PipelineOptions::default(), &factories, 8).unwrap();
    for ((name, f), s) in shareable.iter().zip(&shared) {
        let alone = kvcore::generate::generate(&mut lm, &context, &opts, f.as_ref()).unwrap();
        same_output(&format!("{name} (no question)"), s, &alone);
    }
}

#[test]
fn shared_prefill_refuses_a_method_that_changes_prefill() {
    let mut lm = model();
    let chunked = factory("streamingllm", &["ratio=4"]);
    let ids = prompt(&lm, 40);
    let err = answer_shared(&mut lm, &ids, &[], &GenerateOptions::default(), PipelineOptions::default(), &[chunked.as_ref()], 4).unwrap_err();
    assert!(err.to_string().contains("streamingllm"), "{err}");
}

/// The paper grids' `query_aware = true` (issue 24 item 1): the pipeline prefills context and
/// question in one pass, exactly as one generation over their concatenation does, for the
/// methods whose behaviour depends on it (KIVI's exact prefill, H2O's scores, StreamingLLM's
/// budget from the whole prompt), with the full cache beside them.
#[test]
fn query_aware_prefill_equals_one_prefill_of_context_and_question() {
    let _g = tch::no_grad_guard();
    tch::set_num_threads(2);
    let mut lm = model();
    let context = prompt(&lm, 200);
    let question = tokens(&lm, "Question: who kept the records? Answer:");
    let mut whole = context.clone();
    whole.extend_from_slice(&question);
    let opts = GenerateOptions { max_new_tokens: 12, prefill_chunk: Some(128), ..Default::default() };
    let popts = PipelineOptions { query_aware: true };
    // The methods the issue names, and the full cache; the others share the same pipeline path.
    let named: &[(&str, &[&str])] = &[
        ("full", &[]),
        ("kivi", &["bits=2", "group_size=32", "residual_length=32"]),
        ("h2o", &["ratio=2"]),
        ("h2o", &["ratio=4", "mode=\"decode\""]),
        ("streamingllm", &["ratio=2"]),
    ];
    for (name, set) in named {
        let f = factory(name, set);
        let aware = answer(&mut lm, &context, std::slice::from_ref(&question), &opts, popts, f.as_ref()).unwrap().remove(0);
        let once = kvcore::generate::generate(&mut lm, &whole, &opts, f.as_ref()).unwrap();
        same_output(&format!("{name} {set:?}"), &aware, &once);
        assert_eq!(aware.prompt_tokens, whole.len(), "{name}: the whole prompt is prefilled");
    }
}

/// LongBench samsum's stop rule as the engine applies it (issue 24 item 8,
/// `kvexperiment::samples::apply_stop_rules`): the newline token ends generation like EOS, but
/// not before one token is generated.
#[test]
fn a_newline_stop_token_ends_generation_after_one_token() {
    let _g = tch::no_grad_guard();
    tch::set_num_threads(2);
    let mut lm = model();
    let ids = tokens(&lm, "Monday\nTuesday\nWednesday\nThursday\n");
    let nl = *tokens(&lm, "\n").last().unwrap();
    let free = GenerateOptions { max_new_tokens: 12, ..Default::default() };
    let without = kvcore::generate::generate(&mut lm, &ids, &free, &kvcore::cache::FullCacheFactory).unwrap();
    assert!(without.text.trim_start_matches('\n').contains('\n'), "the model goes on past a newline: {:?}", without.text);
    let stop = GenerateOptions { extra_stop_token_ids: vec![nl], min_new_tokens: 1, ..free };
    let with = kvcore::generate::generate(&mut lm, &ids, &stop, &kvcore::cache::FullCacheFactory).unwrap();
    assert!(with.generated_tokens >= 1 && !with.token_ids.contains(&nl), "{:?}", with.token_ids);
    assert_eq!(with.stop_reason, kvcore::generate::StopReason::EosToken, "{:?}", with.text);
    assert!(without.token_ids.starts_with(&with.token_ids), "the same tokens up to the newline");
}
