//! `kvbench slurm`: runs an experiment on a Slurm cluster without hand-written batch scripts.
//! It validates the experiment, then writes two scripts under `<out>/slurm/`: a job array whose
//! task i runs `kvbench run --shard i/N --resume` into `<out>/shard-i`, and a merge job that
//! combines the shards into `<out>/merged` and writes `<out>/report`, submitted with
//! `--dependency=afterok:<array job>`. Every path in the scripts is absolute and quoted, so the
//! jobs run wherever Slurm starts them; `--submit` calls `sbatch` itself.

use crate::cli::{SlurmArgs, ValidateArgs};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// The file names of the two scripts inside `<out>/slurm/`.
const ARRAY_SCRIPT: &str = "shards.sbatch";
const MERGE_SCRIPT: &str = "merge.sbatch";

pub fn run(a: SlurmArgs, plugins: &[PathBuf]) -> Result<()> {
    if a.shards == 0 {
        bail!("--shards 0: need at least one shard (one Slurm array task per shard)");
    }
    if a.max_parallel == Some(0) {
        bail!("--max-parallel 0: at least one array task must be allowed to run");
    }
    if a.gpus_per_task == Some(0) {
        bail!("--gpus-per-task 0: leave the option out for CPU-only tasks");
    }
    if a.cpus_per_task == Some(0) {
        bail!("--cpus-per-task 0: need at least one CPU per task");
    }
    // The same checks as `kvbench validate`: every file and method of the experiment.
    super::run::validate(ValidateArgs { config: a.experiment.clone(), allow_plugins: a.allow_plugins }, plugins)?;
    let exp = kvconfig::load_experiment(&a.experiment)?;
    if !exp.plugins.is_empty() && !a.allow_plugins {
        bail!(
            "{}: the experiment loads plugins; plugins are code that runs with your rights, so pass --allow-plugins to let the shard jobs load them",
            a.experiment.display()
        );
    }

    let experiment = std::fs::canonicalize(&a.experiment).with_context(|| format!("resolving {}", a.experiment.display()))?;
    let kvbench = std::env::current_exe().context("finding the path of this kvbench binary")?;
    let kvbench = std::fs::canonicalize(&kvbench).unwrap_or(kvbench);
    let plugins: Vec<PathBuf> = plugins.iter().map(|p| std::fs::canonicalize(p).with_context(|| format!("--plugin {}", p.display()))).collect::<Result<_>>()?;
    let out = match &a.out {
        Some(o) => o.clone(),
        None => default_out(&exp.name),
    };
    let slurm_dir = out.join("slurm");
    let logs = slurm_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let out = std::fs::canonicalize(&out).with_context(|| format!("resolving {}", out.display()))?;
    let (slurm_dir, logs) = (out.join("slurm"), out.join("slurm").join("logs"));

    let job_name = a.job_name.clone().unwrap_or_else(|| format!("kvbench-{}", exp.name));
    let plan = Plan { kvbench: &kvbench, experiment: &experiment, out: &out, logs: &logs, plugins: &plugins, job_name: &job_name, args: &a };
    let array_script = slurm_dir.join(ARRAY_SCRIPT);
    let merge_script = slurm_dir.join(MERGE_SCRIPT);
    write_script(&array_script, &plan.array_script()?)?;
    write_script(&merge_script, &plan.merge_script()?)?;

    let limit = a.max_parallel.map(|k| format!(", at most {k} at once")).unwrap_or_default();
    println!("wrote {} (job array: {} shard task(s){limit})", array_script.display(), a.shards);
    println!(
        "wrote {} (merge into {} and report into {}, after every shard succeeds)",
        merge_script.display(),
        out.join("merged").display(),
        out.join("report").display()
    );
    let array_cmd = format!("sbatch --parsable {}", sh_quote(&array_script.to_string_lossy()));
    let merge_cmd = |id: &str| format!("sbatch --parsable --dependency=afterok:{id} {}", sh_quote(&merge_script.to_string_lossy()));
    if !a.submit {
        println!("submit with:");
        println!("  jobid=$({array_cmd})");
        println!("  {}", merge_cmd("${jobid%%;*}"));
        return Ok(());
    }

    let sbatch = find_on_path("sbatch")
        .context("--submit: `sbatch` was not found on PATH; run this on a machine with the Slurm client tools, or submit the scripts above there yourself")?;
    println!("{array_cmd}");
    let array_id = submit(&sbatch, &[], &array_script)?;
    println!("submitted array job {array_id} ({} task(s))", a.shards);
    println!("{}", merge_cmd(&array_id));
    let merge_id = submit(&sbatch, &[format!("--dependency=afterok:{array_id}")], &merge_script)?;
    println!("submitted merge job {merge_id} (runs after array job {array_id} succeeds)");
    println!("logs: {}", logs.display());
    println!("report (when done): {}", out.join("report").join("index.html").display());
    Ok(())
}

