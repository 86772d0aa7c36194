//! The config checker against a table of bad configs: each gives one message naming the file,
//! the key path and what was expected; a good tree loads and expands into stable cells.

use kvconfig::{cells, load_experiment, parse_shard, shard};
use std::path::Path;

const MODEL: &str = "source = \"smollm2-135m\"\ncontext_limit = 8192\n";
const TASK: &str = "task = \"passkey\"\nlengths = [512, 1024]\ndepths = 3\n";
const PRESET: &str = "method = \"kivi\"\nlabel = \"kivi-2bit\"\n[params]\nbits = 2\n";
const EXPERIMENT: &str = "name = \"t\"\nmodels = [\"m\"]\ntasks = [\"needle\"]\nmethods = [\"full\", \"snapkv\", \"kivi-2bit\"]\nratios = [2, 4]\n";

/// Writes a config tree (defaults overridden by `files`) and loads `experiments/x.toml`.
fn load_with(files: &[(&str, &str)]) -> (tempfile::TempDir, Result<kvconfig::Experiment, kvconfig::ConfigErrors>) {
    let tmp = tempfile::tempdir().unwrap();
    let defaults = [("models/m.toml", MODEL), ("tasks/needle.toml", TASK), ("methods/kivi-2bit.toml", PRESET), ("experiments/x.toml", EXPERIMENT)];
    for (rel, text) in defaults.iter().chain(files.iter()) {
        let p = tmp.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
    }
    let r = load_experiment(&tmp.path().join("experiments/x.toml"));
    (tmp, r)
}

#[test]
fn a_good_tree_loads_and_expands() {
    let (_t, r) = load_with(&[]);
    let exp = r.unwrap();
    assert_eq!(exp.methods.iter().map(|m| m.label.as_str()).collect::<Vec<_>>(), vec!["full", "snapkv", "kivi-2bit"]);
    let takes = |m: &str| m == "snapkv";
    let cs = cells(&exp, &takes);
    // full once, snapkv at 2 ratios, kivi-2bit once: 4 cells for 1 model and 1 task.
    assert_eq!(cs.len(), 4);
    assert_eq!(cs.iter().filter(|c| c.ratio.is_some()).count(), 2);
    let again = cells(&load_with(&[]).1.unwrap(), &takes);
    assert_eq!(cs.iter().map(|c| &c.id).collect::<Vec<_>>(), again.iter().map(|c| &c.id).collect::<Vec<_>>(), "ids are stable across loads and directories");
    let ids: std::collections::BTreeSet<_> = cs.iter().map(|c| c.id.clone()).collect();
    assert_eq!(ids.len(), 4, "ids are distinct");
    // Shards partition the cells.
    let mut all: Vec<String> = (0..3).flat_map(|i| shard(cs.clone(), i, 3)).map(|c| c.id).collect();
    all.sort();
    assert_eq!(all, ids.into_iter().collect::<Vec<_>>());
    assert!(parse_shard("3/3").is_err() && parse_shard("a/2").is_err() && parse_shard("1/2") == Ok((1, 2)));
}

#[test]
fn inline_methods_override_presets() {
    let exp = "name = \"t\"\nmodels = [\"m\"]\ntasks = [\"needle\"]\nmethods = [\"kivi4\"]\n[[method]]\nname = \"kivi4\"\npreset = \"kivi-2bit\"\nparams = { bits = 4 }\n";
    let (_t, r) = load_with(&[("experiments/x.toml", exp)]);
    let e = r.unwrap();
    assert_eq!(e.methods[0].method, "kivi");
    assert_eq!(e.methods[0].params.get("bits").and_then(|v| v.as_integer()), Some(4));
}

