//! LLMLingua-2 (`plugins/llmlingua`) against its references, on a tiny random XLM-RoBERTa token
//! classifier and tokenizer built offline by `scripts/reference/llmlingua2_reference.py`:
//! the classifier's logits against transformers' `XLMRobertaForTokenClassification`, and the kept
//! words against llmlingua 0.2.2's `compress_prompt_llmlingua2` with the paper's arguments.

mod common;

use common::*;
use kvplugins::llmlingua::compress::Settings;
use kvplugins::llmlingua::xlmr::XlmrTokenClassifier;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn make_model(out: &Path) -> PathBuf {
    run_reference("llmlingua2_reference.py", &["model", out.to_str().unwrap()]);
    out.join("tiny-xlm-roberta-large-random")
}

#[test]
fn xlmr_token_classifier_matches_transformers_at_1e4() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = make_model(tmp.path());
    let model = XlmrTokenClassifier::load(&dir, Device::Cpu).unwrap();
    let ids = npy(&tmp.path().join("parity_ids.npy"));
    let mask = npy(&tmp.path().join("parity_mask.npy"));
    let reference = npy(&tmp.path().join("parity_logits.npy"));
    assert_eq!(reference.size(), [4, 512, 2]);

    // The padded batch, every position (padded ones included: transformers computes them too).
    let ours = model.forward(&ids, &mask).unwrap();
    let d = max_abs_diff(&ours, &reference);
    let scale = reference.abs().max().double_value(&[]);
    eprintln!("padded batch [4, 512]: max |logit diff| = {d:.3e} (logits up to {scale:.2})");
    assert!(d <= 1e-4, "max |logit diff| {d} > 1e-4");
    assert!(scale > 0.5, "reference logits are too flat ({scale}) for the test to mean anything");

    // Each sequence alone, unpadded: the real positions must not depend on the padding.
    let lens = Vec::<i64>::try_from(mask.sum_dim_intlist(1, false, Kind::Int64)).unwrap();
    for (b, &n) in lens.iter().enumerate() {
        let one = ids.get(b as i64).narrow(0, 0, n).unsqueeze(0);
        let l = model.forward(&one, &Tensor::ones([1, n], (Kind::Int64, Device::Cpu))).unwrap().squeeze_dim(0);
        let d = max_abs_diff(&l, &reference.get(b as i64).narrow(0, 0, n));
        eprintln!("sequence {b} alone ({n} tokens): max |logit diff| = {d:.3e}");
        assert!(d <= 1e-4, "sequence {b}: {d}");
    }
}

/// Runs llmlingua 0.2.2 on the reference texts at ratios 4 and 2.
fn llmlingua_reference(tmp: &Path) -> (PathBuf, serde_json::Value) {
    let dir = make_model(tmp);
    let out = tmp.join("llmlingua.json");
    run_reference("llmlingua2_reference.py", &["compress", dir.to_str().unwrap(), out.to_str().unwrap(), "4", "2"]);
    let v = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    (dir, v)
}

#[test]
fn llmlingua2_keeps_the_words_llmlingua_keeps() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, reference) = llmlingua_reference(tmp.path());
    let lingua = kvplugins::llmlingua::load(&dir, Device::Cpu).unwrap();
    let texts: Vec<String> = reference["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect();
    let (mut words_total, mut words_agree) = (0usize, 0usize);
    let mut chunked = false;
    for r in reference["results"].as_array().unwrap() {
        let ratio = r["ratio"].as_f64().unwrap();
        let i = r["text_index"].as_u64().unwrap() as usize;
        let c = lingua.compress(&texts[i], &Settings::paper(1.0 / ratio)).unwrap();
        let words: Vec<String> = r["words"].as_array().unwrap().iter().map(|w| w.as_str().unwrap().to_string()).collect();
        let labels: Vec<u8> = r["labels"].as_array().unwrap().iter().map(|w| w.as_u64().unwrap() as u8).collect();
        assert_eq!(c.words, words, "ratio {ratio} text {i}: words differ");
        let agree = c.labels.iter().zip(&labels).filter(|(a, b)| a == b).count();
        words_total += labels.len();
        words_agree += agree;
        let kept = labels.iter().filter(|&&l| l == 1).count();
        eprintln!("ratio {ratio} text {i}: {} chunks, {kept}/{} words kept, labels agree on {agree}/{}", c.chunks.len(), labels.len(), labels.len());
        chunked |= c.chunks.len() > 1;
        if c.labels != labels {
            let diff: Vec<usize> = (0..labels.len()).filter(|&k| c.labels.get(k) != labels.get(k)).collect();
            let k = diff[0];
            panic!(
                "ratio {ratio} text {i}: {} of {} word labels differ; first at word {k} ({:?}): kvbench {:?}, llmlingua {}",
                diff.len(),
                labels.len(),
                words[k],
                c.labels.get(k),
                labels[k]
            );
        }
        assert_eq!(c.text, r["compressed_prompt"].as_str().unwrap(), "ratio {ratio} text {i}: compressed text differs");
        assert!(kept > 0 && kept < labels.len(), "ratio {ratio} text {i}: nothing was dropped or nothing kept");
        assert_eq!(lingua.count_tokens(&texts[i]).unwrap() as u64, r["origin_tokens"].as_u64().unwrap(), "text {i}: origin tokens");
        if !c.text.is_empty() {
            assert_eq!(lingua.count_tokens(&c.text).unwrap() as u64, r["compressed_tokens"].as_u64().unwrap(), "text {i}: compressed tokens");
        }
    }
    eprintln!("kept-word labels agree on {words_agree}/{words_total} words");
    assert!(chunked, "no reference text was long enough to be chunked");
}

