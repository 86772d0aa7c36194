//! `kvbench slurm` without a cluster: the job-array and merge scripts it writes are checked line
//! by line and then run with bash the way Slurm would run them (SLURM_ARRAY_TASK_ID,
//! SLURM_CPUS_PER_TASK, SLURM_JOB_ID set), from paths with a space and a quote, and their merged
//! report must equal a single run's; bad arguments and a missing `sbatch` fail clearly.
//! scripts/test_slurm.sh submits the same scripts to a real one-node Slurm cluster.

mod common;

use common::{config_tree, kvbench_in, ok, REPORT_FILES};
use std::path::Path;
use std::process::{Command, Output};

/// Runs a written script with bash and the given Slurm variables, as a batch job would.
fn run_script(script: &Path, env: &[(&str, &str)]) -> Output {
    let mut c = Command::new("bash");
    c.arg(script);
    for k in ["SLURM_ARRAY_TASK_ID", "SLURM_CPUS_PER_TASK", "SLURM_JOB_ID"] {
        c.env_remove(k);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run bash")
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

#[test]
fn slurm_writes_array_and_merge_scripts_that_run_the_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("with space");
    std::fs::create_dir_all(&base).unwrap();
    let exp = config_tree(&base, &["full", "snapkv"]);
    let e = exp.to_str().unwrap();
    let out = base.join("it's out");
    let o = out.to_str().unwrap();
    let printed = ok(&[
        "slurm",
        e,
        "--shards",
        "3",
        "--max-parallel",
        "2",
        "--partition",
        "gpu",
        "--gpus-per-task",
        "1",
        "--cpus-per-task",
        "4",
        "--time",
        "1:00:00",
        "--out",
        o,
    ]);

    let array = out.join("slurm/shards.sbatch");
    let merge = out.join("slurm/merge.sbatch");
    let q = |p: &Path| format!("'{}'", p.to_str().unwrap().replace('\'', r"'\''"));
    assert!(printed.contains("ok: experiment `t`"), "the experiment is validated first:\n{printed}");
    assert!(printed.contains(&format!("sbatch --parsable {}", q(&array))), "{printed}");
    assert!(printed.contains(&format!("sbatch --parsable --dependency=afterok:${{jobid%%;*}} {}", q(&merge))), "{printed}");

    let text = std::fs::read_to_string(&array).unwrap();
    let kvbench = std::fs::canonicalize(env!("CARGO_BIN_EXE_kvbench")).unwrap();
    let logs = out.join("slurm/logs");
    for line in [
        "#SBATCH --array=0-2%2".to_string(),
        "#SBATCH --job-name=\"kvbench-t\"".to_string(),
        "#SBATCH --partition=\"gpu\"".to_string(),
        "#SBATCH --gpus-per-task=1".to_string(),
        "#SBATCH --cpus-per-task=4".to_string(),
        "#SBATCH --time=\"1:00:00\"".to_string(),
        format!("#SBATCH --output=\"{}/shard-%a-%A.out\"", logs.display()),
        format!("#SBATCH --error=\"{}/shard-%a-%A.err\"", logs.display()),
        format!("kvbench={}", q(&kvbench)),
        format!("experiment={}", q(&std::fs::canonicalize(&exp).unwrap())),
        format!("out={}", q(&out)),
        "if [[ -n \"${SLURM_CPUS_PER_TASK:-}\" ]]; then threads=(--threads \"$SLURM_CPUS_PER_TASK\"); fi".to_string(),
        "exec \"$kvbench\" run \"$experiment\" --shard \"$i/3\" --resume --out \"$out/shard-$i\" --no-report ${threads[@]+\"${threads[@]}\"}".to_string(),
    ] {
        assert!(text.lines().any(|l| l == line), "shards.sbatch lacks the line\n{line}\n---\n{text}");
    }
    let directives_end = text.lines().position(|l| !l.starts_with('#')).unwrap();
    assert!(text.lines().skip(directives_end).all(|l| !l.starts_with("#SBATCH")), "#SBATCH lines must precede the first command:\n{text}");
    let mtext = std::fs::read_to_string(&merge).unwrap();
    assert!(mtext.contains("\"$kvbench\" merge \"${shards[@]}\"") && mtext.contains("\"$kvbench\" report \"$out/merged\" --out \"$out/report\""), "{mtext}");
    assert!(mtext.contains("#SBATCH --partition=\"gpu\"") && !mtext.contains("--array") && !mtext.contains("--gpus-per-task"), "{mtext}");
    for s in [&array, &merge] {
        use std::os::unix::fs::PermissionsExt;
        assert!(std::fs::metadata(s).unwrap().permissions().mode() & 0o111 != 0, "{} is not executable", s.display());
        let syntax = Command::new("bash").arg("-n").arg(s).output().unwrap();
        assert!(syntax.status.success(), "{}: {}", s.display(), String::from_utf8_lossy(&syntax.stderr));
    }
    // Nothing was left behind by the atomic writes.
    let names: Vec<String> = std::fs::read_dir(out.join("slurm")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 3, "{names:?}");

    // Outside a job array the script refuses to guess a shard.
    let o = run_script(&array, &[]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("SLURM_ARRAY_TASK_ID"), "{}", String::from_utf8_lossy(&o.stderr));

    // Run every task as Slurm would, then the merge job; the report must equal one plain run.
    // Without --zero-measurements the reports differ in timings, so write the scripts again with it.
    ok(&["slurm", e, "--shards", "3", "--out", o_str(&out), "--zero-measurements"]);
    let single = base.join("single");
    ok(&["run", e, "--out", single.to_str().unwrap(), "--zero-measurements", "--threads", "2"]);
    for i in 0..3 {
        let id = i.to_string();
        let r = run_script(&array, &[("SLURM_ARRAY_TASK_ID", &id), ("SLURM_CPUS_PER_TASK", "2")]);
        assert!(r.status.success(), "array task {i}: {}", String::from_utf8_lossy(&r.stderr));
        let info = json(&out.join(format!("shard-{i}/run.json")));
        assert_eq!(info["shard"], format!("{i}/3"));
        assert_eq!(info["threads"], 2, "SLURM_CPUS_PER_TASK should override the experiment's threads = 1");
    }
    // A task run again (a requeue) resumes instead of failing on the existing run.
    let r = run_script(&array, &[("SLURM_ARRAY_TASK_ID", "1"), ("SLURM_CPUS_PER_TASK", "2")]);
    assert!(r.status.success(), "rerun of task 1: {}", String::from_utf8_lossy(&r.stderr));
    for attempt in 0..2 {
        // Twice: a merge job run again replaces merged/ instead of failing on it.
        let r = run_script(&merge, &[("SLURM_JOB_ID", "77")]);
        assert!(r.status.success(), "merge job (attempt {attempt}): {}", String::from_utf8_lossy(&r.stderr));
    }
    assert_eq!(json(&out.join("merged/run.json"))["shard"], "merged:3");
    assert!(!out.join("merged.partial-77").exists());
    for f in REPORT_FILES {
        let a = std::fs::read(single.join("report").join(f)).unwrap();
        let b = std::fs::read(out.join("report").join(f)).unwrap_or_else(|e| panic!("report/{f}: {e}"));
        assert!(a == b, "{f}: the merged shards' report differs from the single run's:\n{}", first_difference(&a, &b));
    }
}

/// The neighbourhood of the first differing byte of two files, for a readable failure.
fn first_difference(a: &[u8], b: &[u8]) -> String {
    let i = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
    let around = |s: &[u8]| String::from_utf8_lossy(&s[i.saturating_sub(200)..(i + 200).min(s.len())]).into_owned();
    format!("single run: ...{}...\nmerged:     ...{}...", around(a), around(b))
}

fn o_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn slurm_rejects_bad_arguments_before_writing_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = config_tree(tmp.path(), &["full", "snapkv"]);
    let out = tmp.path().join("out");
    let o = kvbench_in(tmp.path(), &["slurm", exp.to_str().unwrap(), "--shards", "0", "--out", o_str(&out)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--shards 0") && err.contains("at least one shard"), "{err}");
    let o = kvbench_in(tmp.path(), &["slurm", exp.to_str().unwrap(), "--shards", "2", "--max-parallel", "0", "--out", o_str(&out)]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--max-parallel 0"));
    // An invalid experiment is reported as `kvbench validate` reports it.
    std::fs::write(&exp, "name = \"t\"\nmodels = [\"tiny\"]\ntasks = [\"needle\"]\nmethods = [\"nosuch\"]\n").unwrap();
    let o = kvbench_in(tmp.path(), &["slurm", exp.to_str().unwrap(), "--shards", "2", "--out", o_str(&out)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("t.toml") && err.contains("nosuch"), "{err}");
    assert!(!out.exists(), "nothing should be written for a rejected command");
}

#[test]
fn slurm_submit_without_sbatch_fails_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = config_tree(tmp.path(), &["full", "snapkv"]);
    let empty = tmp.path().join("empty-bin");
    std::fs::create_dir(&empty).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_kvbench"))
        .current_dir(tmp.path())
        .env("PATH", &empty)
        .args(["slurm", exp.to_str().unwrap(), "--shards", "2", "--submit"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "--submit without sbatch must fail");
    assert!(err.contains("sbatch") && err.contains("not found on PATH"), "{err}");
    // Without --out the scripts go to runs/<experiment name> under the current directory, and
    // they are written before the submission fails, so they can be submitted by hand.
    let script = tmp.path().join("runs/t/slurm/shards.sbatch");
    let text = std::fs::read_to_string(&script).unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    assert!(text.contains("#SBATCH --array=0-1\n"), "{text}");
}
