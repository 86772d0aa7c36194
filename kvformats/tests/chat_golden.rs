//! Chat templates rendered by kvbench equal transformers' renders (scripts/reference/chat_reference.py)
//! for the SmolLM2 and Qwen2.5 GGUF templates and the Llama-3, Mistral `[INST]` and feature
//! templates of tests/fixtures/chat_templates.json, over multi-turn conversations with and without
//! the generation prompt; plus loading from tokenizer_config.json and error reporting.

use std::path::Path;
use std::process::Command;

use kvformats::chat::{ChatError, ChatMessage, ChatTemplate};
use kvformats::gguf::GgufFile;
use kvformats::tokenizer::GgufTokenizerSpec;
use serde_json::{json, Value};

mod common;
use common::{model, python, workspace_root};

fn conversations() -> Vec<(&'static str, Vec<ChatMessage>)> {
    let m = ChatMessage::new;
    vec![
        ("user only", vec![m("user", "Hi there! What is KV-cache compression?")]),
        ("system and user", vec![m("system", "You are a concise assistant."), m("user", "Summarise: the cache grows linearly with context.")]),
        (
            "multi-turn with system",
            vec![
                m("system", "You answer in one sentence.\nBe exact."),
                m("user", "  How many KV heads does SmolLM2 have?  "),
                m("assistant", "It has 3 KV heads — and 9 query heads.\n\n"),
                m("user", "Et en français ? 你好 👋 {\"json\": [1, 2]}"),
            ],
        ),
        (
            "multi-turn without system",
            vec![m("user", "Hi"), m("assistant", "Hello! <b>How</b> can I help & 'why'?"), m("user", "Count: 1\t2\t3"), m("assistant", "1, 2, 3.")],
        ),
    ]
}

struct Case {
    label: String,
    template: ChatTemplate,
    request: Value,
    messages: Vec<ChatMessage>,
    generation: bool,
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    let mut add = |name: &str, source: &str, bos: Option<&str>, eos: Option<&str>, gguf: Option<&Path>, convs: &[(&str, Vec<ChatMessage>)]| {
        for (conv, messages) in convs {
            for generation in [false, true] {
                out.push(Case {
                    label: format!("{name} / {conv} / generation prompt {generation}"),
                    template: ChatTemplate::new(source, bos.map(String::from), eos.map(String::from)).expect("template compiles"),
                    request: json!({
                        "gguf": gguf, "template": if gguf.is_some() { Value::Null } else { json!(source) },
                        "bos_token": bos, "eos_token": eos, "messages": messages, "add_generation_prompt": generation,
                    }),
                    messages: messages.clone(),
                    generation,
                });
            }
        }
    };
    for relative in ["smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf", "qwen2.5-0.5b/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"] {
        let path = model(relative);
        let spec = GgufTokenizerSpec::from_gguf(&GgufFile::open(&path).expect("open")).expect("spec");
        let source = spec.chat_template.clone().expect("the GGUF has tokenizer.chat_template");
        add(relative, &source, spec.bos_token(), spec.eos_token(), Some(&path), &conversations());
    }
    let fixtures: Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat_templates.json")).expect("fixture"))
            .expect("fixture is JSON");
    for (name, fixture) in fixtures.as_object().expect("object") {
        let mut convs = conversations();
        if name == "mistral_inst" {
            // Roles must alternate: this one makes the template call raise_exception.
            convs.push(("roles not alternating", vec![ChatMessage::new("user", "a"), ChatMessage::new("user", "b")]));
        }
        add(name, fixture["template"].as_str().expect("template"), fixture["bos_token"].as_str(), fixture["eos_token"].as_str(), None, &convs);
    }
    out
}

