#!/usr/bin/env python3
"""PyTorch diffusers' side of `imvar bench`: the same stages (a UNet call at batch 2n, a VAE
decode, a whole generation) for the model's configs with random weights, one JSON line per
stage ({"stage", "median_ms", ...}). Needs torch and diffusers; CLIP comes from transformers
when it is installed (otherwise the generation is timed without it and says so).

    python3 scripts/bench_pipeline_torch.py [--model configs/sd-image-variations-diffusers]
        [--dtype f16] [--n 1] [--steps 50] [--runs 5]
"""

import argparse
import json
from pathlib import Path

import torch

from torch_timing import device_and_sync, timed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="configs/sd-image-variations-diffusers")
    parser.add_argument("--dtype", choices=["f16", "f32"], default="f16")
    parser.add_argument("--n", type=int, default=1)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel

    device, sync = device_and_sync()
    dtype = torch.float16 if args.dtype == "f16" else torch.float32
    root = Path(args.model)
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root / "unet")).to(device, dtype).eval()
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(root / "vae")).to(device, dtype).eval()
    scheduler = PNDMScheduler.from_config(PNDMScheduler.load_config(root / "scheduler"))
    try:
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
        clip = CLIPVisionModelWithProjection(CLIPVisionConfig.from_pretrained(root / "image_encoder")).to(device, dtype).eval()
    except ImportError:
        clip = None

    side = unet.config.sample_size
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu"

    def report(stage, batch, ms, **extra):
        print(json.dumps({"stage": stage, "median_ms": round(ms, 3), "batch": batch, "runs": args.runs,
                          "width": side * scale, "height": side * scale, "steps": args.steps, "dtype": args.dtype,
                          "device": gpu, "torch": torch.__version__, **extra}), flush=True)

    with torch.no_grad():
        batch = 2 * args.n
        sample = torch.randn(batch, unet.config.in_channels, side, side, device=device, dtype=dtype)
        context = torch.randn(batch, 1, unet.config.cross_attention_dim, device=device, dtype=dtype)
        report("unet_call", batch, timed(args.runs, lambda: unet(sample, 500, encoder_hidden_states=context), sync))
        latents = torch.randn(args.n, unet.config.in_channels, side, side, device=device, dtype=dtype)
        report("vae_decode", args.n, timed(args.runs, lambda: vae.decode(latents / 0.18215), sync))

        pixels = torch.randn(1, 3, 224, 224, device=device, dtype=dtype)

        def generation():
            if clip is not None:
                cond = clip(pixels).image_embeds.unsqueeze(1).repeat(args.n, 1, 1)
            else:
                cond = context[: args.n]
            embeds = torch.cat([torch.zeros_like(cond), cond])
            scheduler.set_timesteps(args.steps)
            x = torch.randn(args.n, unet.config.in_channels, side, side, device=device, dtype=dtype)
            for t in scheduler.timesteps:
                eps = unet(torch.cat([x, x]), t, encoder_hidden_states=embeds).sample
                uncond, cond_eps = eps.chunk(2)
                x = scheduler.step(uncond + 3.0 * (cond_eps - uncond), t, x).prev_sample
            return vae.decode(x / 0.18215).sample

        report("generation", args.n, timed(min(args.runs, 3), generation, sync), clip=clip is not None)


if __name__ == "__main__":
    main()
