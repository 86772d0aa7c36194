//! `context_id` (the report's cluster key): samples of one task that share a context (a
//! haystack, a document) carry the same id, and samples whose contexts differ carry different
//! ids — for each task that emits it (passkey, Kamradt, the RULER tasks with a shared haystack,
//! LongBench), on small made-up data so the checks need no downloads. The tasks whose samples
//! draw their own context carry none.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use kvtasks::longbench::{longbench_context_id, longbench_samples};
use kvtasks::needle::{self, Essays, KamradtConfig, PasskeyConfig};
use kvtasks::ruler::{self, RulerConfig, RulerResources, RulerTask, NOISE};
use kvtasks::sample::{context_id, fnv1a64, ByteTokenizer, Fnv1a64, Sample, CONTEXT_ID_KEY};
use serde_json::{json, Value};

fn cid(s: &Sample) -> &str {
    s.metadata.get(CONTEXT_ID_KEY).and_then(Value::as_str).unwrap_or_else(|| panic!("{}: no {CONTEXT_ID_KEY}", s.id))
}

/// For every pair of samples: same id exactly when `haystack` (the context without its needles)
/// is the same text.
fn assert_ids_match_haystacks(samples: &[Sample], haystack: &dyn Fn(&Sample) -> String) {
    let hs: Vec<(String, &str)> = samples.iter().map(|s| (haystack(s), cid(s))).collect();
    for (i, (ha, ia)) in hs.iter().enumerate() {
        for (j, (hb, ib)) in hs.iter().enumerate().skip(i + 1) {
            assert_eq!(ha == hb, ia == ib, "{} vs {}: haystacks equal {}, ids {ia} {ib}", samples[i].id, samples[j].id, ha == hb);
        }
    }
}

fn distinct<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> BTreeSet<String> {
    samples.into_iter().map(|s| cid(s).to_string()).collect()
}

fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn fnv1a64_is_the_standard_hash() {
    // The published FNV-1a 64 test vectors.
    assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    assert_eq!(Fnv1a64::new().write(b"foo").write(b"bar").finish(), fnv1a64(b"foobar"));
    assert_eq!(context_id("passkey", "foobar"), "passkey-85944171f73967e8");
    assert_eq!(context_id("x", ""), "x-cbf29ce484222325");
}

// ----- needle tasks -----

fn essays(tag: &str) -> Essays {
    let text = |f: usize| (0..60).map(|i| format!("Essay {f} {tag} says thing number {i} plainly. It matters.\n")).collect::<String>();
    Essays { dir: PathBuf::from("made-up"), files: vec![("a.txt".into(), text(1)), ("b.txt".into(), text(2))] }
}

fn passkey_cfg(seed: u64) -> PasskeyConfig {
    PasskeyConfig { background_len_min: 100, background_len_max: 1300, n_background_lens: 3, n_depths: 4, iterations: 2, seed, ..PasskeyConfig::default() }
}

/// The passkey context without its needle, white space squashed.
fn passkey_haystack(s: &Sample) -> String {
    squash(&s.context.replace(&needle::PASSKEY_TEMPLATE.replace("<PASS KEY>", &s.answers[0]), " "))
}

#[test]
fn passkey_samples_of_one_haystack_share_an_id() {
    let es = essays("x");
    let samples = needle::passkey_samples(&es, &passkey_cfg(42)).unwrap();
    assert_eq!(samples.len(), 3 * 4 * 2);
    for s in &samples {
        let len = s.metadata["background_len_words"].as_u64().unwrap() as usize;
        assert_eq!(cid(s), needle::passkey_context_id(&needle::make_background(&es, len)), "{}", s.id);
        assert_eq!(squash(&needle::make_background(&es, len)), passkey_haystack(s), "{}", s.id);
    }
    // (a) every depth and iteration of one length: one id; (b) each length its own.
    for len in passkey_cfg(42).background_lens() {
        let at: Vec<&Sample> = samples.iter().filter(|s| s.metadata["background_len_words"] == json!(len)).collect();
        assert_eq!(at.len(), 8);
        assert_eq!(distinct(at.iter().copied()).len(), 1, "length {len}");
        assert_ne!(at[0].context, at[7].context, "the needle moves, the id stays");
    }
    assert_eq!(distinct(&samples).len(), 3);
    assert_ids_match_haystacks(&samples, &passkey_haystack);
    // The seed draws the keys, not the haystack: same ids, other keys.
    let other_seed = needle::passkey_samples(&es, &passkey_cfg(7)).unwrap();
    assert_ne!(other_seed[0].answers, samples[0].answers);
    for (a, b) in samples.iter().zip(&other_seed) {
        assert_eq!(cid(a), cid(b), "{}", a.id);
    }
    // Other essays, same lengths: other haystacks, other ids.
    let other_text = needle::passkey_samples(&essays("y"), &passkey_cfg(42)).unwrap();
    let mut both = samples.clone();
    both.extend(other_text.iter().cloned());
    assert!(distinct(&samples).is_disjoint(&distinct(&other_text)));
    assert_ids_match_haystacks(&both, &passkey_haystack);
}

