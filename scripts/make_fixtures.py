#!/usr/bin/env python3
"""Makes imvar's reference fixtures with the reference implementation (PyTorch diffusers).

Run by hand, never in CI:   python3 scripts/make_fixtures.py

It creates its own virtualenv (IMVAR_FIXTURES_VENV, default ~/.cache/imvar/fixtures-venv) with
pinned PyTorch + diffusers + transformers from PyPI (about 3 GB), re-runs itself there, and writes
tests/fixtures/ from scratch:
  - tiny-sd-image-variations/: a tiny random StableDiffusionImageVariationPipeline of the real
    component classes, in the Hub layout, fp32 and variant="fp16" safetensors, configs with only
    the keys the real repo's configs have (configs/sd-image-variations-diffusers/);
  - input.png, input-rgba.png: the test pictures;
  - golden/: tensors and PNGs from the reference pipeline, and a manifest of how they were made.
Everything is seeded: a second run on the same machine writes the same bytes (another CPU can
round a few float results differently in the last bit, e.g. the Euler sigmas).
"""

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

VENV = Path(os.environ.get("IMVAR_FIXTURES_VENV", "~/.cache/imvar/fixtures-venv")).expanduser()
PINNED = [
    "torch==2.15.0",
    "torchvision==0.29.2",
    "diffusers==0.42.1",
    "transformers==5.24.0",
    "accelerate==1.15.0",
    "safetensors==0.8.0",
    "pillow==13.0.0",
    "numpy==2.4.6",
]

ROOT = Path(__file__).resolve().parent.parent
REAL = ROOT / "configs" / "sd-image-variations-diffusers"
OUT = ROOT / "tests" / "fixtures"
MODEL = OUT / "tiny-sd-image-variations"
GOLDEN = OUT / "golden"

# Generation settings of the golden runs.
SEED = 2026
STEPS = 5
GUIDANCE = 3.0
SCHEDULERS = {  # our name -> diffusers class name, each built from the repo's raw config file
    "pndm": "PNDMScheduler",
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "dpm++2m": "DPMSolverMultistepScheduler",
}
# Tiny sizes: the real block types and the c,2c,4c,4c channel pattern; cross_attention_dim (= CLIP
# projection_dim) differs from every UNet width; CLIP keeps image 224 / patch 14 (257 tokens).
UNET_CHANNELS = [16, 32, 64, 64]
CROSS_DIM = 24
VAE_CHANNELS = [16, 32, 64, 64]
NORM_GROUPS = 8
CLIP = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4)
RANDN_SEEDS = [0, 1, 42, 2026, 2**32 + 7]
RANDN_SHAPES = [[1], [3], [8], [15], [16], [17], [33], [100], [1, 4, 16, 16], [2, 4, 16, 16],
                [1, 4, 64, 64], [2, 4, 64, 64]]
RANDN_STREAM = (7, [[5], [3], [17], [2, 4, 16, 16], [1]])  # consecutive draws on one generator


def ensure_venv():
    """Re-runs the running script (this one, or one that imports it) inside the pinned
    virtualenv, creating it when needed."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    python = VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {VENV}", file=sys.stderr)
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
    subprocess.check_call([str(python), "-m", "pip", "install", "-q", *PINNED])
    os.execv(str(python), [str(python), os.path.abspath(sys.argv[0]), *sys.argv[1:]])


def main():
    ensure_venv()
    import numpy as np
    import torch

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # same reduction order on every machine
    shutil.rmtree(OUT, ignore_errors=True)
    GOLDEN.mkdir(parents=True)
    (GOLDEN / "images").mkdir()

    make_test_images(np)
    build_tiny_model(torch)
    pipe = load_pipeline(torch, variant=None)
    check_round_trip(torch, pipe)

    golden_preprocess(torch)
    golden_clip(torch, pipe)
    golden_schedulers(torch)
    golden_randn(torch)
    runs = golden_runs(torch, np)
    write_manifest(torch, runs)
    print(f"fixtures written to {OUT}; {sum(f.stat().st_size for f in OUT.rglob('*') if f.is_file()) / 2**20:.1f} MiB")


# ---------------------------------------------------------------------------------------------
# Inputs and the tiny model


def make_test_images(np):
    """A photo-like RGB picture (smooth gradients, hard edges, fine noise) at 300x200, so the
    resize both shrinks and enlarges, and a small RGBA one for PIL's convert("RGB")."""
    from PIL import Image

    rng = np.random.default_rng(SEED)
    h, w = 200, 300
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([x / w, y / h, 0.5 + 0.5 * np.sin(x / 17.0) * np.cos(y / 11.0)], axis=-1)
    disc = (x - 190) ** 2 + (y - 90) ** 2 < 55**2
    img[disc] = [0.9, 0.2, 0.1]
    img[20:60, 30:120] = [0.1, 0.3, 0.8]
    img += rng.normal(0, 0.04, img.shape)
    Image.fromarray(to_u8(np, img)).save(OUT / "input.png")

    h, w = 131, 97
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    rgba = np.stack([y / h, np.abs(np.sin(x / 9.0)), x / w, 0.2 + 0.8 * (x / w)], axis=-1)
    Image.fromarray(to_u8(np, rgba), mode="RGBA").save(OUT / "input-rgba.png")


