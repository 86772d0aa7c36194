#!/usr/bin/env bash
# The real-cluster test of `kvbench slurm`: brings up a one-node Slurm cluster on localhost
# (Debian's slurm-wlm and munge, installed when missing; its own munge key, socket, config, state
# and logs in a temp directory, so the system's /etc is not touched), submits a tiny experiment
# as 3 shards plus the dependent merge job with `kvbench slurm --submit`, waits for both, and
# checks that the merged report is byte-identical to a local single `kvbench run`. The daemons it
# started are stopped on exit. Needs root. KVBENCH_BIN picks the binary (default
# target/release/kvbench); KVBENCH_SLURM_TIMEOUT bounds the wait for the jobs (seconds, 900).
# Packages it installed stay installed (so a rerun is fast).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
start_s=$SECONDS
fail() {
  echo "FAIL: test_slurm: $*" >&2
  exit 1
}
[[ "$(id -u)" == 0 ]] || fail "needs root (installs and starts Slurm's daemons)"
bin="${KVBENCH_BIN:-$root/target/release/kvbench}"
[[ "$bin" == /* ]] || bin="$root/$bin"
[[ -x "$bin" ]] || fail "no kvbench binary at $bin (build it, or set KVBENCH_BIN)"
timeout_s="${KVBENCH_SLURM_TIMEOUT:-900}"

# --- Slurm and munge --------------------------------------------------------------------------
sbin_path() { PATH="/usr/sbin:/sbin:$PATH" command -v "$1" || true; }
if [[ -z "$(sbin_path slurmctld)" || -z "$(sbin_path slurmd)" || -z "$(sbin_path munged)" || -z "$(command -v sbatch)" ]]; then
  echo "installing slurm-wlm and munge (apt-get)..."
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq slurm-wlm munge >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq slurm-wlm munge >/dev/null; } ||
    fail "could not install slurm-wlm and munge"
  # The packages' services may have been started by the install (on systems with an init);
  # this test runs its own daemons on its own ports and leaves those alone.
fi
slurmctld="$(sbin_path slurmctld)"
slurmd="$(sbin_path slurmd)"
munged="$(sbin_path munged)"
for t in "$slurmctld" "$slurmd" "$munged"; do [[ -x "$t" ]] || fail "missing Slurm/munge daemon after install"; done

work="$(mktemp -d /tmp/kvbench-slurm.XXXXXX)"
chmod 755 "$work"
pids=()
cleanup() {
  local rc=$?
  # Cancel what is left of our jobs, then stop the daemons this script started (by pid).
  if [[ -n "${SLURM_CONF:-}" ]]; then
    for j in ${array_id:-} ${merge_id:-}; do scancel "$j" >/dev/null 2>&1 || true; done
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  if [[ $rc != 0 && -d "$work/log" ]]; then
    for f in "$work"/log/*.log; do
      echo "--- last lines of $f" >&2
      tail -n 20 "$f" >&2 || true
    done
  fi
  if [[ -n "${KVBENCH_SLURM_KEEP:-}" ]]; then
    echo "kept $work" >&2
  else
    rm -rf "$work"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$work"/{munge,log,state,spool,run,test}
chmod 700 "$work/munge"
# munge: a fresh key and its own socket (AuthInfo points Slurm at it), so a system munged, if
# any, is neither needed nor disturbed.
dd if=/dev/urandom of="$work/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$work/munge/munge.key"
"$munged" --force --key-file="$work/munge/munge.key" --socket="$work/run/munge.socket" \
  --pid-file="$work/run/munged.pid" --log-file="$work/log/munged.log" --seed-file="$work/munge/munge.seed" ||
  fail "munged did not start (see $work/log/munged.log)"
for _ in $(seq 50); do [[ -s "$work/run/munged.pid" ]] && break; sleep 0.1; done
pids+=("$(cat "$work/run/munged.pid")")

# Two free TCP ports on the loopback for slurmctld and slurmd.
read -r ctl_port d_port < <(python3 -c '
import socket
s=[socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
cpus="$(nproc)"
mem_mb="$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)"
export SLURM_CONF="$work/slurm.conf"
cat >"$SLURM_CONF" <<EOF
ClusterName=kvbenchtest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$ctl_port
SlurmdPort=$d_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$work/run/munge.socket
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/run/slurmctld.pid
SlurmdPidFile=$work/run/slurmd.pid
SlurmctldLogFile=$work/log/slurmctld.log
SlurmdLogFile=$work/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=3600
SlurmdTimeout=60
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=kvtest Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF

"$slurmctld" -D -i -f "$SLURM_CONF" >"$work/log/slurmctld.stdout" 2>&1 &
pids+=($!)
"$slurmd" -D -N localhost -f "$SLURM_CONF" >"$work/log/slurmd.stdout" 2>&1 &
pids+=($!)

# Wait for the node to come up idle; resume it if it starts down or drained.
state=""
for i in $(seq 120); do
  state="$(sinfo -h -N -n localhost -o '%t' 2>/dev/null | head -n 1 || true)"
  case "$state" in
    idle | mix) break ;;
    down* | drain* | drng* | fail*)
      scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1 || true ;;
  esac
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null || fail "a Slurm daemon exited (state: ${state:-none})"; done
  sleep 1
done
[[ "$state" == idle || "$state" == mix ]] || fail "the node never became idle (state: ${state:-none}; $(sinfo -h -N -o '%t %E' 2>&1 | head -n 1))"
echo "slurm is up: node localhost idle, $cpus CPU(s), partition kvtest"

# --- A tiny experiment ------------------------------------------------------------------------
# A directory name with a space, so the scripts' quoting is exercised on a real cluster.
t="$work/test/with space"
mkdir -p "$t/configs/models" "$t/configs/tasks" "$t/configs/experiments"
"$bin" model init --arch llama --preset tiny --random --seed 5 "$t/tiny" >/dev/null
printf 'source = "%s"\nchat_template = true\n' "$t/tiny" >"$t/configs/models/tiny.toml"
printf 'task = "passkey"\nlengths = [40, 120]\nsteps = 3\ndepths = 3\nseed = 7\n' >"$t/configs/tasks/needle.toml"
printf 'name = "t"\nmodels = ["tiny"]\ntasks = ["needle"]\nmethods = ["full", "snapkv"]\nratios = [2, 4]\n[run]\nthreads = 1\ndevice = "cpu"\n' \
  >"$t/configs/experiments/t.toml"
exp="$t/configs/experiments/t.toml"

echo "local single run..."
"$bin" run "$exp" --out "$t/single" --zero-measurements --threads 2 >"$t/single.log" 2>&1 || { cat "$t/single.log" >&2; fail "the local run failed"; }

echo "kvbench slurm --submit..."
submitted="$("$bin" slurm "$exp" --shards 3 --max-parallel 2 --partition kvtest --cpus-per-task 2 --time 30:00 --out "$t/cluster" --zero-measurements --submit)" ||
  fail "kvbench slurm --submit failed"
echo "$submitted"
array_id="$(sed -n 's/^submitted array job \([0-9]*\).*/\1/p' <<<"$submitted")"
merge_id="$(sed -n 's/^submitted merge job \([0-9]*\).*/\1/p' <<<"$submitted")"
[[ -n "$array_id" && -n "$merge_id" ]] || fail "no job ids in the output of kvbench slurm --submit"
dep="$(scontrol show job "$merge_id" | grep -o 'Dependency=[^ ]*' || true)"
[[ "$dep" == *"afterok:$array_id"* ]] || fail "the merge job's dependency is '$dep', expected afterok:$array_id"

# Wait until neither job is queued or running.
deadline=$((SECONDS + timeout_s))
while [[ -n "$(squeue -h -j "$array_id,$merge_id" -o '%i' 2>/dev/null)" ]]; do
  ((SECONDS < deadline)) || { squeue >&2; fail "the jobs did not finish within ${timeout_s}s"; }
  sleep 2
done
# Finished jobs stay visible to scontrol for MinJobAge (set above to an hour).
array_info="$(scontrol -o show job "$array_id" 2>&1)" || fail "scontrol show job $array_id: $array_info"
merge_info="$(scontrol -o show job "$merge_id" 2>&1)" || fail "scontrol show job $merge_id: $merge_info"
echo "array tasks: $(grep -o 'JobState=[A-Z_]*' <<<"$array_info" | tr '\n' ' ')"
echo "merge job:   $(grep -o 'JobState=[A-Z_]*' <<<"$merge_info")"
tasks="$(grep -c 'JobState=COMPLETED' <<<"$array_info" || true)"
[[ "$tasks" == 3 && "$(wc -l <<<"$array_info")" == 3 ]] || {
  tail -n 30 "$t"/cluster/slurm/logs/shard-* >&2 || true
  fail "expected 3 completed array tasks, scontrol shows:"$'\n'"$array_info"
}
grep -q 'JobState=COMPLETED' <<<"$merge_info" || { tail -n 30 "$t"/cluster/slurm/logs/merge-* >&2 || true; fail "the merge job did not complete: $merge_info"; }
# The experiment says threads = 1; the array script passes Slurm's CPUs per task (2) instead.
for i in 0 1 2; do
  grep -q '"threads": 2,' "$t/cluster/shard-$i/run.json" 2>/dev/null || fail "shard $i did not run with SLURM_CPUS_PER_TASK=2 threads (or wrote no run.json)"
done

# --- The merged report must equal the single run's --------------------------------------------
for f in leaderboard.csv leaderboard.md index.html examples.md examples.html; do
  [[ -f "$t/cluster/report/$f" ]] || fail "the cluster run wrote no report/$f"
  cmp -s "$t/single/report/$f" "$t/cluster/report/$f" || fail "report/$f differs between the Slurm run and the local run"
done
echo "PASS: test_slurm: 3 array tasks + dependent merge on a local Slurm cluster give a report byte-identical to a local run ($((SECONDS - start_s))s)"
