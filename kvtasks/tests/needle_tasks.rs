//! Needle tasks: the paper's passkey grid and inputs (checked byte for byte against a Python
//! restatement of longctx_bench's construction, keys included), its metrics, Kamradt's needle
//! placement, determinism, and the CPython-compatible RNG.

use std::path::PathBuf;
use std::process::Command;

use kvtasks::needle::{self, Essays, KamradtConfig, PasskeyConfig};
use kvtasks::pyrandom::PyRandom;
use kvtasks::sample::{self, ByteTokenizer, TextTokenizer};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn python_ref(args: &[&str]) -> serde_json::Value {
    let py = std::env::var_os("KVBENCH_PYTHON").map(PathBuf::from).unwrap_or_else(|| root().join(".venv/bin/python"));
    let script = root().join("scripts/reference/kvtasks_reference.py");
    let out = Command::new(&py)
        .arg(&script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the Python reference {} (set KVBENCH_PYTHON to a python3): {e}", py.display()));
    assert!(out.status.success(), "{} failed: {}", script.display(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn essays() -> Essays {
    Essays::from_cache().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn pyrandom_matches_cpython() {
    for seed in [42u64, 0, 123456789012] {
        let r = python_ref(&["pyrandom", &seed.to_string()]);
        let mut m = PyRandom::new(seed);
        let u32s: Vec<u64> = (0..5).map(|_| u64::from(m.next_u32())).collect();
        assert_eq!(serde_json::json!(u32s), r["u32"], "seed {seed}");
        let fl: Vec<u64> = (0..5).map(|_| (m.random() * 9007199254740992.0) as u64).collect();
        assert_eq!(serde_json::json!(fl), r["random"]);
        let rb: Vec<u64> = (0..20).map(|_| m.randbelow(10)).collect();
        assert_eq!(serde_json::json!(rb), r["randbelow10"]);
        let ri: Vec<i64> = (0..5).map(|_| m.randint(1_000_000, 9_999_999)).collect();
        assert_eq!(serde_json::json!(ri), r["randint"]);
        let mut x: Vec<usize> = (0..30).collect();
        m.shuffle(&mut x);
        assert_eq!(serde_json::json!(x), r["shuffle30"]);
        assert_eq!(serde_json::json!(m.sample_indices(20, 7)), r["sample_pool"]);
        assert_eq!(serde_json::json!(m.sample_indices(1000, 12)), r["sample_set"]);
        let digits: Vec<String> = (0..10).map(|_| m.choice(&['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']).unwrap().to_string()).collect();
        assert_eq!(serde_json::json!(digits), r["choice"]);
        assert_eq!(m.getrandbits(128).to_string(), r["bits128"].as_str().unwrap());
        assert_eq!(serde_json::json!(m.getrandbits(40) as u64), r["bits40"]);
    }
}

#[test]
fn passkey_grid_matches_the_paper() {
    let cfg = PasskeyConfig::default();
    assert_eq!(cfg.background_lens(), vec![512, 2730, 4949, 7168, 9386, 11605, 13824, 16042, 18261, 20480]);
    let d = cfg.depths();
    assert_eq!(d.len(), 10);
    assert_eq!(d[0], 0.0);
    assert_eq!(d[9], 1.0);
    assert!((d[1] - 1.0 / 9.0).abs() < 1e-15);
}

#[test]
fn passkey_inputs_match_python_reference_and_are_deterministic() {
    let es = essays();
    assert_eq!(es.files.len(), 49, "pg_essays holds 48 essays + rss.txt");
    let cfg = PasskeyConfig::default();
    let samples = needle::passkey_samples(&es, &cfg).unwrap();
    assert_eq!(samples.len(), 300);
    // Determinism: byte-identical serialisation twice.
    let again = needle::passkey_samples(&es, &cfg).unwrap();
    assert_eq!(sample::to_jsonl(&samples).unwrap(), sample::to_jsonl(&again).unwrap());

    let mut ref_cfg = serde_json::to_value(&cfg).unwrap();
    ref_cfg["iterations"] = serde_json::json!(cfg.iterations);
    ref_cfg["full_text_upto"] = serde_json::json!(2730);
    let reference = python_ref(&["passkey", es.dir.to_str().unwrap(), &ref_cfg.to_string()]);
    let reference = reference.as_array().unwrap();
    assert_eq!(reference.len(), 300);
    let mut compared = 0;
    for (s, r) in samples.iter().zip(reference) {
        assert_eq!(s.answers[0], r["key"].as_str().unwrap(), "{}", s.id);
        assert_eq!(s.answers[0].len(), 7);
        if let Some(c) = r.get("content") {
            assert_eq!(s.context, c.as_str().unwrap(), "{}", s.id);
            compared += 1;
        }
    }
    assert_eq!(compared, 60);
    let first = &samples[0];
    assert_eq!(first.prompt(), format!("{}{}{}", needle::PASSKEY_INSTRUCTION, first.context, needle::PASSKEY_QUESTION));
}

#[test]
fn passkey_64_digit_keys() {
    let es = essays();
    let cfg = PasskeyConfig { background_len_max: 512, n_background_lens: 1, n_depths: 2, key_digits: 64, ..Default::default() };
    let s = needle::passkey_samples(&es, &cfg).unwrap();
    assert_eq!(s.len(), 6);
    assert!(s.iter().all(|x| x.answers[0].len() == 64 && x.answers[0].bytes().all(|b| b.is_ascii_digit())));
}

#[test]
fn passkey_needle_sits_at_the_requested_word_depth() {
    let es = essays();
    let cfg = PasskeyConfig { background_len_min: 4949, background_len_max: 4949, n_background_lens: 1, iterations: 1, ..Default::default() };
    for s in needle::passkey_samples(&es, &cfg).unwrap() {
        let depth = s.metadata["depth"].as_f64().unwrap();
        let needle_start = s.context.find("The pass key is ").unwrap();
        let words_before = needle::words(&s.context[..needle_start]).len();
        assert_eq!(words_before, (4949.0 * depth) as usize, "{}", s.id);
        let total_words = needle::words(&s.context).len();
        assert_eq!(total_words, 4949 + needle::words(&needle::PASSKEY_TEMPLATE.replace("<PASS KEY>", "0000000")).len());
        // In byte tokens the needle is also near the requested depth.
        let frac = needle_start as f64 / s.context.len() as f64;
        assert!((frac - depth).abs() < 0.03, "{}: {frac} vs {depth}", s.id);
    }
}

#[test]
fn passkey_metrics_match_python_reference() {
    let pairs = [
        ("1234567", " 1234567. Remember it."),
        ("1234567", "The pass key is 123 4567"),
        ("0012345", "I think it is 0012346"),
        ("The Answer", "the answer, an answer"),
        ("9876543", ""),
        ("abc", "xxabxabcx"),
    ];
    let json = serde_json::to_string(&pairs.iter().map(|(a, r)| [a, r]).collect::<Vec<_>>()).unwrap();
    let reference = python_ref(&["passkey_metrics", &json]);
    for ((a, r), want) in pairs.iter().zip(reference.as_array().unwrap()) {
        assert_eq!(sample::passkey_exact_match(a, r), want[0].as_f64().unwrap(), "{a} / {r}");
        assert!((sample::passkey_partial_match(a, r) - want[1].as_f64().unwrap()).abs() < 1e-12, "{a} / {r}");
    }
}

#[test]
fn kamradt_needle_within_one_percent_of_depth() {
    let es = essays();
    let tok = ByteTokenizer;
    let cfg = KamradtConfig { context_lengths: vec![50_000, 120_000], depth_percents: vec![0.0, 10.0, 25.0, 50.0, 77.0, 100.0], ..Default::default() };
    let samples = needle::kamradt_samples(&es, &tok, &cfg).unwrap();
    assert_eq!(samples.len(), 12);
    for s in &samples {
        let len = s.metadata["context_length_tokens"].as_u64().unwrap() as usize;
        let depth = s.metadata["depth_percent"].as_f64().unwrap();
        let ids = tok.encode(&s.context);
        assert!(ids.len() <= len - 200, "buffer respected");
        let pos = s.context.find(needle::KAMRADT_NEEDLE).expect("needle present");
        let hay = ids.len() - tok.count(needle::KAMRADT_NEEDLE);
        let frac = pos as f64 / hay as f64;
        assert!((frac - depth / 100.0).abs() <= 0.01, "{}: {frac}", s.id);
        assert_eq!(s.context.matches(needle::KAMRADT_NEEDLE).count(), 1);
        if depth > 0.0 && depth < 100.0 {
            assert!(s.context[..pos].ends_with('.'), "needle placed after a sentence end");
        }
    }
    let a = sample::to_jsonl(&samples).unwrap();
    assert_eq!(a, sample::to_jsonl(&needle::kamradt_samples(&es, &tok, &cfg).unwrap()).unwrap());
    // Defaults are Kamradt's.
    let d = KamradtConfig::default();
    assert_eq!(d.context_lengths.len(), 35);
    assert_eq!((d.context_lengths[0], d.context_lengths[34]), (1000, 16000));
    assert_eq!(d.depth_percents[1], 3.0);
}

#[test]
fn kamradt_scoring_uses_key_phrases() {
    let ans: Vec<String> = needle::KAMRADT_KEY_PHRASES.iter().map(|s| s.to_string()).collect();
    let good = "The best thing to do is eat a sandwich and sit in Dolores Park.";
    assert_eq!(sample::key_phrase_match(good, &ans), 1.0);
    assert_eq!(sample::key_phrase_match("Go to Dolores Park", &ans), 0.5);
    assert_eq!(sample::key_phrase_match("Visit the Golden Gate", &ans), 0.0);
}

#[test]
fn context_ids_name_one_haystack_per_length() {
    let es = essays();
    let ids = |samples: &[kvtasks::sample::Sample], len_key: &str| {
        let mut by_len: std::collections::BTreeMap<u64, std::collections::BTreeSet<String>> = Default::default();
        for s in samples {
            let id = s.metadata[sample::CONTEXT_ID_KEY].as_str().unwrap().to_string();
            by_len.entry(s.metadata[len_key].as_u64().unwrap()).or_default().insert(id);
        }
        by_len
    };
    // The paper's grid: 10 haystacks of 30 samples each.
    let passkey = needle::passkey_samples(&es, &PasskeyConfig::default()).unwrap();
    let by_len = ids(&passkey, "background_len_words");
    assert_eq!(by_len.len(), 10);
    assert!(by_len.values().all(|s| s.len() == 1));
    assert_eq!(by_len.values().flatten().collect::<std::collections::BTreeSet<_>>().len(), 10);
    let cfg = KamradtConfig { context_lengths: vec![4000, 8000], depth_percents: vec![0.0, 50.0, 100.0], ..Default::default() };
    let kamradt = needle::kamradt_samples(&es, &ByteTokenizer, &cfg).unwrap();
    let by_len = ids(&kamradt, "context_length_tokens");
    assert!(by_len.values().all(|s| s.len() == 1));
    assert_ne!(by_len[&4000], by_len[&8000]);
}

#[test]
fn kamradt_depths_from_a_task_spec_are_whole_percents_as_the_original_rounds_them() {
    // needlehaystack: `np.round(np.linspace(0, 100, num=n)).astype(int)`.
    let spec = kvtasks::spec::TaskSpec { task: "kamradt".into(), lengths: vec![400], depths: 4, ..Default::default() };
    let samples = spec.build(&kvtasks::sample::ByteTokenizer).unwrap();
    let depths: Vec<f64> = samples.iter().map(|s| s.metadata["depth_percent"].as_f64().unwrap()).collect();
    assert_eq!(depths, vec![0.0, 33.0, 67.0, 100.0]);
    assert_eq!(samples[1].id, "kamradt-400t-33pct");
}