#[test]
fn bad_configs_give_one_clear_message_each() {
    let exp = |extra: &str| format!("{EXPERIMENT}{extra}");
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        // (what, files, file that must be named, expected substring)
        ("unknown experiment key", vec![("experiments/x.toml", exp("modle = 1\n"))], "experiments/x.toml", "unknown field `modle`"),
        (
            "unknown built-in chat format",
            vec![("models/m.toml", format!("{MODEL}chat_format = \"alpaca\"\n"))],
            "models/m.toml",
            "chat_format: expected one of vicuna, rwkv, got \"alpaca\"",
        ),
        (
            "unknown decoding penalties",
            vec![("models/m.toml", format!("{MODEL}penalties = \"openai\"\n"))],
            "models/m.toml",
            "penalties: expected one of rwkv-pipeline, got \"openai\"",
        ),
        (
            "truncate of the wrong type",
            vec![("methods/kivi-2bit.toml", "method = \"kivi\"\ntruncate = \"no\"\n".to_string())],
            "methods/kivi-2bit.toml",
            "truncate",
        ),
        ("models wrong type", vec![("experiments/x.toml", EXPERIMENT.replace("models = [\"m\"]", "models = \"m\""))], "experiments/x.toml", "models"),
        ("missing models key", vec![("experiments/x.toml", EXPERIMENT.replace("models = [\"m\"]\n", ""))], "experiments/x.toml", "missing field `models`"),
        (
            "empty methods",
            vec![("experiments/x.toml", EXPERIMENT.replace("methods = [\"full\", \"snapkv\", \"kivi-2bit\"]", "methods = []"))],
            "experiments/x.toml",
            "methods: expected at least one name",
        ),
        (
            "unknown model file",
            vec![("experiments/x.toml", EXPERIMENT.replace("[\"m\"]", "[\"nope\"]"))],
            "experiments/x.toml",
            "models[0]: unknown model \"nope\"",
        ),
        (
            "unknown task file",
            vec![("experiments/x.toml", EXPERIMENT.replace("[\"needle\"]", "[\"haystack\"]"))],
            "experiments/x.toml",
            "tasks[0]: unknown task config \"haystack\"",
        ),
        (
            "ratio below one",
            vec![("experiments/x.toml", EXPERIMENT.replace("ratios = [2, 4]", "ratios = [2, 0.5]"))],
            "experiments/x.toml",
            "ratios[1]: expected a ratio N >= 1",
        ),
        ("ratio as string", vec![("experiments/x.toml", EXPERIMENT.replace("ratios = [2, 4]", "ratios = [\"2x\"]"))], "experiments/x.toml", "ratios[0]"),
        (
            "duplicate method",
            vec![("experiments/x.toml", EXPERIMENT.replace("\"kivi-2bit\"]", "\"full\"]"))],
            "experiments/x.toml",
            "methods[2]: \"full\" is listed twice",
        ),
        ("zero threads", vec![("experiments/x.toml", exp("[run]\nthreads = 0\n"))], "experiments/x.toml", "run.threads: expected a positive number"),
        ("bad device", vec![("experiments/x.toml", exp("[run]\ndevice = \"gpu\"\n"))], "experiments/x.toml", "run.device: expected cpu, cuda, cuda:N or auto"),
        ("unknown run key", vec![("experiments/x.toml", exp("[run]\nthread = 2\n"))], "experiments/x.toml", "run.thread"),
        ("inline method without method", vec![("experiments/x.toml", exp("[[method]]\nname = \"x\"\n"))], "experiments/x.toml", "method[0]: expected `method`"),
        (
            "inline unknown preset",
            vec![("experiments/x.toml", EXPERIMENT.replace("\"kivi-2bit\"]", "\"k\"]") + "[[method]]\nname = \"k\"\npreset = \"kivi-3bit\"\n")],
            "experiments/x.toml",
            "method[0].preset: unknown preset \"kivi-3bit\"",
        ),
        ("missing plugin", vec![("experiments/x.toml", exp("plugins = [\"libnope.so\"]\n"))], "experiments/x.toml", "plugins[0]: no such plugin file"),
        (
            "bad model dtype",
            vec![("models/m.toml", format!("{MODEL}dtype = \"fp8\"\n"))],
            "models/m.toml",
            "dtype: expected one of f32, bf16, f16, got \"fp8\"",
        ),
        ("unknown model key", vec![("models/m.toml", format!("{MODEL}revison = \"main\"\n"))], "models/m.toml", "unknown field `revison`"),
        (
            "rope base and factor both",
            vec![("models/m.toml", format!("{MODEL}rope_theta = 1e6\nrope_theta_factor = 32\n"))],
            "models/m.toml",
            "rope_theta_factor: expected either rope_theta or rope_theta_factor, not both",
        ),
        (
            "negative rope factor",
            vec![("models/m.toml", format!("{MODEL}rope_linear_factor = -8\n"))],
            "models/m.toml",
            "rope_linear_factor: expected a positive number, got -8",
        ),
        ("context limit wrong type", vec![("models/m.toml", MODEL.replace("8192", "\"8k\""))], "models/m.toml", "context_limit"),
        ("unknown task name", vec![("tasks/needle.toml", TASK.replace("passkey", "passkee"))], "tasks/needle.toml", "task: unknown task \"passkee\""),
        ("zero length", vec![("tasks/needle.toml", TASK.replace("[512, 1024]", "[0, 1024]"))], "tasks/needle.toml", "lengths: expected positive lengths"),
        (
            "fraction out of range",
            vec![("tasks/needle.toml", format!("{TASK}fraction = 1.5\n"))],
            "tasks/needle.toml",
            "fraction: expected a fraction in (0, 1]",
        ),
        ("bad truncation", vec![("tasks/needle.toml", format!("{TASK}truncation = \"left\"\n"))], "tasks/needle.toml", "truncation"),
        ("bad template", vec![("tasks/needle.toml", format!("{TASK}template = \"jinja\"\n"))], "tasks/needle.toml", "template"),
        ("preset without method", vec![("methods/kivi-2bit.toml", "label = \"k\"\n".to_string())], "methods/kivi-2bit.toml", "missing field `method`"),
        ("not TOML", vec![("experiments/x.toml", "name = \"t\nmodels = [".to_string())], "experiments/x.toml", "line"),
    ];
    assert!(cases.len() >= 15);
    for (what, files, file, expected) in &cases {
        let files: Vec<(&str, &str)> = files.iter().map(|(p, t)| (*p, t.as_str())).collect();
        let (tmp, r) = load_with(&files);
        let e = r.err().unwrap_or_else(|| panic!("{what}: should be rejected"));
        let msg = e.to_string();
        assert_eq!(e.0.len(), 1, "{what}: expected one message, got:\n{msg}");
        let named = Path::new(tmp.path()).join(file);
        assert!(msg.contains(&named.display().to_string()), "{what}: message should name {}:\n{msg}", named.display());
        assert!(msg.contains(expected), "{what}: message should contain `{expected}`:\n{msg}");
        eprintln!("{what}: {msg}");
    }
}

