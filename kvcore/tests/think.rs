//! ThinK on SmolLM2 (f32): at `key_channel_ratio = 0.5` the cache really holds half the key bytes
//! of the full cache (the kept channels' indices aside), and the logit error this costs against
//! full attention is measured on a continuation fed token by token after a 400-token prompt
//! (teacher-forced, so both caches see the same tokens) and printed for the README.

mod common;

use kvcore::cache::{FullCacheFactory, LayerCache};
use kvcore::device::{DType, RuntimeSettings};
use kvcore::generate::{end_prefill, new_caches_for, prefill};
use kvcore::loader::load;
use kvcore::model::Logits;
use kvcore::registry::{parse_settings, Registry};
use kvcore::sources::ModelFiles;
use tch::{Device, Tensor};

use kvplugins as _;

const TEXT: &str = "The archive kept its records in a long hall. Each shelf held letters from a different year, \
    and the keeper knew which drawer held which name. One winter a visitor asked for the letters of a sailor \
    called Ines Marlow, who had written home from every port between Lisbon and Valparaiso. The keeper walked \
    to the far end of the hall, counted seven shelves from the window, and pulled out a box tied with red string. ";

/// Bytes of the tensors named `name` over every layer.
fn named_bytes(caches: &[Box<dyn LayerCache>], name: &str) -> u64 {
    caches.iter().flat_map(|c| c.held_tensors()).filter(|(n, _)| *n == name).map(|(_, t)| (t.numel() * t.kind().elt_size_in_bytes()) as u64).sum()
}

#[test]
fn think_holds_half_the_key_bytes_and_reports_its_logit_error_on_smollm2() {
    let _g = tch::no_grad_guard();
    let settings = RuntimeSettings { device: Device::Cpu, dtype: DType::F32, kv_dtype: DType::F32 };
    let mut lm = load(&ModelFiles::Gguf(common::smollm2_gguf()), settings).expect("load SmolLM2");
    let base = lm.tokenizer.encode(TEXT, false).expect("encode").get_ids().to_vec();
    let ids: Vec<u32> = base.iter().cycle().take(432).copied().collect();
    let (prompt, rest) = ids.split_at(400);
    let reg = Registry::builtin().unwrap();
    let mut report = Vec::new();
    for set in [&["key_channel_ratio=0.5"][..], &["key_channel_ratio=0.5", "ratio=4"]] {
        let think = reg.build("think", &parse_settings(&set.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()).unwrap();
        let mut full = new_caches_for(&lm, &FullCacheFactory, ids.len(), Some(prompt.len())).unwrap();
        let mut thin = new_caches_for(&lm, think.as_ref(), ids.len(), Some(prompt.len())).unwrap();
        let _ = prefill(&mut lm, &mut full, prompt, 0, None).unwrap();
        let _ = prefill(&mut lm, &mut thin, prompt, 0, None).unwrap();
        end_prefill(&mut full).unwrap();
        end_prefill(&mut thin).unwrap();
        let pruned = 0.5;
        let tokens_kept = if set.contains(&"ratio=4") { 0.25 } else { 1.0 };
        let (kf, kt) = (named_bytes(&full, "k"), named_bytes(&thin, "k"));
        let want = (kf as f64 * (1.0 - pruned) * tokens_kept).round() as u64;
        assert_eq!(kt, want, "{set:?}: key bytes {kt}, full {kf}");
        assert_eq!(named_bytes(&thin, "v") as f64, named_bytes(&full, "v") as f64 * tokens_kept, "{set:?}: values keep every channel");
        let (mut worst, mut agree) = (0f64, 0usize);
        for (i, &t) in rest.iter().enumerate() {
            let x = Tensor::from_slice(&[t as i64]).unsqueeze(0);
            let pos = prompt.len() + i;
            let lf = lm.transformer_mut("think test").unwrap().forward(&x, pos, &mut full, Logits::Last).unwrap();
            let lt = lm.transformer_mut("think test").unwrap().forward(&x, pos, &mut thin, Logits::Last).unwrap();
            worst = worst.max((&lf - &lt).abs().max().double_value(&[]));
            agree += usize::from(lf.argmax(-1, false).int64_value(&[0]) == lt.argmax(-1, false).int64_value(&[0]));
            assert!(lt.isfinite().all().int64_value(&[]) == 1, "{set:?}: finite logits");
        }
        let (kf, kt) = (named_bytes(&full, "k"), named_bytes(&thin, "k"));
        assert_eq!(
            kt,
            (kf as f64 * (1.0 - pruned) * if tokens_kept < 1.0 { (100.0 + 32.0) / 432.0 } else { 1.0 }).round() as u64,
            "{set:?}: key bytes after decoding"
        );
        let vocab = lm.transformer("think test").unwrap().config.vocab_size;
        report.push(format!(
            "think {set:?}: key bytes {kt} of the full cache's {kf} ({:.4}); largest |logit difference| over {} teacher-forced steps {worst:.4}; argmax agrees on {agree} of {} (vocabulary {vocab})",
            kt as f64 / kf as f64,
            rest.len(),
            rest.len()
        ));
    }
    for line in &report {
        eprintln!("{line}");
    }
}