/// `runs/<name>` under the current directory, or the next free `runs/<name>-N` when `runs/<name>`
/// holds a finished single run (as `kvbench run` chooses); a directory of earlier shards is
/// reused, so submitting again resumes them.
fn default_out(name: &str) -> PathBuf {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let base = cwd.join("runs").join(name);
    if !base.join("run.json").exists() {
        return base;
    }
    (2..).map(|n| cwd.join("runs").join(format!("{name}-{n}"))).find(|p| !p.join("run.json").exists()).unwrap_or(base)
}

/// Everything the two scripts are made from (all paths absolute).
struct Plan<'a> {
    kvbench: &'a Path,
    experiment: &'a Path,
    out: &'a Path,
    logs: &'a Path,
    plugins: &'a [PathBuf],
    job_name: &'a str,
    args: &'a SlurmArgs,
}

impl Plan<'_> {
    /// `#SBATCH` lines shared by both jobs.
    fn common_directives(&self, s: &mut String) -> Result<()> {
        if let Some(p) = &self.args.partition {
            s.push_str(&format!("#SBATCH --partition={}\n", sbatch_quote(p, "--partition")?));
        }
        if let Some(t) = &self.args.time {
            s.push_str(&format!("#SBATCH --time={}\n", sbatch_quote(t, "--time")?));
        }
        Ok(())
    }

    /// The variables both scripts start with: the binary, the experiment and the output directory.
    fn preamble(&self, s: &mut String) {
        s.push_str("set -euo pipefail\n");
        s.push_str(&format!("kvbench={}\n", sh_quote(&self.kvbench.to_string_lossy())));
        s.push_str(&format!("experiment={}\n", sh_quote(&self.experiment.to_string_lossy())));
        s.push_str(&format!("out={}\n", sh_quote(&self.out.to_string_lossy())));
    }

    fn array_script(&self) -> Result<String> {
        let a = self.args;
        let n = a.shards;
        let mut s = String::from("#!/bin/bash\n");
        s.push_str(&format!("# Written by `kvbench slurm`: array task i runs shard i/{n} of $experiment into $out/shard-i.\n"));
        s.push_str(&format!("#SBATCH --job-name={}\n", sbatch_quote(self.job_name, "--job-name")?));
        let limit = a.max_parallel.map(|k| format!("%{k}")).unwrap_or_default();
        s.push_str(&format!("#SBATCH --array=0-{}{limit}\n", n - 1));
        s.push_str("#SBATCH --ntasks=1\n");
        s.push_str(&format!("#SBATCH --output={}\n", sbatch_path(&self.logs.join("shard-%a-%A.out"))?));
        s.push_str(&format!("#SBATCH --error={}\n", sbatch_path(&self.logs.join("shard-%a-%A.err"))?));
        self.common_directives(&mut s)?;
        if let Some(g) = a.gpus_per_task {
            s.push_str(&format!("#SBATCH --gpus-per-task={g}\n"));
        }
        if let Some(c) = a.cpus_per_task {
            s.push_str(&format!("#SBATCH --cpus-per-task={c}\n"));
        }
        self.preamble(&mut s);
        s.push_str("i=\"${SLURM_ARRAY_TASK_ID:?this script runs as a Slurm array task (submit it with sbatch)}\"\n");
        s.push_str("# One thread per CPU Slurm gave the task (overrides the experiment's run.threads).\n");
        s.push_str("threads=()\n");
        s.push_str("if [[ -n \"${SLURM_CPUS_PER_TASK:-}\" ]]; then threads=(--threads \"$SLURM_CPUS_PER_TASK\"); fi\n");
        let mut extra = String::new();
        if a.allow_plugins {
            extra.push_str(" --allow-plugins");
        }
        if a.zero_measurements {
            extra.push_str(" --zero-measurements");
        }
        for p in self.plugins {
            extra.push_str(&format!(" --plugin {}", sh_quote(&p.to_string_lossy())));
        }
        s.push_str(&format!(
            "exec \"$kvbench\" run \"$experiment\" --shard \"$i/{n}\" --resume --out \"$out/shard-$i\" --no-report ${{threads[@]+\"${{threads[@]}}\"}}{extra}\n"
        ));
        Ok(s)
    }

    fn merge_script(&self) -> Result<String> {
        let n = self.args.shards;
        let mut s = String::from("#!/bin/bash\n");
        s.push_str(&format!(
            "# Written by `kvbench slurm`: merges the {n} shard(s) in $out into $out/merged and writes $out/report.\n# Submit with --dependency=afterok:<array job id>.\n"
        ));
        s.push_str(&format!("#SBATCH --job-name={}\n", sbatch_quote(&format!("{}-merge", self.job_name), "--job-name")?));
        s.push_str("#SBATCH --ntasks=1\n");
        s.push_str(&format!("#SBATCH --output={}\n", sbatch_path(&self.logs.join("merge-%j.out"))?));
        s.push_str(&format!("#SBATCH --error={}\n", sbatch_path(&self.logs.join("merge-%j.err"))?));
        self.common_directives(&mut s)?;
        self.preamble(&mut s);
        s.push_str("shards=()\n");
        s.push_str(&format!("for ((i = 0; i < {n}; i++)); do shards+=(\"$out/shard-$i\"); done\n"));
        s.push_str("# Merge into a fresh directory, then replace merged/ (it is derived from the shards alone).\n");
        s.push_str("tmp=\"$out/merged.partial-${SLURM_JOB_ID:-$$}\"\n");
        s.push_str("rm -rf -- \"$tmp\"\n");
        s.push_str("\"$kvbench\" merge \"${shards[@]}\" --out \"$tmp\"\n");
        s.push_str("rm -rf -- \"$out/merged\"\n");
        s.push_str("mv -- \"$tmp\" \"$out/merged\"\n");
        s.push_str("\"$kvbench\" report \"$out/merged\" --out \"$out/report\"\n");
        Ok(s)
    }
}