#[test]
fn several_problems_are_all_reported() {
    let e1 = EXPERIMENT.replace("[\"m\"]", "[\"nope\"]").replace("ratios = [2, 4]", "ratios = [0]");
    let t1 = TASK.replace("passkey", "x");
    let (_t, r) = load_with(&[("experiments/x.toml", e1.as_str()), ("tasks/needle.toml", t1.as_str())]);
    let e = r.unwrap_err();
    assert_eq!(e.0.len(), 3, "{e}");
}

#[test]
fn an_experiment_anywhere_can_name_the_built_in_configs() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = tmp.path().join("mine.toml");
    std::fs::write(
        &exp,
        "name = \"mine\"\nmodels = [\"smollm2-135m\"]\ntasks = [\"passkey-quick\"]\nmethods = [\"full\", \"kivi-2bit\", \"snapkv\"]\nratios = [2]\n",
    )
    .unwrap();
    let e = load_experiment(&exp).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(e.models[0].0, "smollm2-135m");
    assert_eq!(e.tasks[0].0, "passkey-quick");
    assert_eq!(e.methods[1].method, "kivi", "the built-in preset kivi-2bit is found");
    // A file beside the experiment comes first.
    std::fs::create_dir_all(tmp.path().join("models")).unwrap();
    std::fs::write(tmp.path().join("models/smollm2-135m.toml"), "source = \"smollm2-135m\"\ncontext_limit = 4096\n").unwrap();
    let e = load_experiment(&exp).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(e.models[0].1.context_limit, Some(4096), "the local models/smollm2-135m.toml shadows the built-in one");
    // Unknown names list every place searched.
    std::fs::write(&exp, "name = \"mine\"\nmodels = [\"nope\"]\ntasks = [\"passkey-quick\"]\nmethods = [\"full\"]\n").unwrap();
    let msg = load_experiment(&exp).unwrap_err().to_string();
    assert!(
        msg.contains("unknown model \"nope\"")
            && msg.contains(&tmp.path().join("models/nope.toml").display().to_string())
            && msg.contains("configs/models/nope.toml"),
        "{msg}"
    );
}
