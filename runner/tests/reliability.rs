//! Runs that never lose results and clear answers to impossible requests, end to end on a tiny
//! random model: `kvbench run` killed with SIGKILL at 10 random moments and resumed gives reports
//! byte-identical to an uninterrupted run's; a full disk (a 40 KiB tmpfs in a private mount
//! namespace) gives a clear error and leaves every earlier record readable and resumable; the
//! memory guard refuses work that cannot fit, naming the numbers, and `--force` overrides it.

mod common;

use common::{config_tree, kvbench, ok};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Every file under `dir` (relative path → bytes), sorted.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push((p.strip_prefix(root).unwrap().display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Asserts two directory trees are byte-identical, naming the first difference.
fn assert_same_tree(reference: &[(String, Vec<u8>)], got: &Path, what: &str) {
    let got = tree(got);
    let names = |t: &[(String, Vec<u8>)]| t.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(reference), names(&got), "{what}: the report directory holds different files");
    for ((name, a), (_, b)) in reference.iter().zip(&got) {
        assert!(a == b, "{what}: {name} differs from the uninterrupted run's");
    }
}

/// The cells' records, in cell order: (cell, records.jsonl bytes).
fn records(run: &Path) -> Vec<(String, Vec<u8>)> {
    tree(&run.join("cells")).into_iter().filter(|(n, _)| n.ends_with("records.jsonl")).collect()
}

/// Complete record lines on disk now (tolerates a run writing at the same time).
fn records_in(run: &Path) -> usize {
    let Ok(cells) = std::fs::read_dir(run.join("cells")) else { return 0 };
    cells.filter_map(|c| c.ok()).filter_map(|c| std::fs::read(c.path().join("records.jsonl")).ok()).map(|b| b.iter().filter(|&&c| c == b'\n').count()).sum()
}

#[test]
fn a_run_killed_at_ten_random_moments_resumes_to_the_same_report() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = config_tree(tmp.path(), &["full", "snapkv", "kivi-small"]);
    let e = exp.to_str().unwrap();
    let reference_dir = tmp.path().join("reference");
    ok(&["run", e, "--out", reference_dir.to_str().unwrap(), "--zero-measurements"]);
    let reference_report = tree(&reference_dir.join("report"));
    let reference_records = records(&reference_dir);
    let total = records_in(&reference_dir);

    // Ten kill moments from a fixed seed (so a failure can be replayed): wait until the run has
    // written a random number of records (0: during start-up and model load; all: while it
    // writes the report; the first and last moments are drawn from those two phases), then a
    // random few milliseconds more, then SIGKILL. A moment the run outlives is
    // drawn again: all ten must interrupt it. Each killed run is then resumed.
    let mut x: u64 = 0x5eed;
    let mut next = |n: u64| {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (x >> 33) % n
    };
    let mut kills = 0;
    let mut draws = 0;
    while kills < 10 {
        draws += 1;
        assert!(draws <= 40, "only {kills} of 10 kill moments interrupted the run in {draws} draws");
        // The first moment falls in start-up / model load, the last in the report writing.
        let (after_records, extra_ms) = match kills {
            0 => (0, next(300)),
            9 => (total, next(10)),
            _ => (next(total as u64 + 1) as usize, next(41)),
        };
        let out = tmp.path().join(format!("killed-{kills}"));
        let _ = std::fs::remove_dir_all(&out);
        let mut child = Command::new(env!("CARGO_BIN_EXE_kvbench"))
            .args(["run", e, "--out", out.to_str().unwrap(), "--zero-measurements"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while records_in(&out) < after_records && child.try_wait().unwrap().is_none() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        std::thread::sleep(std::time::Duration::from_millis(extra_ms));
        let _ = child.kill();
        let status = child.wait().unwrap();
        let at = records_in(&out);
        if std::os::unix::process::ExitStatusExt::signal(&status) != Some(9) {
            eprintln!("draw {draws}: the run finished before the kill ({status}); drawing again");
            continue;
        }
        eprintln!(
            "kill {kills}: SIGKILL after {after_records} record(s) + {extra_ms} ms ({:.2} s in, {at} of {total} records on disk); resuming",
            t0.elapsed().as_secs_f64()
        );
        ok(&["run", e, "--out", out.to_str().unwrap(), "--zero-measurements", "--resume"]);
        assert_eq!(records(&out), reference_records, "kill {kills}: the records differ from the uninterrupted run's");
        assert_same_tree(&reference_report, &out.join("report"), &format!("kill {kills}"));
        kills += 1;
    }
}

/// Runs `script` as root in a private mount namespace (as root: `unshare --mount`; otherwise a
/// user namespace mapping this user to root: `unshare -rm`).
fn in_mount_namespace(script: &str) -> std::process::Output {
    let root = is_root();
    let mut cmd = Command::new("unshare");
    if root {
        cmd.arg("--mount");
    } else {
        cmd.args(["--map-root-user", "--mount"]);
    }
    cmd.args(["sh", "-c", script]).output().expect("unshare (util-linux) is needed for the disk-full test")
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

#[test]
fn a_full_disk_gives_a_clear_error_and_keeps_every_earlier_record() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = config_tree(tmp.path(), &["full", "snapkv", "kivi-small"]);
    let reference = tmp.path().join("reference");
    ok(&["run", exp.to_str().unwrap(), "--out", reference.to_str().unwrap(), "--zero-measurements"]);

    // The run writes into a 40 KiB tmpfs: it fills up part-way through the cells (24 of 36 records). What was on
    // it is copied out before the namespace (and the tmpfs) goes away.
    let mnt = tmp.path().join("small-disk");
    let saved = tmp.path().join("saved");
    std::fs::create_dir_all(&mnt).unwrap();
    let script = format!(
        "mount -t tmpfs -o size=40k kvbench-test '{mnt}' || exit 90; '{bin}' run '{exp}' --out '{mnt}/run' --zero-measurements; echo \"exit=$?\"; cp -a '{mnt}/run' '{saved}'",
        mnt = mnt.display(),
        bin = env!("CARGO_BIN_EXE_kvbench"),
        exp = exp.display(),
        saved = saved.display()
    );
    let o = in_mount_namespace(&script);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(90), "cannot mount a tmpfs here (root or unprivileged user namespaces are needed):\n{stderr}");
    assert!(o.status.success(), "the test script failed:\n{stdout}\n{stderr}");
    let code = stdout.lines().find_map(|l| l.strip_prefix("exit=")).unwrap_or("?");
    assert_ne!(code, "0", "the run should fail on a full disk:\n{stderr}");
    assert!(!stderr.contains("panicked"), "kvbench panicked:\n{stderr}");
    assert!(stderr.contains("No space left on device"), "the message should say the disk is full:\n{stderr}");
    assert!(stderr.contains(&*mnt.to_string_lossy()), "the message should name the file:\n{stderr}");

    // Every complete record is readable; the reports can be written from what survived.
    let saved_records = records(&saved);
    let complete: usize = saved_records
        .iter()
        .map(|(_, b)| b.split(|&c| c == b'\n').filter(|l| !l.is_empty() && serde_json::from_slice::<serde_json::Value>(l).is_ok()).count())
        .sum();
    assert!(complete > 0, "some records should have been written before the disk filled up");
    let total: usize = records(&reference).iter().map(|(_, b)| b.iter().filter(|&&c| c == b'\n').count()).sum();
    assert!(complete < total, "the disk should fill up before the end ({complete} of {total} records)");
    let report = ok(&["report", saved.to_str().unwrap(), "--out", tmp.path().join("partial-report").to_str().unwrap()]);
    assert!(report.contains("full"), "{report}");
    // And the run resumes, once there is room, to the uninterrupted run's records and report.
    ok(&["run", exp.to_str().unwrap(), "--out", saved.to_str().unwrap(), "--zero-measurements", "--resume"]);
    assert_eq!(records(&saved), records(&reference));
    assert_same_tree(&tree(&reference.join("report")), &saved.join("report"), "resumed after a full disk");
}

fn tiny_model(dir: &Path) -> PathBuf {
    let p = dir.join("tiny");
    ok(&["model", "init", "--arch", "llama", "--preset", "tiny", "--random", "--seed", "3", p.to_str().unwrap()]);
    p
}

#[test]
fn the_memory_guard_refuses_what_cannot_fit_and_force_overrides_it() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model(tmp.path());
    let m = model.to_str().unwrap();
    let args = ["generate", "--model", m, "--prompt", "hello", "--max-new-tokens", "4", "--device", "cpu", "--threads", "1"];

    let mut limited = args.to_vec();
    limited.extend(["--memory-limit", "1MiB"]);
    let o = kvbench(&limited);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a model that cannot fit 1 MiB should be refused");
    for needle in ["memory guard", m, "weights", "full KV cache", "tokens", "1.0 MiB", "--force"] {
        assert!(err.contains(needle), "the refusal lacks {needle:?}:\n{err}");
    }

    limited.push("--force");
    let o = kvbench(&limited);
    assert!(o.status.success(), "--force should run anyway:\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("warning: --force"));

    // Without a limit the same request fits this machine.
    ok(&args);

    // The environment variable works too, and `run` checks before loading.
    let exp = config_tree(tmp.path(), &["full"]);
    let o = Command::new(env!("CARGO_BIN_EXE_kvbench"))
        .args(["run", exp.to_str().unwrap(), "--out", tmp.path().join("r").to_str().unwrap()])
        .env("KVBENCH_MEMORY_LIMIT", "2MiB")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("memory guard") && err.contains("loading model") && err.contains("2.0 MiB"), "{err}");
    assert!(!tmp.path().join("r/cells").read_dir().is_ok_and(|mut d| d.next().is_some()), "nothing should run after a refusal");

    let o = kvbench(&["generate", "--model", m, "--prompt", "x", "--memory-limit", "lots"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("lots"), "a bad size is named");
}

#[test]
fn plugins_named_by_a_config_are_loaded_only_with_allow_plugins() {
    let tmp = tempfile::tempdir().unwrap();
    let exp = config_tree(tmp.path(), &["full"]);
    // A "plugin" that is not a library: loading it would fail with a loader error, so the
    // refusal below proves kvbench never tried.
    std::fs::write(tmp.path().join("configs/experiments/evil.so"), b"not a library").unwrap();
    let text = std::fs::read_to_string(&exp).unwrap().replace("[run]", "plugins = [\"evil.so\"]\n[run]");
    std::fs::write(&exp, text).unwrap();
    let e = exp.to_str().unwrap();
    let out = tmp.path().join("r");
    for args in [vec!["validate", e], vec!["run", e, "--out", out.to_str().unwrap()], vec!["slurm", e, "--shards", "2", "--out", out.to_str().unwrap()]] {
        let o = kvbench(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("--allow-plugins") && err.contains("evil.so"), "{args:?}: {err}");
        assert!(!err.contains("cannot load"), "{args:?} tried to load the plugin: {err}");
    }
    let o = kvbench(&["validate", e, "--allow-plugins"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("cannot load"), "with --allow-plugins the plugin is loaded");
}
