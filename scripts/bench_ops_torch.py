#!/usr/bin/env python3
"""PyTorch's side of `imvar bench-ops`: the same operations at the same shapes, one JSON line
each ({"op", "shape", "dtype", "torch_ms", ...}), median of --runs after a warm-up, the device
synchronised around each run. Needs only torch (CUDA when there is a GPU).

    python3 scripts/bench_ops_torch.py --dtype f16 [--runs 10] [--small]
"""

import argparse
import json

import torch
import torch.nn.functional as F

from torch_timing import device_and_sync, timed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=["f16", "f32"], default="f16")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--small", action="store_true", help="channels and sides / 8 (as imvar's --small)")
    args = parser.parse_args()
    device, sync = device_and_sync()
    dtype = torch.float16 if args.dtype == "f16" else torch.float32
    div = 8 if args.small else 1
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu"

    def report(op, shape, ms):
        print(json.dumps({"op": op, "shape": shape, "dtype": args.dtype, "torch_ms": round(ms, 3),
                          "runs": args.runs, "device": gpu, "torch": torch.__version__}), flush=True)

    rand = lambda *shape: torch.rand(*shape, device=device, dtype=dtype) * 2 - 1
    with torch.no_grad():
        convs = [(2, 320, 64, 3), (2, 640, 32, 3), (2, 1280, 16, 3), (2, 1280, 8, 3),
                 (1, 128, 512, 3), (1, 256, 256, 3), (1, 512, 128, 3), (2, 320, 64, 1), (2, 1280, 16, 1)]
        for batch, channels, side, k in convs:
            c, s = max(channels // div, 8), max(side // div, 4)
            x, w, b = rand(batch, c, s, s), rand(c, c, k, k) * 0.05, torch.zeros(c, device=device, dtype=dtype)
            report(f"conv2d_{k}x{k}", f"x[{batch},{c},{s},{s}] w[{c},{c}]",
                   timed(args.runs, lambda: F.conv2d(x, w, b, padding=k // 2), sync))
        c, s = max(320 // div, 8), max(64 // div, 4)
        x, r, w = rand(2, c, s, s), rand(2, c, s, s), rand(c, c, 3, 3) * 0.05
        b = torch.zeros(c, device=device, dtype=dtype)
        # diffusers' ResnetBlock2D tail: (input + conv2(h)) / output_scale_factor.
        report("conv2d_3x3_residual", f"x[2,{c},{s},{s}] w[{c},{c}]",
               timed(args.runs, lambda: (r + F.conv2d(x, w, b, padding=1)) / 1.0, sync))
        for batch, channels, side in [(2, 320, 64), (1, 128, 512)]:
            c, s = max(channels // div // 32, 1) * 32, max(side // div, 4)
            x = rand(batch, c, s, s)
            gamma, beta = torch.ones(c, device=device, dtype=dtype), torch.zeros(c, device=device, dtype=dtype)
            report("group_norm_silu", f"[{batch},{c},{s},{s}] groups 32",
                   timed(args.runs, lambda: F.silu(F.group_norm(x, 32, gamma, beta, 1e-5)), sync))
        for rows, inputs, outputs in [(8192, 320, 320), (8192, 320, 2560), (2048, 640, 640), (512, 1280, 1280)]:
            r, i, o = rows // div, inputs // div, outputs // div
            x, w = rand(r, i), rand(o, i) * 0.05
            report("linear", f"[{r},{i}]x[{i},{o}]", timed(args.runs, lambda: F.linear(x, w), sync))
        for rows, dim in [(8192, 320), (2048, 640), (512, 1280), (257, 1024)]:
            r, d = rows // div, max(dim // div, 8)
            x = rand(r, d)
            gamma, beta = torch.ones(d, device=device, dtype=dtype), torch.zeros(d, device=device, dtype=dtype)
            report("layer_norm", f"[{r},{d}]", timed(args.runs, lambda: F.layer_norm(x, (d,), gamma, beta, 1e-5), sync))
        for rows, inner in [(8192, 1280), (512, 5120)]:
            r, i = rows // div, inner // div
            x = rand(r, 2 * i)

            def geglu():
                hidden, gate = x.chunk(2, dim=-1)
                return hidden * F.gelu(gate)
            report("geglu", f"[{r},{2 * i}]", timed(args.runs, geglu, sync))
        for batch, heads, tokens, dim in [(2, 8, 4096, 40), (2, 8, 1024, 80), (1, 1, 4096, 512)]:
            t, d = tokens // div // div, max(dim // div, 8)
            q, k, v = rand(batch, heads, t, d), rand(batch, heads, t, d), rand(batch, heads, t, d)
            report("attention", f"[{batch},{heads},{t},{d}]",
                   timed(args.runs, lambda: F.scaled_dot_product_attention(q, k, v), sync))


if __name__ == "__main__":
    main()
