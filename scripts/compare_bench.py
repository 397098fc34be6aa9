#!/usr/bin/env python3
"""Joins the JSON lines of one GPU benchmark run (scripts/gpu_bench) into the Markdown tables
of docs/performance.md: per operation imvar's kernel, burn's stock op and PyTorch; per
pipeline stage imvar against PyTorch, with ratios; and the GEMM's choices by shape (thread
block, split depth) against each forced.

    python3 scripts/compare_bench.py DIR
"""

import json
import sys
from pathlib import Path


def lines(path):
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def ratio(a, b):
    return f"{a / b:.1f}x" if a and b else "—"


def ms(value):
    return "—" if value is None else f"{value:.3f}"


def main():
    root = Path(sys.argv[1])
    print("| op | shape | dtype | imvar ms | burn stock ms | PyTorch ms | imvar / PyTorch | burn / imvar |")
    print("|---|---|---|---|---|---|---|---|")
    for dtype in ["f16", "f32"]:
        torch = {(l["op"], l["shape"]): l["torch_ms"] for l in lines(root / f"ops-torch-{dtype}.jsonl")}
        for l in lines(root / f"ops-imvar-{dtype}.jsonl"):
            ours, stock, reference = l["ours_ms"], l["burn_ms"], torch.get((l["op"], l["shape"]))
            print(f"| {l['op']} | {l['shape']} | {dtype} | {ms(ours)} | {ms(stock)} | {ms(reference)} | "
                  f"{ratio(ours, reference)} | {ratio(stock, ours)} |")
    print()
    print("| stage | dtype | imvar ms | PyTorch ms | imvar / PyTorch |")
    print("|---|---|---|---|---|")
    for dtype in ["f16", "f32"]:
        torch = {l["stage"]: l["median_ms"] for l in lines(root / f"pipeline-torch-{dtype}.jsonl")}
        for l in lines(root / f"pipeline-imvar-{dtype}.jsonl"):
            if "median_ms" in l:
                print(f"| {l['stage']} (batch {l['batch']}) | {dtype} | {ms(l['median_ms'])} | "
                      f"{ms(torch.get(l['stage']))} | {ratio(l['median_ms'], torch.get(l['stage']))} |")
    print()
    variants = ("block4", "block8", "nosplit")
    print("| GEMM op or stage | shape | f16 ms, chosen per shape | block 4 forced | block 8 forced | depth never split |")
    print("|---|---|---|---|---|---|")
    chosen = {(l["op"], l["shape"]): l["ours_ms"] for l in lines(root / "ops-imvar-f16.jsonl")}
    forced = {v: {(l["op"], l["shape"]): l["ours_ms"] for l in lines(root / f"ops-imvar-f16-{v}.jsonl")} for v in variants}
    for key in chosen:
        if key[0].startswith(("conv2d", "linear")):
            print(f"| {key[0]} | {key[1]} | {ms(chosen[key])} | " + " | ".join(ms(forced[v].get(key)) for v in variants) + " |")
    chosen = {l["stage"]: l["median_ms"] for l in lines(root / "pipeline-imvar-f16.jsonl") if "median_ms" in l}
    forced = {v: {l["stage"]: l["median_ms"] for l in lines(root / f"pipeline-imvar-f16-{v}.jsonl") if "median_ms" in l}
              for v in variants}
    for stage in ("clip_encode", "unet_call", "vae_decode"):
        print(f"| {stage} | as above | {ms(chosen.get(stage))} | " + " | ".join(ms(forced[v].get(stage)) for v in variants) + " |")

if __name__ == "__main__":
    main()
