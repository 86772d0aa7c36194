//! Parity of the GGUF-built tokenizer with transformers' tokenizer loaded from the same GGUF, on the
//! 2,000-line corpus of `scripts/reference/parity_corpus.py`, for SmolLM2 and Qwen2.5.
//!
//! The reference script reports transformers' ids as they are (`raw_*`) and after the corrections
//! it derives from the GGUF metadata (`ref_*`; see the script's docstring). kvbench must equal the
//! corrected reference on every line, in both modes (transformers' defaults, and special-token
//! text treated as plain text), and decode back to the input; every raw difference must have a
//! cause the script names.

use std::path::Path;
use std::process::Command;

use kvformats::gguf::GgufFile;
use kvformats::tokenizer::{build_tokenizer, GgufTokenizerSpec};
use serde_json::Value;

mod common;
use common::{model, python, workspace_root};

fn reference(gguf: &Path) -> Value {
    let out = tempfile::NamedTempFile::new().expect("temp file");
    let script = workspace_root().join("scripts/reference/tokenizer_reference.py");
    let status = Command::new(python())
        .arg(&script)
        .arg("--gguf")
        .arg(gguf)
        .arg("--out")
        .arg(out.path())
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(status.success(), "{} failed ({status}); its stderr is above", script.display());
    serde_json::from_slice(&std::fs::read(out.path()).expect("read reference")).expect("reference is JSON")
}

fn ids(value: &Value) -> Vec<u32> {
    value.as_array().expect("id list").iter().map(|v| v.as_u64().expect("id") as u32).collect()
}

fn check_parity(relative: &str) {
    let path = model(relative);
    let spec = GgufTokenizerSpec::from_gguf(&GgufFile::open(&path).expect("open gguf")).expect("spec");
    let tokenizer = build_tokenizer(&spec).expect("build tokenizer");
    let mut plain = tokenizer.clone();
    plain.set_encode_special_tokens(true);
    let nfc = spec.pre.as_deref() == Some("qwen2");

    let reference = reference(&path);
    let lines = reference["lines"].as_array().expect("lines");
    assert_eq!(lines.len(), 2000, "the parity corpus has 2,000 lines");
    let (mut same_special, mut same_plain, mut same_decode, mut raw_special, mut raw_plain) = (0, 0, 0, 0, 0);
    let mut causes = std::collections::BTreeMap::<String, usize>::new();
    let mut failures = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let text = line["text"].as_str().expect("text");
        let ours_special = tokenizer.encode(text, true).expect("encode").get_ids().to_vec();
        let ours_plain = plain.encode(text, false).expect("encode").get_ids().to_vec();
        let decoded = tokenizer.decode(&ours_special, false).expect("decode");
        let expected_text = if nfc { line["nfc"].as_str() } else { line["text"].as_str() }.expect("text");

        let ok_special = ours_special == ids(&line["ref_special"]);
        let ok_plain = ours_plain == ids(&line["ref_plain"]);
        let ok_decode = decoded == expected_text && Some(decoded.as_str()) == line["ref_decoded"].as_str();
        same_special += ok_special as usize;
        same_plain += ok_plain as usize;
        same_decode += ok_decode as usize;
        raw_special += (ours_special == ids(&line["raw_special"])) as usize;
        raw_plain += (ours_plain == ids(&line["raw_plain"])) as usize;
        for key in ["causes_special", "causes_plain"] {
            for cause in line[key].as_array().expect("causes") {
                *causes.entry(format!("{key}: {}", cause.as_str().unwrap_or("?"))).or_default() += 1;
            }
        }
        if !(ok_special && ok_plain && ok_decode) && failures.len() < 10 {
            failures.push(format!(
                "line {i} {text:?}: special ours {ours_special:?} ref {}; plain ours {ours_plain:?} ref {}; decoded {decoded:?}",
                line["ref_special"], line["ref_plain"]
            ));
        }
    }
    eprintln!(
        "{relative}: transformers class {}, corrections {}\n  vs corrected reference: special {same_special}/2000, plain {same_plain}/2000, \
         round trip {same_decode}/2000\n  vs raw transformers: special {raw_special}/2000, plain {raw_plain}/2000\n  raw differences by cause: {causes:?}",
        reference["transformers_class"], reference["corrections"]
    );
    assert!(failures.is_empty(), "{relative}: mismatches:\n{}", failures.join("\n"));
    assert!(
        !causes.keys().any(|k| k.ends_with("unexplained")),
        "{relative}: transformers differs from the corrected reference for a reason the script cannot name: {causes:?}"
    );
}

#[test]
fn smollm2_matches_transformers_on_parity_corpus() {
    check_parity("smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf");
}

#[test]
fn qwen25_matches_transformers_on_parity_corpus() {
    check_parity("qwen2.5-0.5b/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
}