fn kamradt_cfg(lengths: Vec<usize>) -> KamradtConfig {
    KamradtConfig { context_lengths: lengths, depth_percents: vec![0.0, 30.0, 50.0, 100.0], final_context_length_buffer: 20, ..KamradtConfig::default() }
}

fn kamradt_haystack(s: &Sample) -> String {
    s.context.replacen(needle::KAMRADT_NEEDLE, "", 1)
}

#[test]
fn kamradt_samples_of_one_length_share_an_id() {
    let es = essays("x");
    let tok = ByteTokenizer;
    // 50 and 60 leave no room for any haystack next to the needle: both contexts are the needle
    // alone, the same text, so the same id.
    let cfg = kamradt_cfg(vec![400, 900, 2000, 50, 60]);
    let samples = needle::kamradt_samples(&es, &tok, &cfg).unwrap();
    assert_eq!(samples.len(), 5 * 4);
    for &len in &cfg.context_lengths {
        let at: Vec<&Sample> = samples.iter().filter(|s| s.metadata["context_length_tokens"] == json!(len)).collect();
        assert_eq!(at.len(), 4);
        assert_eq!(distinct(at.iter().copied()).len(), 1, "length {len}");
        assert_eq!(cid(at[0]), needle::kamradt_context_id(&kamradt_haystack(at[0])));
    }
    assert_eq!(distinct(&samples).len(), 4, "400, 900, 2000, and the empty haystack of 50 and 60");
    assert_eq!(cid(&samples[12]), cid(&samples[16]));
    assert_eq!(cid(&samples[12]), needle::kamradt_context_id(""));
    assert_ids_match_haystacks(&samples, &kamradt_haystack);
    // Other essays: other ids (apart from the empty haystack).
    let other = needle::kamradt_samples(&essays("y"), &tok, &kamradt_cfg(vec![400, 900])).unwrap();
    assert!(distinct(&samples[..12]).is_disjoint(&distinct(&other)));
    // Same output as the one-cell builder.
    let mut tokens = Vec::new();
    let mut text = String::new();
    while tokens.len() < 2000 {
        for (_, t) in &es.files {
            text.push_str(t);
        }
        tokens = kvtasks::sample::TextTokenizer::encode(&tok, &text);
    }
    for s in &samples {
        let len = s.metadata["context_length_tokens"].as_u64().unwrap() as usize;
        let depth = s.metadata["depth_percent"].as_f64().unwrap();
        let (ctx, pos, hay) = needle::kamradt_context(&tokens, &tok, len, depth, &cfg.needle, 20);
        assert_eq!(
            (ctx.as_str(), json!(pos), json!(hay)),
            (s.context.as_str(), s.metadata["needle_token_position"].clone(), s.metadata["haystack_tokens"].clone())
        );
        assert_eq!(needle::kamradt_haystack(&tokens, &tok, len, &cfg.needle, 20).len(), hay);
    }
}

// ----- RULER -----

fn words(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:03}")).collect()
}

fn ruler_res(tag: &str) -> RulerResources {
    let text: String = (0..400).map(|i| format!("The {tag} essay sentence {i} is about nothing much. ")).collect();
    RulerResources {
        essay_words: text.split_whitespace().map(str::to_string).collect(),
        nouns: words("n", 300),
        adjectives: words("j", 300),
        verbs: words("v", 300),
    }
}

/// The RULER context without its needles (NIAH) or its chain (vt).
fn ruler_haystack(s: &Sample) -> String {
    if s.context.contains("VAR ") {
        return s.context.lines().filter(|l| !l.starts_with("VAR ")).collect::<Vec<_>>().join("\n");
    }
    let re = regex::Regex::new(r"One of the special magic \S+ for \S+ is: \S+\.").unwrap();
    squash(&re.replace_all(&s.context, " "))
}

fn ruler_set(task: RulerTask, res: &RulerResources, seed: u64) -> Vec<Sample> {
    ruler_at(task, res, seed, &[2048, 3072, 4096])
}

fn ruler_at(task: RulerTask, res: &RulerResources, seed: u64, lengths: &[usize]) -> Vec<Sample> {
    let mut out = Vec::new();
    for &max in lengths {
        let cfg = RulerConfig { max_seq_length: max, num_samples: 4, seed };
        out.extend(ruler::ruler_samples(task, &cfg, res, &ByteTokenizer).unwrap_or_else(|e| panic!("{}: {e}", task.name())));
    }
    out
}