/// Writes a script atomically (temp file, fsync, rename) and makes it executable.
fn write_script(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    kvreport::fsio::write_atomic(path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).with_context(|| format!("making {} executable", path.display()))
}

/// `s` as one POSIX shell word (single quotes; a `'` becomes `'\''`).
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `s` as one `#SBATCH` argument: sbatch's own parser groups a double-quoted string and takes a
/// backslash as escaping the next character. A newline cannot be written there.
fn sbatch_quote(s: &str, what: &str) -> Result<String> {
    if s.contains(['\n', '\r']) {
        bail!("{what} {s:?}: a line break cannot be written into an #SBATCH line");
    }
    Ok(format!("\"{}\"", s.replace('\\', r"\\").replace('"', "\\\"")))
}

/// A log file path (with Slurm's %a/%A/%j patterns) as an `#SBATCH` argument. A `%` of the
/// directory itself would be taken for a pattern, so it is refused.
fn sbatch_path(p: &Path) -> Result<String> {
    let dir = p.parent().map(|d| d.to_string_lossy().into_owned()).unwrap_or_default();
    if dir.contains('%') {
        bail!("{dir}: Slurm would read the `%` in this directory as a file-name pattern; choose an --out without `%`");
    }
    sbatch_quote(&p.to_string_lossy(), "log path")
}

/// The first executable `name` in a PATH directory.
fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Runs `sbatch --parsable [extra] script` and returns the job id (`--parsable` prints
/// `id` or `id;cluster`).
fn submit(sbatch: &Path, extra: &[String], script: &Path) -> Result<String> {
    let o = std::process::Command::new(sbatch).arg("--parsable").args(extra).arg(script).output().with_context(|| format!("running {}", sbatch.display()))?;
    let stdout = String::from_utf8_lossy(&o.stdout);
    if !o.status.success() {
        bail!("sbatch {} failed ({}):\n{}{}", script.display(), o.status, String::from_utf8_lossy(&o.stderr), stdout);
    }
    let id = stdout.trim().split(';').next().unwrap_or("").trim().to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        bail!("sbatch {}: expected a job id from --parsable, got {:?}", script.display(), stdout.trim());
    }
    Ok(id)
}
