#!/usr/bin/env python3
"""Joins the JSON lines of one GPU benchmark run (scripts/gpu_bench) into the Markdown tables
of docs/performance.md: per operation imvar's kernel, burn's stock op and PyTorch; per
pipeline stage imvar against PyTorch, with ratios; and the GEMM's thread block chosen per shape
against each forced.

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
    print("| GEMM op or stage | shape | f16 ms, chosen per shape | block 4 forced | block 8 forced |")
    print("|---|---|---|---|---|")
    chosen = {(l["op"], l["shape"]): l["ours_ms"] for l in lines(root / "ops-imvar-f16.jsonl")}
    forced = {block: {(l["op"], l["shape"]): l["ours_ms"] for l in lines(root / f"ops-imvar-f16-block{block}.jsonl")}
              for block in (4, 8)}
    for key in chosen:
        if key[0].startswith(("conv2d", "linear")):
            print(f"| {key[0]} | {key[1]} | {ms(chosen[key])} | {ms(forced[4].get(key))} | {ms(forced[8].get(key))} |")
    chosen = {l["stage"]: l["median_ms"] for l in lines(root / "pipeline-imvar-f16.jsonl") if "median_ms" in l}
    forced = {block: {l["stage"]: l["median_ms"] for l in lines(root / f"pipeline-imvar-f16-block{block}.jsonl")
                      if "median_ms" in l} for block in (4, 8)}
    for stage in ("clip_encode", "unet_call", "vae_decode"):
        print(f"| {stage} | batch as above | {ms(chosen.get(stage))} | {ms(forced[4].get(stage))} | {ms(forced[8].get(stage))} |")


if __name__ == "__main__":
    main()