#[test]
fn renders_match_transformers() {
    let cases = cases();
    let dir = tempfile::tempdir().expect("tempdir");
    let request = dir.path().join("request.json");
    let result = dir.path().join("result.json");
    let requests: Vec<&Value> = cases.iter().map(|c| &c.request).collect();
    std::fs::write(&request, json!({ "cases": requests }).to_string()).expect("write request");
    let script = workspace_root().join("scripts/reference/chat_reference.py");
    let status = Command::new(python()).arg(&script).arg(&request).arg(&result).status().unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(status.success(), "{} failed ({status}); its stderr is above", script.display());
    let results: Value = serde_json::from_slice(&std::fs::read(&result).expect("result")).expect("JSON");
    let results = results["results"].as_array().expect("results");
    assert_eq!(results.len(), cases.len());

    let mut failures = Vec::new();
    let mut errors = 0;
    for (case, expected) in cases.iter().zip(results) {
        let ours = case.template.render(&case.messages, case.generation);
        match (ours, expected["rendered"].as_str(), expected["error"].as_str()) {
            (Ok(ours), Some(reference), _) if ours == reference => {}
            (Err(ChatError::Render(e)), None, Some(reference)) => {
                // Both raise; the message given to raise_exception must be the same.
                let ours = format!("{e:#}");
                let message = reference.split_once(": ").map_or(reference, |(_, m)| m);
                if ours.contains(message) {
                    errors += 1;
                } else {
                    failures.push(format!("{}: error {ours:?}, transformers {reference:?}", case.label));
                }
            }
            (ours, reference, error) => failures.push(format!("{}:\n  ours         {ours:?}\n  transformers {reference:?} {error:?}", case.label)),
        }
    }
    eprintln!("{} renders compared ({} of them errors raised by both)", cases.len(), errors);
    assert!(failures.is_empty(), "{} of {} renders differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
    assert!(errors >= 2, "the alternating-roles case must raise in both renderers");
}

#[test]
fn tokenizer_config_forms_are_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("tokenizer_config.json");
    let template = "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{{ eos_token }}{% endfor %}";
    let messages = [ChatMessage::new("user", "hi")];

    std::fs::write(&config, json!({"chat_template": template, "bos_token": "<s>", "eos_token": {"content": "</s>", "lstrip": false}}).to_string())
        .expect("write");
    let rendered = ChatTemplate::from_tokenizer_config(&config).expect("load").render(&messages, false).expect("render");
    assert_eq!(rendered, "<s>[user] hi</s>");

    std::fs::write(
        &config,
        json!({"chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": template}], "bos_token": null}).to_string(),
    )
    .expect("write");
    let rendered = ChatTemplate::from_tokenizer_config(&config).expect("load").render(&messages, false).expect("render");
    assert_eq!(rendered, "[user] hi");

    std::fs::write(&config, json!({"eos_token": "E"}).to_string()).expect("write");
    let err = ChatTemplate::from_tokenizer_config(&config).unwrap_err().to_string();
    assert!(err.contains("tokenizer_config.json") && err.contains("chat_template"), "{err}");
    std::fs::write(dir.path().join("chat_template.jinja"), template).expect("write");
    let rendered = ChatTemplate::from_tokenizer_config(&config).expect("load").render(&messages, false).expect("render");
    assert_eq!(rendered, "[user] hiE");

    std::fs::write(&config, json!({"chat_template": template, "bos_token": 5}).to_string()).expect("write");
    let err = ChatTemplate::from_tokenizer_config(&config).unwrap_err().to_string();
    assert!(err.contains("bos_token") && err.contains("expected"), "{err}");
}

#[test]
fn syntax_errors_are_reported_at_load() {
    let err = ChatTemplate::new("{% for m in messages %}{{ m.content }}", None, None).unwrap_err();
    assert!(matches!(err, ChatError::Syntax(_)), "{err}");
}

/// fastchat `vicuna_v1.1` (`get_conversation_template("vicuna")`, `SeparatorStyle.ADD_COLON_TWO`):
/// `ret = system + " "`, then `role + ": " + message + [" ", "</s>"][i % 2]` per turn, and
/// `"ASSISTANT:"` for the turn left empty, as LongBench's `build_chat` builds LongChat's prompt.
/// The paper's RWKV conversation (issue 24 item 4b), as its `build_chat` writes it for
/// `chat_template = "rwkv"`: the f-string's continuation lines keep the 16 spaces of the Python
/// source they were indented by.
#[test]
fn rwkv_renders_the_papers_preamble() {
    let t = ChatTemplate::builtin("rwkv", None).unwrap();
    let got = t.render(&[ChatMessage::new("user", "Read this: \"a\" {b}\nQuestion: c?")], true).unwrap();
    let want = [
        "User: hi",
        "",
        "                Assistant: Hi. I am your assistant and I will provide expert full response in full details. Please feel free to ask any question and I will always answer it.",
        "",
        "                User: Read this: \"a\" {b}",
        "Question: c?",
        "",
        "                Assistant:",
    ]
    .join("\n");
    assert_eq!(got, want);
}

#[test]
fn vicuna_renders_fastchats_string() {
    let t = ChatTemplate::builtin("vicuna", Some("<s>".into())).unwrap();
    let sys = kvformats::chat::VICUNA_SYSTEM;
    assert_eq!(
        sys,
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and polite answers to the user's questions."
    );
    let one = t.render(&[ChatMessage::new("user", "Summarize:\nthe text.")], true).unwrap();
    assert_eq!(one, format!("<s>{sys} USER: Summarize:\nthe text. ASSISTANT:"));
    let turns = [ChatMessage::new("user", "a"), ChatMessage::new("assistant", "b"), ChatMessage::new("user", "c")];
    assert_eq!(t.render(&turns, true).unwrap(), format!("<s>{sys} USER: a ASSISTANT: b</s>USER: c ASSISTANT:"));
    let custom = [ChatMessage::new("system", "Be brief."), ChatMessage::new("user", "q")];
    assert_eq!(t.render(&custom, true).unwrap(), "<s>Be brief. USER: q ASSISTANT:");
    let err = ChatTemplate::builtin("alpaca", None).unwrap_err().to_string();
    assert!(err.contains("`alpaca`") && err.contains("vicuna"), "{err}");
}
