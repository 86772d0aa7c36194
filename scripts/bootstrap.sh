#!/usr/bin/env bash
# Creates the project-local Python environment that provides libtorch (PyPI torch==2.13.0, the
# version tch 0.26.0 is built against) and, with --test, the reference packages the test suite
# compares against (transformers, gguf, rouge, fuzzywuzzy, jieba). Idempotent and quiet when done.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

py="${KVBENCH_BOOTSTRAP_PYTHON:-python3}"
if [[ ! -x "$venv/bin/python" ]]; then
  echo "kvbench: creating $venv (first run only)" >&2
  "$py" -m venv "$venv"
fi
if [[ ! -f "$venv/.runtime-ok" ]]; then
  echo "kvbench: installing torch==2.13.0 into .venv for libtorch (about 5 GB, first run only)" >&2
  "$venv/bin/python" -m pip install --disable-pip-version-check -q "torch==2.13.0"
  touch "$venv/.runtime-ok"
fi
if [[ ! -e "$venv/libtorch/lib/libtorch_cpu.so" ]]; then
  torch_dir="$("$venv/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
  ln -sfn "$torch_dir" "$venv/libtorch"
fi
if [[ $want_test == 1 ]]; then
  req="$root/scripts/requirements-test.txt"
  stamp="$venv/.test-ok-$(sha256sum "$req" | cut -c1-16)"
  if [[ ! -f "$stamp" ]]; then
    echo "kvbench: installing test reference packages into .venv" >&2
    "$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$req"
    touch "$stamp"
  fi
fi
