#!/usr/bin/env python3
"""kvbench vs Hugging Face transformers (and kvpress, where the method exists there), side by side.

Same model file (the SmolLM2 GGUF, which transformers dequantises to f32), same dtype (f32), same
threads, same prompt tokens (the Paul Graham essays, concatenated in file-name order and cut to the
context length, exactly as `kvbench bench` builds its prompt), greedy decoding of the same number
of tokens. The engines alternate within one session: for each repeat and context, a fresh
transformers worker process and a fresh `kvbench bench` process run back to back, so drift in the
machine's load hits both. Each worker measures its own figures:

  prefill tok/s   context tokens / seconds to the first generated token (logits of the last
                  position only, as generation computes them)
  decode tok/s    (new tokens - 1) / seconds after the first token
  peak RSS        the process's VmHWM after the peak was reset once the model was loaded
                  (/proc/self/clear_refs), so model loading does not count for either engine

It prints the medians and the ratios kvbench / transformers, and writes them as JSON.
Usage: bench/compare/run.sh [--contexts 1024,4096] [--new-tokens 64] [--repeats 3] [--threads 2]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def essays_ids(tok, n, home):
    d = os.path.join(home, "data", "pg_essays")
    files = sorted(f for f in os.listdir(d) if f.endswith(".txt"))
    ids = []
    for f in files * 8:
        if len(ids) >= n:
            break
        with open(os.path.join(d, f), encoding="utf-8") as fh:
            ids.extend(tok(fh.read(), add_special_tokens=False).input_ids)
    if len(ids) < n:
        raise SystemExit(f"the essays give only {len(ids)} tokens")
    return ids[:n]


def vm_hwm():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def worker(args):
    """One transformers (or kvpress) measurement in this process; prints one JSON line."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    d, name = os.path.split(os.path.abspath(args.gguf))
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    ids = torch.tensor([essays_ids(tok, args.context, args.home)])
    press = None
    if args.press:
        from kvpress import SnapKVPress, StreamingLLMPress

        ratio = 1.0 - 1.0 / args.press_ratio
        press = {"snapkv": lambda: SnapKVPress(compression_ratio=ratio, window_size=64, kernel_size=5),
                 "streamingllm": lambda: StreamingLLMPress(compression_ratio=ratio, n_sink=4)}[args.press]()

    def once(new_tokens):
        import contextlib

        ctx = press(model) if press is not None else contextlib.nullcontext()
        with torch.inference_mode():
            t0 = time.perf_counter()
            with ctx:
                out = model(ids, use_cache=True, logits_to_keep=1)
            pkv = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            t1 = time.perf_counter()
            for _ in range(new_tokens - 1):
                out = model(nxt, past_key_values=pkv, use_cache=True)
                pkv = out.past_key_values
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            t2 = time.perf_counter()
        return t1 - t0, t2 - t1

    once(min(4, args.new_tokens))  # warm-up
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    prefill_s, decode_s = once(args.new_tokens)
    print(json.dumps({
        "prefill_tokens_per_s": args.context / prefill_s,
        "decode_tokens_per_s": (args.new_tokens - 1) / decode_s if args.new_tokens > 1 else 0.0,
        "peak_rss_bytes": vm_hwm(),
        "torch": torch.__version__,
    }))


def run_transformers(args, context, press=None):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--gguf", args.gguf, "--home", args.home,
           "--context", str(context), "--new-tokens", str(args.new_tokens), "--threads", str(args.threads)]
    if press:
        cmd += ["--press", press, "--press-ratio", str(args.press_ratio)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"transformers worker failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_kvbench(args, context, method="full"):
    cmd = [args.kvbench, "bench", "--json", "--device", "cpu", "--threads", str(args.threads), "--methods", method,
           "--contexts", str(context), "--new-tokens", str(args.new_tokens), "--repeats", "1", "--warmup", "1",
           "--out", os.path.join(args.out, "kvbench-last")]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"kvbench bench failed:\n{out.stderr[-4000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])["rows"][0]
    return {k: row[k] for k in ("prefill_tokens_per_s", "decode_tokens_per_s", "peak_rss_bytes")}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--gguf", required=True)
    p.add_argument("--home", required=True, help="KVBENCH_HOME (for the essays)")
    p.add_argument("--kvbench", default="target/release/kvbench")
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--contexts", default="1024,4096")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--press", choices=["snapkv", "streamingllm"], help="also run this kvpress press against kvbench's method")
    p.add_argument("--press-ratio", type=float, default=8.0, help="the press's N x (kvpress compression_ratio = 1 - 1/N)")
    p.add_argument("--out", default="runs/compare")
    args = p.parse_args()
    if args.worker:
        return worker(args)
    os.makedirs(args.out, exist_ok=True)
    contexts = [int(c) for c in args.contexts.split(",")]
    engines = [("transformers", lambda c: run_transformers(args, c)), ("kvbench", lambda c: run_kvbench(args, c))]
    if args.press:
        engines += [(f"kvpress {args.press} {args.press_ratio:g}x", lambda c: run_transformers(args, c, args.press)),
                    (f"kvbench {args.press} {args.press_ratio:g}x", lambda c: run_kvbench(args, c, f"{args.press}(ratio={args.press_ratio:g})"))]
    results = {}
    for r in range(args.repeats):
        for c in contexts:
            # Alternate the order between repeats so neither engine always runs first.
            order = engines if r % 2 == 0 else list(reversed(engines))
            for name, fn in order:
                m = fn(c)
                results.setdefault(f"{c}", {}).setdefault(name, []).append(m)
                print(f"repeat {r + 1} context {c} {name}: prefill {m['prefill_tokens_per_s']:.1f} tok/s, "
                      f"decode {m['decode_tokens_per_s']:.2f} tok/s, peak RSS {m['peak_rss_bytes'] / 2**20:.0f} MiB", file=sys.stderr)
    summary = {"threads": args.threads, "new_tokens": args.new_tokens, "repeats": args.repeats, "contexts": {}}
    print(f"| context | engine | prefill tok/s | decode tok/s | peak RSS MiB |")
    print(f"|---:|---|---:|---:|---:|")
    for c, per in results.items():
        med = {name: {k: statistics.median(x[k] for x in runs) for k in runs[0] if k != "torch"} for name, runs in per.items()}
        summary["contexts"][c] = med
        for name, m in med.items():
            print(f"| {c} | {name} | {m['prefill_tokens_per_s']:.1f} | {m['decode_tokens_per_s']:.2f} | {m['peak_rss_bytes'] / 2**20:.0f} |")
        k, t = med["kvbench"], med["transformers"]
        ratio = {key: k[key] / t[key] for key in k}
        med["ratio kvbench/transformers"] = ratio
        print(f"| {c} | **kvbench / transformers** | **{ratio['prefill_tokens_per_s']:.2f}x** | "
              f"**{ratio['decode_tokens_per_s']:.2f}x** | **{ratio['peak_rss_bytes']:.2f}x** |")
    with open(os.path.join(args.out, "compare.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"\nwritten: {os.path.join(args.out, 'compare.json')}", file=sys.stderr)


if __name__ == "__main__":
    main()