#[test]
fn ruler_samples_with_one_shared_haystack_share_an_id() {
    let res = ruler_res("x");
    for task in [RulerTask::NiahSingle1, RulerTask::NiahSingle2, RulerTask::NiahSingle3, RulerTask::NiahMultikey1, RulerTask::NiahMultiquery, RulerTask::Vt] {
        let samples = ruler_set(task, &res, 3);
        // (a) the same haystack size is the same haystack, the same id; (b) other sizes, other ids.
        let units: BTreeSet<u64> = samples.iter().map(|s| s.metadata["haystack_units"].as_u64().unwrap()).collect();
        assert!(units.len() >= 3, "{}: {units:?}", task.name());
        for &u in &units {
            let at: Vec<&Sample> = samples.iter().filter(|s| s.metadata["haystack_units"] == json!(u)).collect();
            assert_eq!(distinct(at.iter().copied()).len(), 1, "{} at {u} units", task.name());
        }
        assert_eq!(distinct(&samples).len(), units.len(), "{}", task.name());
        let sharing = samples.iter().enumerate().any(|(i, a)| samples[i + 1..].iter().any(|b| cid(a) == cid(b) && a.context != b.context));
        assert!(sharing, "{}: some samples share a haystack, with other needles", task.name());
        assert_ids_match_haystacks(&samples, &ruler_haystack);
        // Noise haystacks are the noise sentence repeated.
        if matches!(task, RulerTask::NiahSingle1 | RulerTask::Vt) {
            for s in &samples {
                let n = s.metadata["haystack_units"].as_u64().unwrap() as usize;
                assert_eq!(cid(s), ruler::noise_context_id(n));
                assert_eq!(squash(&ruler_haystack(s)), squash(&vec![NOISE; n].join("\n")), "{}", s.id);
            }
        }
        // Another seed draws other needles into the same haystacks.
        let other_seed = ruler_set(task, &res, 11);
        for (a, b) in samples.iter().zip(&other_seed) {
            if a.metadata["haystack_units"] == b.metadata["haystack_units"] {
                assert_eq!(cid(a), cid(b), "{}", a.id);
            }
        }
        // Other essays: other essay haystacks, other ids (noise stays noise).
        if task.niah_spec().is_some_and(|s| s.haystack == ruler::Haystack::Essay) {
            let other = ruler_set(task, &ruler_res("y"), 3);
            assert!(distinct(&samples).is_disjoint(&distinct(&other)), "{}", task.name());
            let mut both = samples.clone();
            both.extend(other);
            assert_ids_match_haystacks(&both, &ruler_haystack);
        }
    }
}

#[test]
fn ruler_samples_that_draw_their_own_context_carry_no_id() {
    let res = ruler_res("x");
    for task in [RulerTask::NiahMultikey2, RulerTask::NiahMultikey3, RulerTask::Cwe, RulerTask::Fwe] {
        for s in ruler_at(task, &res, 3, &[2048, 8192]) {
            assert!(!s.metadata.contains_key(CONTEXT_ID_KEY), "{}", s.id);
        }
    }
}

// ----- LongBench -----

fn write_jsonl(dir: &Path, file: &str, rows: &[(&str, &str, &str)]) {
    let mut text = String::new();
    for (id, context, input) in rows {
        let r =
            json!({"input": input, "context": context, "answers": ["x"], "length": 3, "dataset": "qasper", "language": "en", "all_classes": null, "_id": id});
        text.push_str(&r.to_string());
        text.push('\n');
    }
    std::fs::write(dir.join(file), text).unwrap();
}

#[test]
fn longbench_records_with_one_context_share_an_id() {
    let dir = tempfile::tempdir().unwrap();
    let paper = "A paper about caches.\nIt has two sections.";
    write_jsonl(
        dir.path(),
        "qasper.jsonl",
        &[
            ("q0", paper, "What is it about?"),
            ("q1", paper, "How many sections?"),
            ("q2", "Another paper.", "What is it about?"),
            ("q3", "A paper about caches.\nIt has two sections. ", "Trailing space: another text."),
            ("q4", "", "No context at all."),
            ("q5", "", "Nor here."),
        ],
    );
    let s = longbench_samples(dir.path(), "qasper", false, None).unwrap();
    // (a) one document, one id; (b) other text, other id.
    assert_eq!(cid(&s[0]), cid(&s[1]));
    assert_ne!(cid(&s[0]), cid(&s[2]));
    assert_ne!(cid(&s[0]), cid(&s[3]));
    assert_eq!(Some(cid(&s[0]).to_string()), longbench_context_id(paper));
    assert_eq!(cid(&s[0]), context_id("longbench", paper));
    assert_ids_match_haystacks(&s[..4], &|x: &Sample| x.context.clone());
    // An empty context shares nothing: no id.
    assert!(!s[4].metadata.contains_key(CONTEXT_ID_KEY) && !s[5].metadata.contains_key(CONTEXT_ID_KEY));
    assert_eq!(longbench_context_id(""), None);
    // The other keys are all still there.
    let keys: Vec<&str> = s[0].metadata.keys().map(String::as_str).collect();
    assert_eq!(keys, ["category", "chat_template", "context_id", "language", "length", "longbench_e", "stop_at_newline", "subset"]);
}