def to_u8(np, img):
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def real_config(path):
    return json.loads((REAL / path).read_text())


def build_tiny_model(torch):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(SEED)
    unet_real, vae_real, clip_real = (real_config(f"{c}/config.json") for c in ("unet", "vae", "image_encoder"))
    unet = UNet2DConditionModel(**{
        **strip_meta(unet_real),
        "sample_size": 16,
        "block_out_channels": UNET_CHANNELS,
        "cross_attention_dim": CROSS_DIM,
        "attention_head_dim": 4,  # SD1.x meaning: the number of heads
        "norm_num_groups": NORM_GROUPS,
    })
    vae = AutoencoderKL(**{
        **strip_meta(vae_real),
        "sample_size": 128,
        "block_out_channels": VAE_CHANNELS,
        "norm_num_groups": NORM_GROUPS,
    })
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**{**clip_arguments(clip_real), **CLIP, "projection_dim": CROSS_DIM}))
    for model in (unet, vae, clip):
        perturb_constant_parameters(torch, model)

    # fp32 and fp16 weights; configs cut down to the real repo's keys.
    for name, model in (("unet", unet), ("vae", vae), ("image_encoder", clip)):
        save_both_variants(torch, model, MODEL / name)

    write_config_like_real("unet/config.json", unet.config)
    write_config_like_real("vae/config.json", vae.config)
    clip_config = clip.config.to_dict()
    clip_config.update(architectures=["CLIPVisionModelWithProjection"], torch_dtype="float32")
    write_config_like_real("image_encoder/config.json", clip_config)
    rename_vae_attention_to_legacy(MODEL / "vae")
    add_position_ids(torch, MODEL / "image_encoder", clip.config)

    for path in ("scheduler/scheduler_config.json", "feature_extractor/preprocessor_config.json"):
        (MODEL / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REAL / path, MODEL / path)  # byte for byte
    index = real_config("model_index.json")
    index["safety_checker"] = [None, None]  # the tiny pipeline has none, as diffusers writes it
    (MODEL / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    for junk in MODEL.rglob("generation_config.json"):
        junk.unlink()


def strip_meta(config):
    return {k: v for k, v in config.items() if not k.startswith("_")}


def clip_arguments(config):
    """A CLIP vision config file's keys that CLIPVisionConfig takes."""
    return {k: v for k, v in strip_meta(config).items() if k not in ("architectures", "model_type", "torch_dtype")}


def save_both_variants(torch, model, folder):
    """fp32 files and the fp16 variant (the model is left rounded to fp16, in float32)."""
    model.save_pretrained(folder, safe_serialization=True)
    model.to(torch.float16).save_pretrained(folder, safe_serialization=True, variant="fp16")
    model.to(torch.float32)


def perturb_constant_parameters(torch, model):
    """Norm weights start at 1 and biases at 0: a port that ignored them would still match.
    Seeded noise makes every parameter matter."""
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            flat = p.flatten()
            if flat.numel() > 1 and bool((flat == flat[0]).all()):
                p.add_(0.2 * torch.randn(p.shape))


def write_config_like_real(path, config):
    """Keeps only the keys the real repo's config has, so the loader must supply the library
    defaults for the rest; the tiny model's own values win, meta keys come from the real file."""
    real = real_config(path)
    config = dict(config)
    out = {k: (real[k] if k.startswith("_") or k not in config else config[k]) for k in real}
    (MODEL / path).write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")


def rename_vae_attention_to_legacy(folder):
    """diffusers 0.9 saved the VAE mid-block attention as query/key/value/proj_attn."""
    from safetensors.torch import load_file, save_file

    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    for file in folder.glob("*.safetensors"):
        tensors = load_file(file)
        renamed = {}
        for key, value in tensors.items():
            for new, old in legacy.items():
                if ".mid_block.attentions." in key and f".{new}." in key:
                    key = key.replace(f".{new}.", f".{old}.")
            renamed[key] = value
        assert renamed.keys() != tensors.keys()
        save_file(renamed, file, metadata={"format": "pt"})


def add_position_ids(torch, folder, config):
    """transformers before 4.31 saved CLIP's `position_ids` buffer (int64) with the weights."""
    from safetensors.torch import load_file, save_file

    tokens = (config.image_size // config.patch_size) ** 2 + 1
    for file in folder.glob("*.safetensors"):
        tensors = load_file(file)
        tensors["vision_model.embeddings.position_ids"] = torch.arange(tokens, dtype=torch.int64).unsqueeze(0)
        save_file(tensors, file, metadata={"format": "pt"})


def load_pipeline(torch, variant):
    from diffusers import StableDiffusionImageVariationPipeline

    pipe = StableDiffusionImageVariationPipeline.from_pretrained(
        MODEL, variant=variant, torch_dtype=torch.float32, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check_round_trip(torch, pipe):
    """The reference must run on exactly the weights in the files (legacy names included)."""
    from safetensors.torch import load_file

    for name in ("unet", "vae"):
        on_disk = load_file(MODEL / name / "diffusion_pytorch_model.safetensors")
        loaded = getattr(pipe, name).state_dict()
        assert len(on_disk) == len(loaded), name
        total = sum(float(v.double().abs().sum()) for v in on_disk.values())
        assert abs(total - sum(float(v.double().abs().sum()) for v in loaded.values())) < 1e-6 * total, name


# ---------------------------------------------------------------------------------------------
# Golden tensors


def save(path, tensors):
    from safetensors.torch import save_file

    save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, GOLDEN / path)


def model_card_transform():
    """The model card's preprocessing, verbatim."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.ToTensor(),
        transforms.Resize((224, 224), interpolation=transforms.InterpolationMode.BICUBIC, antialias=False),
        transforms.Normalize([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]),
    ])


def preprocess(name):
    from PIL import Image

    return model_card_transform()(Image.open(OUT / name).convert("RGB")).unsqueeze(0)


def golden_preprocess(torch):
    save("preprocess.safetensors", {"input": preprocess("input.png"), "input-rgba": preprocess("input-rgba.png")})


def golden_clip(torch, pipe):
    with torch.no_grad():
        out = pipe.image_encoder(preprocess("input.png"), output_hidden_states=True)
    tensors = {f"hidden_states.{i}": h for i, h in enumerate(out.hidden_states)}
    tensors.update(last_hidden_state=out.last_hidden_state, image_embeds=out.image_embeds)
    save("clip.safetensors", tensors)


def scheduler(torch, name, model=MODEL):
    import diffusers

    return getattr(diffusers, SCHEDULERS[name]).from_pretrained(model, subfolder="scheduler")


def golden_schedulers(torch):
    """Timesteps and sigmas of every scheduler on the real config, for several step counts."""
    tensors = {}
    for name in SCHEDULERS:
        s = scheduler(torch, name)
        tensors[f"{name}.alphas_cumprod"] = s.alphas_cumprod.float()
        for steps in (50, 25, STEPS, 1):
            s.set_timesteps(steps)
            tensors[f"{name}.steps{steps}.timesteps"] = torch.as_tensor(s.timesteps)
            tensors[f"{name}.steps{steps}.init_noise_sigma"] = torch.tensor([float(s.init_noise_sigma)])
            if hasattr(s, "sigmas"):
                tensors[f"{name}.steps{steps}.sigmas"] = torch.as_tensor(s.sigmas).float()
    save("schedulers.safetensors", tensors)


def golden_randn(torch):
    tensors = {}
    for seed in RANDN_SEEDS:
        for shape in RANDN_SHAPES:
            key = f"seed{seed}.shape{'x'.join(map(str, shape))}"
            tensors[key] = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    seed, shapes = RANDN_STREAM
    g = torch.Generator().manual_seed(seed)
    for i, shape in enumerate(shapes):
        tensors[f"stream{seed}.{i}.shape{'x'.join(map(str, shape))}"] = torch.randn(shape, generator=g)
    save("randn.safetensors", tensors)


class Recorder:
    """Hooks on one pipeline run: every UNet call's input and output, every scheduler step,
    the first UNet call's and the VAE decoder's per-block outputs."""

    def __init__(self, torch, pipe, detailed):
        self.torch, self.pipe = torch, pipe
        self.calls, self.steps, self.blocks, self.handles = [], [], {}, []
        self.handles.append(pipe.unet.register_forward_hook(self.on_unet, with_kwargs=True))
        original_step = pipe.scheduler.step

        # wraps: the pipeline passes `generator` only to a step whose signature takes it.
        @functools.wraps(original_step)
        def step(model_output, timestep, sample, *args, **kwargs):
            out = original_step(model_output, timestep, sample, *args, **kwargs)
            self.steps.append((model_output.clone(), out.prev_sample.clone()))
            return out

        pipe.scheduler.step = step
        if detailed:
            self.hook_blocks("unet", pipe.unet, ["conv_in", "time_proj", "time_embedding", "down_blocks.0",
                                                 "down_blocks.1", "down_blocks.2", "down_blocks.3", "mid_block",
                                                 "up_blocks.0", "up_blocks.1", "up_blocks.2", "up_blocks.3",
                                                 "conv_norm_out", "conv_out"])
            self.hook_blocks("vae", pipe.vae, ["post_quant_conv", "decoder.conv_in", "decoder.mid_block",
                                               "decoder.up_blocks.0", "decoder.up_blocks.1", "decoder.up_blocks.2",
                                               "decoder.up_blocks.3", "decoder"])

    def on_unet(self, module, args, kwargs, output):
        self.calls.append((args[0].clone(), self.torch.as_tensor(args[1]).reshape(1).clone(),
                           kwargs["encoder_hidden_states"].clone(), output.sample.clone()))

    def hook_blocks(self, prefix, model, names):
        for name in names:
            def hook(module, inputs, output, key=f"{prefix}.{name}"):
                if key in self.blocks:  # the UNet's first call only
                    return
                out = output[0] if isinstance(output, tuple) else output
                self.blocks[key] = (inputs[0].clone() if name in ("post_quant_conv", "time_proj") else None, out.clone())
            self.handles.append(model.get_submodule(name).register_forward_hook(hook))

    def close(self):
        for h in self.handles:
            h.remove()


def golden_runs(torch, np):
    from PIL import Image

    image = preprocess("input.png")
    runs = []
    for variant in (None, "fp16"):
        pipe = load_pipeline(torch, variant)
        for name in SCHEDULERS:
            for n, guidance in ((1, GUIDANCE), (2, GUIDANCE)) + (((1, 1.0),) if name == "pndm" else ()):
                pipe.scheduler = scheduler(torch, name)
                detailed = variant is None and n == 1 and guidance == GUIDANCE
                rec = Recorder(torch, pipe, detailed=detailed and name == "pndm")
                with torch.no_grad():
                    images = pipe(image, num_inference_steps=STEPS, guidance_scale=guidance, num_images_per_prompt=n,
                                  generator=torch.Generator().manual_seed(SEED), output_type="pil").images
                rec.close()
                run = f"{name}-n{n}-g{guidance:g}-{variant or 'fp32'}"
                pngs = []
                for k, img in enumerate(images):
                    pngs.append(f"images/{run}-{k}.png")
                    img.save(GOLDEN / pngs[-1])
                if detailed:
                    save_run_tensors(torch, name, image, rec)
                runs.append(dict(name=run, scheduler=name, n=n, guidance=guidance, variant=variant or "fp32",
                                 seed=SEED, steps=STEPS, pngs=pngs, unet_calls=len(rec.calls),
                                 timesteps=[float(c[1]) for c in rec.calls], detailed=detailed))
    return runs


def save_run_tensors(torch, name, image, rec):
    tensors = {"image_embeds": rec.calls[0][2][-1:]}
    shape = rec.calls[0][0].shape
    tensors["noise"] = torch.randn((shape[0] // 2, *shape[1:]), generator=torch.Generator().manual_seed(SEED))
    for k, (sample, t, _, noise) in enumerate(rec.calls):
        uncond, cond = noise.chunk(2)
        tensors.update({f"call{k}.model_input": sample, f"call{k}.timestep": t.float(),
                        f"call{k}.noise_uncond": uncond, f"call{k}.noise_cond": cond})
    for k, (guided, latents) in enumerate(rec.steps):
        tensors.update({f"step{k}.guided": guided, f"step{k}.latents": latents})
    save(f"run-{name}.safetensors", tensors)
    if rec.blocks:
        blocks = {}
        for key, (inp, out) in rec.blocks.items():
            blocks[f"{key}.out"] = out
            if inp is not None:
                blocks[f"{key}.in"] = inp
        first = rec.calls[0]
        blocks.update({"unet.call.sample": first[0], "unet.call.timestep": first[1].float(),
                       "unet.call.encoder_hidden_states": first[2], "unet.call.out": first[3]})
        save("blocks.safetensors", blocks)


def write_manifest(torch, runs):
    import diffusers
    import PIL
    import torchvision
    import transformers

    versions = {"torch": torch.__version__, "torchvision": torchvision.__version__, "diffusers": diffusers.__version__,
                "transformers": transformers.__version__, "pillow": PIL.__version__, "python": sys.version.split()[0]}
    manifest = {"versions": versions, "seed": SEED, "steps": STEPS, "guidance": GUIDANCE,
                "schedulers": SCHEDULERS, "runs": runs, "randn": {"seeds": RANDN_SEEDS, "shapes": RANDN_SHAPES,
                                                                  "stream": RANDN_STREAM}}
    (GOLDEN / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (OUT / "README.md").write_text(README.format(**versions, seed=SEED, steps=STEPS, guidance=GUIDANCE))


README = """# Test fixtures (generated: do not edit)

Everything here is written by `scripts/make_fixtures.py` (run by hand: `python3
scripts/make_fixtures.py`; it makes its own virtualenv) with torch {torch}, torchvision
{torchvision}, diffusers {diffusers}, transformers {transformers}, Pillow {pillow}, Python
{python}, on the CPU, single-threaded and deterministic. A second run on the same machine writes
the same bytes; another CPU can round a few float results differently in the last bit.

## `tiny-sd-image-variations/`: a tiny random model in the Hub layout
The real component classes (`CLIPVisionModelWithProjection`, `UNet2DConditionModel`,
`AutoencoderKL`, `PNDMScheduler`) at tiny sizes: UNet channels 16,32,64,64 (the real c,2c,4c,4c
pattern and block types), 4 heads, 8 norm groups, sample size 16 (128x128 images); VAE channels
16,32,64,64; CLIP at image 224 / patch 14 with width 32, 3 layers, 4 heads; cross-attention /
projection dim 24 (differs from every UNet width). Every parameter that started constant (norm
weights, zero biases) carries seeded noise. Files: fp32 `*.safetensors` and the `variant="fp16"`
`*.fp16.safetensors`. Configs keep only the keys of the real repo's configs
(`configs/sd-image-variations-diffusers/`), so a loader must apply the library defaults; the
scheduler config is the real file byte for byte. The VAE mid-block attention is stored under the
legacy names `query/key/value/proj_attn`, and the CLIP files carry the int64 `position_ids`
buffer, as the real repo's files (saved by the libraries of late 2022) do. There is no safety
checker.

## Inputs
`input.png` (300x200 RGB, photo-like) and `input-rgba.png` (97x131 RGBA).

## `golden/`
- `preprocess.safetensors`: the model card's transform (ToTensor, Resize 224x224 bicubic
  antialias=False, Normalize) of both inputs after PIL's `convert("RGB")`.
- `clip.safetensors`: `hidden_states.0..L` (0 is after `pre_layrnorm`), `last_hidden_state`,
  `image_embeds` for `input.png`.
- `schedulers.safetensors`: per scheduler (built with `from_pretrained(subfolder="scheduler")`
  from the raw config: each class's own defaults for absent keys), `alphas_cumprod` and, for 50,
  25, {steps} and 1 steps, `timesteps`, `sigmas` (where the class has them), `init_noise_sigma`.
- `randn.safetensors`: `torch.randn(shape, generator=torch.Generator().manual_seed(seed))` for
  several seeds and shapes (`seed{{S}}.shape{{AxB}}`), and consecutive draws on one generator
  (`stream{{S}}.{{i}}.shape{{..}}`).
- `run-{{scheduler}}.safetensors`: the pipeline on `input.png` (preprocessed as above, passed as a
  tensor), seed {seed}, {steps} steps, guidance {guidance}, n=1, fp32 weights: `noise` (the raw
  randn latents), `image_embeds`, per UNet call `callK.model_input/timestep/noise_uncond/noise_cond`
  and per scheduler step `stepK.guided/latents`.
- `blocks.safetensors` (PNDM run): the first UNet call's inputs, per-block outputs
  (`unet.down_blocks.0.out`, ...) and output; the VAE decoder's per-block outputs
  (`vae.post_quant_conv.in` is `latents / 0.18215`; `vae.decoder.out` is the image in [-1, 1]).
- `images/{{scheduler}}-n{{n}}-g{{guidance}}-{{fp32|fp16}}-{{k}}.png`: the pipeline's PNGs for every
  scheduler, n = 1 and 2, fp32 weights and the fp16 files (loaded as float32), and a PNDM run
  without guidance (g=1) for each.
- `manifest.json`: settings, the runs with their UNet timesteps, versions.
"""


if __name__ == "__main__":
    main()
