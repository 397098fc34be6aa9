#!/usr/bin/env python3
"""Makes the real-scale check's model and references: the real repo's configs with seeded random
weights, in the real repo's layout, and diffusers' images on it.

Run by hand, never in CI:   python3 scripts/make_real_scale.py [--out DIR]

It runs in the fixtures' virtualenv (see scripts/make_fixtures.py, which it re-uses) and writes
about 7.5 GB to DIR (default ~/.cache/imvar/real-scale), outside the repository:
  - model/: `configs/sd-image-variations-diffusers/` byte for byte, with UNet, VAE and CLIP
    vision weights of exactly the real shapes (1.2 B parameters), fp32 `*.safetensors` as the
    Hub's converted files and an fp16 variant; the VAE mid-block attention under its legacy names
    and CLIP's `position_ids` buffer, as the real files hold them (both saved by the libraries of
    late 2022). No safety checker: model_index.json names one, as the real one does, and imvar
    must never ask for it.
  - golden/: the pipeline's PNGs (`RUNS` below): every scheduler at 128x128 from the fp32 files,
    n = 2 for PNDM and Euler a, the fp16 files (loaded as float32) for PNDM and DPM++ 2M, and
    PNDM at the model's own 512x512; manifest.json says how each was made, with its saturation
    figures.
Random weights can clip a whole picture to black or white, which would hide errors; every
reference image is checked for that (and for being flat) before it is written.
"""

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as fx  # noqa: E402

DEFAULT_OUT = Path("~/.cache/imvar/real-scale").expanduser()
# (scheduler, n, size, file variant): every scheduler at 128x128; two pictures at once; the
# model's own size; the fp16 files.
RUNS = [(name, 1, 128, None) for name in fx.SCHEDULERS] + [
    ("pndm", 2, 128, None),
    ("euler-a", 2, 128, None),
    ("pndm", 1, 128, "fp16"),
    ("dpm++2m", 1, 128, "fp16"),
    ("pndm", 1, 512, None),
]
# A picture with more than this share of its values at 0 or 255, or whose values vary less than
# this (standard deviation, in levels), would hide a wrong result.
MOST_SATURATED = 0.05
LEAST_STD = 8.0


def main():
    fx.ensure_venv()
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    out = parser.parse_args().out.expanduser()
    torch.use_deterministic_algorithms(True)
    model, golden = out / "model", out / "golden"
    shutil.rmtree(out, ignore_errors=True)
    golden.mkdir(parents=True)
    build_model(torch, model)
    runs = reference_runs(torch, model, golden)
    write_manifest(torch, golden, runs)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"real-scale model and references written to {out}; {size / 1e9:.2f} GB")


def build_model(torch, model):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    shutil.copytree(fx.REAL, model)  # the configs, byte for byte
    torch.manual_seed(fx.SEED)
    unet = UNet2DConditionModel(**fx.strip_meta(fx.real_config("unet/config.json")))
    vae = AutoencoderKL(**fx.strip_meta(fx.real_config("vae/config.json")))
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**fx.clip_arguments(fx.real_config("image_encoder/config.json"))))
    for part in (unet, vae, clip):
        fx.perturb_constant_parameters(torch, part)
    for name, part in (("unet", unet), ("vae", vae), ("image_encoder", clip)):
        fx.save_both_variants(torch, part, model / name)
    fx.rename_vae_attention_to_legacy(model / "vae")
    fx.add_position_ids(torch, model / "image_encoder", clip.config)
    for config in model.rglob("config.json"):  # save_pretrained rewrote them; the real ones win
        shutil.copyfile(fx.REAL / config.relative_to(model), config)
    for junk in model.rglob("generation_config.json"):
        junk.unlink()


def reference_runs(torch, model, golden):
    from diffusers import StableDiffusionImageVariationPipeline

    image = fx.preprocess("input.png")
    runs = []
    for variant in (None, "fp16"):
        pipe = StableDiffusionImageVariationPipeline.from_pretrained(
            model, variant=variant, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        for name, n, size, run_variant in RUNS:
            if run_variant != variant:
                continue
            pipe.scheduler = fx.scheduler(torch, name, model)
            with torch.no_grad():
                images = pipe(image, height=size, width=size, num_inference_steps=fx.STEPS, guidance_scale=fx.GUIDANCE,
                              num_images_per_prompt=n, generator=torch.Generator().manual_seed(fx.SEED),
                              output_type="pil").images
            run = f"{name}-n{n}-{size}-{variant or 'fp32'}"
            pngs, looks = [], []
            for k, img in enumerate(images):
                looks.append(check_not_saturated(run, k, img))
                pngs.append(f"{run}-{k}.png")
                img.save(golden / pngs[-1])
            print(f"{run}: {looks}", flush=True)
            runs.append(dict(name=run, scheduler=name, n=n, size=size, variant=variant or "fp32", seed=fx.SEED,
                             steps=fx.STEPS, guidance=fx.GUIDANCE, pngs=pngs, looks=looks))
        del pipe
    return runs


def check_not_saturated(run, k, img):
    import numpy as np

    values = np.asarray(img, dtype=np.float64)
    saturated = float(((values == 0) | (values == 255)).mean())
    std = float(values.std())
    if saturated > MOST_SATURATED or std < LEAST_STD:
        sys.exit(f"{run}-{k}: {saturated:.1%} of the values saturated, std {std:.1f} levels: "
                 "the random weights need another scale")
    return dict(saturated=round(saturated, 4), std=round(std, 1), mean=round(float(values.mean()), 1))


def write_manifest(torch, golden, runs):
    import diffusers
    import transformers

    versions = {"torch": torch.__version__, "diffusers": diffusers.__version__,
                "transformers": transformers.__version__, "python": sys.version.split()[0]}
    manifest = {"versions": versions, "input": "tests/fixtures/input.png", "runs": runs,
                "threads": torch.get_num_threads(), "made_by": os.path.basename(__file__)}
    (golden / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