#[test]
fn registered_llmlingua2_compresses_through_the_registry() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, reference) = llmlingua_reference(tmp.path());
    let reg = kvcore::registry::Registry::builtin().unwrap();
    let info = reg.get("llmlingua2").expect("llmlingua2 is registered");
    assert!(info.is_prompt());
    assert!(info.detail.contains("--set model="), "the detail must say how to use a local model directory");
    let mut params = toml::Table::new();
    params.insert("model".into(), toml::Value::String(dir.to_str().unwrap().into()));
    params.insert("device".into(), toml::Value::String("cpu".into()));
    params.insert("ratio".into(), toml::Value::Integer(4));
    let pc = info.build_prompt(&params).unwrap().expect("a prompt compressor");
    assert!((pc.rate() - 0.25).abs() < 1e-12);
    let texts = reference["texts"].as_array().unwrap();
    for r in reference["results"].as_array().unwrap().iter().filter(|r| r["ratio"].as_f64() == Some(4.0)) {
        let text = texts[r["text_index"].as_u64().unwrap() as usize].as_str().unwrap();
        let c = pc.compress(text).unwrap();
        assert_eq!(c.text, r["compressed_prompt"].as_str().unwrap());
        assert_eq!(c.original_tokens as u64, r["origin_tokens"].as_u64().unwrap());
        assert!(c.compressed_tokens < c.original_tokens, "{} -> {}", c.original_tokens, c.compressed_tokens);
    }
    // ratio = 1: the text comes back whole.
    params.insert("ratio".into(), toml::Value::Integer(1));
    let pc = info.build_prompt(&params).unwrap().unwrap();
    let text = texts[0].as_str().unwrap();
    assert_eq!(pc.compress(text).unwrap().text, text);
}

#[test]
fn llmlingua2_rejects_bad_settings_and_explains_a_missing_model() {
    let reg = kvcore::registry::Registry::builtin().unwrap();
    let info = reg.get("llmlingua2").unwrap();
    let build = |s: &str| info.build_prompt(&s.parse::<toml::Table>().unwrap()).map(|_| ());
    assert!(build("ratio = 0.5").is_err());
    assert!(build("force_tokens = \"x\"").is_err());
    assert!(build("device = \"tpu\"").is_err());
    let err = build("rate = 2").unwrap_err().to_string();
    assert!(err.contains("rate") && err.contains("ratio"), "{err}");

    // A hub repository that cannot be reached: the error names the model and the way out.
    let home = tempfile::tempdir().unwrap();
    let msg = kvplugins::llmlingua::resolve_model_with(kvplugins::llmlingua::DEFAULT_MODEL, home.path(), "http://127.0.0.1:9").unwrap_err().to_string();
    eprintln!("{msg}");
    assert!(msg.contains("microsoft/llmlingua-2-xlm-roberta-large-meetingbank") && msg.contains("--set model="), "{msg}");
    // A path that is neither a directory nor a repository name.
    let t: toml::Table = "model = \"/no/such/llmlingua/dir\"".parse().unwrap();
    let msg = info.build_prompt(&t).unwrap().unwrap().compress("Hello.").unwrap_err().to_string();
    assert!(msg.contains("/no/such/llmlingua/dir") && msg.contains("local directory"), "{msg}");
}
