#!/usr/bin/env python3
"""Estimated compute time of the offline-v1 grid on the machine that measured its inputs.

Inputs, all measured:
  * a probe run: the SmolLM2 half of the grid with one of each task's 400 samples (the same
    sample in every cell), so each method's cost relative to the full cache is a paired ratio;
  * reports/offline-v1/rates.txt (scripts/measure_offline_v1_rates.sh): full-cache prefill
    seconds and decode tokens/s of both models at about 2K-16K tokens.

Model of the cost of one sample of (model, method row, task):
    full(model, task, n tokens) = prefill(n) + generated / decode(n)
    cost = full x (probe seconds of the row / probe seconds of the full cache, same sample)
with prefill(n) = a*n + b*n^2 and 1/decode(n) = c + d*n fitted to the measured points (least
squares). Lengths beyond the longest measured point are extrapolated and flagged. Passkey
samples take the grid's 10 background lengths; the other tasks the probe sample's token count.
The result is an estimate, not a measurement: it says how long the grid would take, not what it
scores.

Usage: scripts/estimate_offline_v1.py PROBE_RUN_DIR [--rates reports/offline-v1/rates.txt]
"""

import argparse
import json
import pathlib
import tomllib
from collections import defaultdict

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODELS = ["smollm2-135m", "qwen2.5-0.5b"]


def lstsq2(xs, ys, f1, f2):
    """Least squares y = p*f1(x) + q*f2(x) (no intercept unless f1 is constant)."""
    a11 = sum(f1(x) ** 2 for x in xs)
    a12 = sum(f1(x) * f2(x) for x in xs)
    a22 = sum(f2(x) ** 2 for x in xs)
    b1 = sum(f1(x) * y for x, y in zip(xs, ys))
    b2 = sum(f2(x) * y for x, y in zip(xs, ys))
    det = a11 * a22 - a12 * a12
    return (b1 * a22 - b2 * a12) / det, (a11 * b2 - a12 * b1) / det


def load_rates(path):
    rates = defaultdict(list)
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5:
            rates[parts[0]].append((int(parts[1]), float(parts[2]), float(parts[4])))
    fits = {}
    for model, pts in rates.items():
        n = [p[0] for p in pts]
        pa, pb = lstsq2(n, [p[1] for p in pts], lambda x: x, lambda x: x * x)
        dc, dd = lstsq2(n, [1.0 / p[2] for p in pts], lambda x: 1.0, lambda x: x)
        fits[model] = {"prefill": (pa, pb), "decode": (dc, dd), "max_tokens": max(n)}
    return fits


def full_seconds(fit, tokens, generated):
    pa, pb = fit["prefill"]
    dc, dd = fit["decode"]
    return pa * tokens + pb * tokens * tokens + max(generated - 1, 0) * (dc + dd * tokens)


def read_probe(run):
    """(label, ratio, task) -> (input tokens, generated tokens, seconds) of the probe's sample."""
    out = {}
    for cell in sorted((run / "cells").iterdir()):
        info = json.loads((cell / "cell.json").read_text())
        recs = [json.loads(l) for l in (cell / "records.jsonl").read_text().splitlines() if l.strip()]
        if not recs:
            continue
        r = recs[0]
        decode = (r["generated_tokens"] - 1) / r["decode_tokens_per_s"] if r["generated_tokens"] > 1 and r["decode_tokens_per_s"] > 0 else 0.0
        seconds = r["prefill_seconds"] + decode + r.get("prompt_compression_seconds", 0.0)
        out[(info["method_label"], info.get("ratio"), info["task"])] = (r["input_tokens"], r["generated_tokens"], seconds)
    return out


def grid(model):
    exp = tomllib.loads((ROOT / "configs/experiments/offline-v1" / f"{model}.toml").read_text())
    tasks = {}
    for t in exp["tasks"]:
        tasks[t] = tomllib.loads((ROOT / "configs/tasks" / f"{t}.toml").read_text())
    return exp, tasks


def passkey_tokens(model, words):
    # Prompt tokens per background word, from the rates file's prompts (measured, see rates.txt):
    # SmolLM2 7,886 tokens at 5,600 words; Qwen2.5 15,517 at 11,500.
    per_word = {"smollm2-135m": 7886 / 5600, "qwen2.5-0.5b": 15517 / 11500}[model]
    return int(words * per_word)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("probe", type=pathlib.Path)
    ap.add_argument("--rates", type=pathlib.Path, default=ROOT / "reports/offline-v1/rates.txt")
    a = ap.parse_args()
    fits = load_rates(a.rates)
    probe = read_probe(a.probe)
    rows = sorted({(l, r) for (l, r, _) in probe}, key=lambda x: (x[0] != "full", x[0], x[1] or 0))
    print(f"probe: {len(probe)} cells of {a.probe}")
    direct = sum(s for (_, _, s) in probe.values())
    print(f"probe wall time in samples: {direct / 60:.1f} min; x400 samples per cell: {direct * 400 / 3600:.0f} h (SmolLM2, direct)")
    grand = 0.0
    for model in MODELS:
        exp, tasks = grid(model)
        fit = fits[model]
        per_row = defaultdict(float)
        extrapolated = False
        missing = set()
        for tname, t in tasks.items():
            probe_task = tname if tname in {k[2] for k in probe} else ("passkey-8k" if t["task"] == "passkey" else tname)
            full = probe.get(("full", None, probe_task))
            if full is None:
                missing.add(tname)
                continue
            if t["task"] == "passkey":
                lo, hi = t["lengths"]
                steps = t["steps"]
                words = [lo + (hi - lo) * i / (steps - 1) for i in range(steps)]
                per_len = t["depths"] * t["trials"]
                lengths = [(passkey_tokens(model, w), per_len) for w in words]
            else:
                lengths = [(full[0], t["samples"])]
            extrapolated |= any(n > fit["max_tokens"] for n, _ in lengths)
            for row in rows:
                got = probe.get((row[0], row[1], probe_task))
                if got is None:
                    missing.add(f"{row[0]} {row[1]} {tname}")
                    continue
                factor = got[2] / full[2]
                gen = got[1]
                per_row[row] += sum(k * full_seconds(fit, n, gen) * factor for n, k in lengths)
        total = sum(per_row.values())
        grand += total
        print(f"\n## {model}: ~{total / 3600:.0f} h{' (lengths beyond the measured rates extrapolated)' if extrapolated else ''}\n")
        print("| method | budget | hours |")
        print("|---|---|---:|")
        for row in rows:
            if row in per_row:
                print(f"| {row[0]} | {'-' if row[1] is None else f'{row[1]:g}x'} | {per_row[row] / 3600:.1f} |")
        if missing:
            print(f"\n(not in the probe, left out: {', '.join(sorted(missing))})")
    print(f"\ntotal: ~{grand / 3600:.0f} h of this machine (an estimate)")


if __name__ == "__main__":
    main()
