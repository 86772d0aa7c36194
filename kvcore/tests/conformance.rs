//! The conformance suite over every registered cache method (the in-tree families through
//! `kvplugins`, and the external template linked statically), as named trials
//! `<method>/<case>/<property>` (see `kvcore::conformance`): `cargo test --release --test
//! conformance knorm` runs one method, `-- --list` lists the trials. Prompt compressors are not
//! cache methods (they run with the full cache over a shorter prompt) and are tested elsewhere.

mod common;

use kvcore::conformance::{trials, Bench, Subject};
use kvcore::registry::Registry;
use std::sync::OnceLock;

use kvplugin_example_external as _;
use kvplugins as _;

const EXPECTED: &[&str] = &[
    "adakv",
    "chunkkv",
    "example-recent",
    "expected-attention",
    "flexgen",
    "full",
    "h2o",
    "infllm",
    "int4",
    "int8",
    "keydiff",
    "kivi",
    "knorm",
    "pyramidkv",
    "quest",
    "random",
    "snapkv",
    "streamingllm",
    "think",
    "tova",
];

fn bench() -> &'static Bench {
    static B: OnceLock<Bench> = OnceLock::new();
    B.get_or_init(|| Bench::new(&common::smollm2_gguf()).expect("the tiny conformance model"))
}

fn main() {
    let mut args = libtest_mimic::Arguments::from_args();
    // One model, shared: trials run one at a time (each method's run is made once and shared by
    // the trials that read it).
    args.test_threads = Some(1);
    let reg = Registry::builtin().expect("registry");
    let subjects: Vec<Subject> = reg.iter().filter(|m| !m.is_prompt()).map(Subject::from_method).collect();
    let mut list = vec![libtest_mimic::Trial::test("registry/every-expected-method-is-registered", move || {
        let names = reg.names();
        let missing: Vec<&&str> = EXPECTED.iter().filter(|e| !names.iter().any(|n| n == *e)).collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("not registered: {missing:?} (registered: {names:?})").into())
        }
    })];
    for t in trials(&subjects) {
        let name = t.name.clone();
        list.push(libtest_mimic::Trial::test(name, move || t.run(bench()).map_err(Into::into)));
    }
    libtest_mimic::run(&args, list).exit();
}
