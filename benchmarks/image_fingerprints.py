"""Fingerprints of a fixed set of generations, to show a refactor changes no image.

    python benchmarks/image_fingerprints.py --json before.json          # on the old code
    python benchmarks/image_fingerprints.py --compare before.json       # on the new code

Builds tiny random-weight models with diffusers (SD 1.x standard, inpainting, v-prediction and
LCM-distilled; SDXL base and refiner; a ControlNet, a tiny VAE, a LoRA and a textual-inversion
embedding), exports them, and generates:
- SD 1.x: every one of today's 12 samplers, guidance on and off, a negative prompt, two prompts
  with one seed each, several images per prompt (Euler a, DDPM), a non-square size,
  v-prediction, image-to-image, inpainting with both UNet kinds, and A1111's masked-area
  inpainting (blur, invert, fill, only masked, paste-back);
- schedule types (Karras, exponential, SGM uniform), the LCM sampler on an LCM-distilled UNet
  (guidance embedding), TCD with eta;
- A1111's prompt language: emphasis, BREAK, a prompt over 75 tokens, prompt editing,
  alternation, clip skip 2, a textual-inversion embedding, LoRAs by path, LoraRef and <lora:> tag;
- ControlNet (one unit; guess mode; a start-end window), DeepCache (intervals 2 and 3), the
  hires fix (latent upscaler and Lanczos), the tiny VAE decode, previews every 2 steps (full
  and tiny VAE; the previews are fingerprinted too);
- SDXL: text-to-image, several images, size conditioning, the prompt language with clip skip 2,
  base + refiner (refiner_switch; Euler, and Heun with an aesthetic score).

Each case's fingerprint is the sha256 of the float32 image array and of the 8-bit pixels (and
of its preview images). `--compare` exits 1 naming every case whose bytes differ or that is
missing; `--case NAME` runs only that case. The script prints its run time: about 2 minutes on
2 CPU cores (3.5 with the cores shared), most of it building and exporting the models.

The runtime's value types (DeepCache, HiresFix, ...) are imported through `runtime_type`, which
tries today's module and then the paths a restructure may move them to, so one script runs on
the code before and after.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import inspect
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

PROMPT = "a photo of a cat"
SEED = 21
#: The registry's samplers when these fingerprints were first taken: a sampler added later
#: adds no case, so fingerprints taken before and after it stay comparable.
SAMPLERS = (
    "ddim",
    "ddpm",
    "dpmpp_2m",
    "dpmpp_2m_karras",
    "euler",
    "euler_a",
    "heun",
    "lcm",
    "lms",
    "pndm",
    "tcd",
    "unipc",
)
LONG_PROMPT = (
    "a detailed oil painting of a small orange cat sitting on a wooden chair beside a tall window "
    "in an old stone house, soft morning light falling across the floor, dust in the air, a blue vase "
    "of yellow flowers on the table, green hills and a winding river far outside, clouds drifting over "
    "the distant mountains, a red scarf on the chair, books stacked on the shelf, a sleeping dog by "
    "the fireplace, warm colours, fine brush strokes, high detail, masterpiece"
)
EMBEDDING_TOKEN = "sdrtcat"
LORA_NAME = "kohya"
SDXL = dict(height=64, width=64)

#: (class, modules to try in order): today's module first, then where a restructure may put it.
RUNTIME_TYPES = {
    "DeepCache": ("sdrt.runtime.deepcache", "sdrt.runtime.features.deepcache"),
    "HiresFix": ("sdrt.runtime.hires", "sdrt.runtime.features.hires"),
    "SizeConditioning": ("sdrt.runtime.sdxl", "sdrt.runtime.families.sdxl", "sdrt.runtime.families.sdxl.conditioning"),
    "MaskOptions": ("sdrt.runtime.inpaint_area", "sdrt.runtime.features.inpaint_area"),
    "ControlUnit": (
        "sdrt.runtime.controlnet.units",
        "sdrt.runtime.features.controlnet.units",
        "sdrt.runtime.features.controlnet",
    ),
    "LoraRef": ("sdrt.runtime.lora.tags", "sdrt.runtime.features.lora.tags", "sdrt.runtime.features.lora"),
    "Preview": ("sdrt.runtime.preview", "sdrt.runtime.features.preview"),
    "GenerationRequest": ("sdrt.runtime.request", "sdrt.runtime.requests", "sdrt.runtime.pipeline"),
}


def runtime_type(name: str):
    """The runtime's class `name` from the first of its candidate modules that has it."""
    for module_name in RUNTIME_TYPES[name]:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name and module_name.startswith(error.name):  # this candidate does not exist
                continue
            raise
        if hasattr(module, name):
            return getattr(module, name)
    raise ImportError(f"{name} is in none of {', '.join(RUNTIME_TYPES[name])}; add its new module to RUNTIME_TYPES")


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    model: str  # a key of `models()`
    settings: dict  # GenerationRequest fields; str values of *image keys name an input image
    preview_every: int | None = None


def cases(assets: dict) -> list[Case]:
    """Every case; `assets` holds what is made at run time (LoRA and ControlNet paths, images)."""
    listed = [
        Case(
            f"txt2img-{name}",
            "standard",
            dict(prompt=PROMPT, steps=6, seed=SEED, sampler=name, negative_prompt="blurry"),
        )
        for name in SAMPLERS
    ]
    listed += [
        Case("no-guidance", "standard", dict(prompt=PROMPT, steps=3, seed=SEED, guidance_scale=1.0)),
        Case(
            "two-prompts-two-seeds",
            "standard",
            dict(prompt=[PROMPT, "a red fox"], steps=3, seed=[5, 9], sampler="euler_a", num_images=2),
        ),
        Case("non-square", "standard", dict(prompt=PROMPT, steps=3, seed=SEED, height=64, width=96)),
        Case("v-prediction", "v_prediction", dict(prompt=PROMPT, steps=4, seed=SEED, sampler="dpmpp_2m")),
        Case("v-prediction-euler", "v_prediction", dict(prompt=PROMPT, steps=4, seed=SEED, sampler="euler")),
        Case("v-prediction-heun", "v_prediction", dict(prompt=PROMPT, steps=3, seed=SEED, sampler="heun")),
        Case("v-prediction-ddim", "v_prediction", dict(prompt=PROMPT, steps=4, seed=SEED, sampler="ddim")),
        Case("v-prediction-pndm", "v_prediction", dict(prompt=PROMPT, steps=4, seed=SEED, sampler="pndm")),
        Case(
            "img2img",
            "standard",
            dict(prompt=PROMPT, steps=5, seed=SEED, init_image="photo", strength=0.6, sampler="euler"),
        ),
        Case(
            "inpaint-ordinary-unet",
            "standard",
            dict(prompt=PROMPT, steps=5, seed=SEED, init_image="photo", mask_image="mask", strength=0.7),
        ),
        Case(
            "inpaint-9-channel-unet",
            "inpaint",
            dict(prompt=PROMPT, steps=5, seed=SEED, init_image="photo", mask_image="mask", sampler="ddim"),
        ),
    ]
    # The cases above are the first fingerprints' (names and settings unchanged); the rest came later.
    base = dict(steps=4, seed=SEED, sampler="euler")
    DeepCache, HiresFix = runtime_type("DeepCache"), runtime_type("HiresFix")
    MaskOptions, ControlUnit = runtime_type("MaskOptions"), runtime_type("ControlUnit")
    LoraRef, SizeConditioning = runtime_type("LoraRef"), runtime_type("SizeConditioning")
    control = assets["control"]
    listed += [
        # Several images per prompt with stochastic samplers (their noise is drawn per image).
        Case(
            "three-images-euler-a", "standard", dict(prompt=PROMPT, steps=4, seed=SEED, sampler="euler_a", num_images=3)
        ),
        Case(
            "img2img-two-images-ddpm",
            "standard",
            dict(prompt=PROMPT, steps=5, seed=SEED, sampler="ddpm", init_image="photo", strength=0.7, num_images=2),
        ),
        # Schedule types.
        Case(
            "schedule-karras-euler",
            "standard",
            dict(prompt=PROMPT, steps=5, seed=SEED, sampler="euler", schedule="karras"),
        ),
        Case(
            "schedule-karras-dpmpp_2m",
            "standard",
            dict(prompt=PROMPT, steps=5, seed=SEED, sampler="dpmpp_2m", schedule="karras"),
        ),
        Case(
            "schedule-exponential-euler",
            "standard",
            dict(prompt=PROMPT, steps=5, seed=SEED, sampler="euler", schedule="exponential"),
        ),
        Case(
            "schedule-sgm_uniform-euler_a",
            "standard",
            dict(prompt=PROMPT, steps=5, seed=SEED, sampler="euler_a", schedule="sgm_uniform"),
        ),
        # Few-step samplers.
        Case("lcm-distilled-unet", "lcm", dict(prompt=PROMPT, steps=4, seed=SEED, sampler="lcm", guidance_scale=8.0)),
        Case(
            "lcm-distilled-unet-one-step",
            "lcm",
            dict(prompt=PROMPT, steps=1, seed=SEED, sampler="lcm", guidance_scale=1.5),
        ),
        Case(
            "tcd-eta", "standard", dict(prompt=PROMPT, steps=4, seed=SEED, sampler="tcd", eta=0.3, guidance_scale=1.5)
        ),
        # A1111's prompt language.
        Case("prompt-emphasis", "standard", dict(prompt="a photo of a (red:1.3) cat, ((sharp))", **base)),
        Case("prompt-break", "standard", dict(prompt="a photo of a cat BREAK a red fox in the snow", **base)),
        Case("prompt-long", "standard", dict(prompt=LONG_PROMPT, negative_prompt="blurry", **base)),
        Case(
            "prompt-editing",
            "standard",
            dict(prompt="a photo of a [dog:cat:0.5] on [grass:snow:2]", **dict(base, steps=6)),
        ),
        Case("prompt-alternation", "standard", dict(prompt="a photo of a [dog|cat]", **base)),
        Case("clip-skip-2", "standard", dict(prompt=PROMPT, clip_skip=2, **base)),
        Case("embedding", "addons", dict(prompt=f"a photo of {EMBEDDING_TOKEN} on grass", **base)),
        Case("lora-path", "addons", dict(prompt=PROMPT, loras=[f"{assets['lora']}:0.8"], **base)),
        Case(
            "lora-ref-and-tag",
            "addons",
            dict(prompt=f"{PROMPT} <lora:{LORA_NAME}:0.6>", loras=[LoraRef(str(assets["lora_2"]))], **base),
        ),
        # ControlNet.
        Case("controlnet", "addons", dict(prompt=PROMPT, controlnets=[ControlUnit("edges", control, 0.5)], **base)),
        Case(
            "controlnet-guess-mode",
            "addons",
            dict(prompt=PROMPT, controlnets=[ControlUnit("edges", control, mode="controlnet")], **base),
        ),
        Case(
            "controlnet-window",
            "addons",
            dict(
                prompt=PROMPT,
                controlnets=[ControlUnit(str(assets["controlnet"]), control, 0.8, start=0.2, end=0.8)],
                **dict(base, steps=5),
            ),
        ),
        # DeepCache, the tiny VAE and previews (the features export has DeepCache's graphs and a tiny VAE).
        Case(
            "deepcache-2",
            "features",
            dict(prompt=PROMPT, steps=7, seed=SEED, sampler="euler", negative_prompt="blurry", deepcache=DeepCache(2)),
        ),
        Case(
            "deepcache-3",
            "features",
            dict(
                prompt=PROMPT, steps=7, seed=SEED, sampler="dpmpp_2m", negative_prompt="blurry", deepcache=DeepCache(3)
            ),
        ),
        Case("tiny-vae", "features", dict(prompt=PROMPT, vae="tiny", **base)),
        Case(
            "previews-full-vae", "standard", dict(prompt=PROMPT, steps=6, seed=SEED, sampler="euler_a"), preview_every=2
        ),
        Case(
            "previews-tiny-vae", "features", dict(prompt=PROMPT, steps=6, seed=SEED, sampler="euler"), preview_every=2
        ),
        # The hires fix.
        Case("hires-latent", "standard", dict(prompt=PROMPT, hires=HiresFix(scale=1.5, steps=3, strength=0.6), **base)),
        Case(
            "hires-lanczos",
            "standard",
            dict(
                prompt=PROMPT,
                num_images=2,
                hires=HiresFix(scale=1.5, upscaler="Lanczos", steps=3, strength=0.6),
                **base,
            ),
        ),
        # A1111's masked-area inpainting.
        Case(
            "inpaint-only-masked",
            "standard",
            dict(
                prompt=PROMPT,
                init_image="photo",
                mask_image="mask",
                strength=0.7,
                mask_options=MaskOptions(
                    invert=True, blur_x=2, blur_y=2, fill="fill", only_masked=True, padding=4, paste_back=True
                ),
                **base,
            ),
        ),
        Case(
            "inpaint-whole-picture-blur",
            "inpaint",
            dict(
                prompt=PROMPT,
                init_image="photo",
                mask_image="mask",
                mask_options=MaskOptions(blur_x=3, blur_y=1, paste_back=True),
                **base,
            ),
        ),
        # SDXL.
        Case(
            "sdxl-txt2img",
            "sdxl",
            dict(
                prompt=PROMPT, negative_prompt="blurry", steps=5, seed=SEED, sampler="euler", guidance_scale=5.0, **SDXL
            ),
        ),
        Case(
            "sdxl-two-images-euler-a",
            "sdxl",
            dict(prompt=PROMPT, steps=4, seed=SEED, sampler="euler_a", num_images=2, guidance_scale=5.0, **SDXL),
        ),
        Case(
            "sdxl-size-conditioning",
            "sdxl",
            dict(
                prompt=PROMPT,
                steps=4,
                seed=SEED,
                sampler="euler",
                guidance_scale=5.0,
                size_conditioning=SizeConditioning(
                    original_size=(128, 96), crop_top_left=(8, 4), target_size=(64, 64), negative_original_size=(32, 32)
                ),
                **SDXL,
            ),
        ),
        Case(
            "sdxl-prompt-language",
            "sdxl",
            dict(
                prompt="a photo of a (red:1.3) cat BREAK [dog:fox:0.5] in [snow|rain]",
                steps=4,
                seed=SEED,
                sampler="euler",
                guidance_scale=5.0,
                clip_skip=2,
                **SDXL,
            ),
        ),
        Case(
            "sdxl-refiner",
            "sdxl",
            dict(prompt=PROMPT, steps=6, seed=SEED, sampler="euler", refiner_switch=0.7, guidance_scale=5.0, **SDXL),
        ),
        Case(
            "sdxl-refiner-heun-aesthetic",
            "sdxl",
            dict(
                prompt=PROMPT,
                steps=4,
                seed=SEED,
                sampler="heun",
                refiner_switch=0.6,
                guidance_scale=5.0,
                size_conditioning=SizeConditioning(aesthetic_score=7.0),
                **SDXL,
            ),
        ),
    ]
    return listed


# ---------------------------------------------------------------- models and files made at run time
def kohya_lora(model: Path, path: Path, seed: int) -> Path:
    """A random kohya-format LoRA (lora_unet_* / lora_te_*) for the diffusers folder `model`, on
    the attention and text-encoder layers (the minimal maker of tests/support/lora_files.py)."""
    import re

    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.numpy import save_file
    from transformers import CLIPTextModel

    rank, alpha, spread = 4, 2.0, 0.3
    attention = re.compile(
        r"attentions\.\d+\.(proj_in|proj_out|transformer_blocks\.\d+\.(attn[12]\.(to_q|to_k|to_v"
        r"|to_out\.0)|ff\.net\.(0\.proj|2)))$"
    )
    text = re.compile(r"layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$")
    rng = np.random.default_rng(seed)
    tensors = {}
    for prefix, module, pattern in (
        ("lora_unet_", UNet2DConditionModel.from_pretrained(model / "unet"), attention),
        ("lora_te_", CLIPTextModel.from_pretrained(model / "text_encoder"), text),
    ):
        for name, layer in module.named_modules():
            if not (isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)) and pattern.search(name)):
                continue
            out, inner = layer.weight.shape[:2]
            tail = tuple(layer.weight.shape[2:])
            key = prefix + (
                name if prefix == "lora_unet_" or name.startswith("text_model.") else "text_model." + name
            ).replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = (rng.standard_normal((rank, inner, *tail)) * spread).astype(np.float32)
            tensors[f"{key}.lora_up.weight"] = (rng.standard_normal((out, rank) + (1,) * len(tail)) * spread).astype(
                np.float32
            )
            tensors[f"{key}.alpha"] = np.array(alpha, np.float32)
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora"})
    return path


def embedding_file(folder: Path, width: int) -> Path:
    """An A1111 textual-inversion file (two vectors) named after its token."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{EMBEDDING_TOKEN}.safetensors"
    vectors = np.random.default_rng(3).standard_normal((2, width)) * 0.5
    save_file({"emb_params": vectors.astype(np.float32)}, str(path))
    return path


def control_image(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    """A control map like a real one: a few filled shapes on black."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = sorted(rng.integers(0, size[0], 2)), sorted(rng.integers(0, size[1], 2))
        draw.ellipse([x[0], y[0], x[1] + 4, y[1] + 4], fill=tuple(int(v) for v in rng.integers(64, 256, 3)))
    return image


class Models:
    """Each model built, exported and loaded once, on first use."""

    def __init__(self, work: Path):
        self.work = work
        self.sources: dict[str, Path] = {}
        self.exports: dict[str, Path] = {}
        self.pipelines: dict = {}
        self.assets: dict = {}

    def source(self, kind: str) -> Path:
        if kind not in self.sources:
            from sdrt.export.random_model import save_random_pipeline
            from sdrt.export.random_sdxl import save_random_sdxl

            folder = self.work / "diffusers" / kind
            if kind.startswith("sdxl-"):
                self.sources[kind] = save_random_sdxl(folder, size="tiny", kind=kind[len("sdxl-") :], seed=0)
            else:
                self.sources[kind] = save_random_pipeline(folder, size="tiny", kind=kind, seed=0)
        return self.sources[kind]

    def export(self, name: str, source: Path, **options) -> Path:
        if name not in self.exports:
            from sdrt.export.exporter import ExportOptions, export_model

            export_model(
                str(source), self.work / "onnx" / name, options=ExportOptions(**options), progress=lambda line: None
            )
            self.exports[name] = self.work / "onnx" / name
        return self.exports[name]

    def prepare_assets(self) -> dict:
        """The LoRA files, the embedding, the ControlNet and the control image."""
        from sdrt.export.exporter import export_model
        from sdrt.export.random_model import (
            TINY_CONDITIONING_EMBEDDING,
            save_random_controlnet,
        )

        standard = self.source("standard")
        loras = self.work / "loras"
        loras.mkdir(parents=True, exist_ok=True)
        controlnets = self.work / "onnx-controlnets"  # the ControlNet folder requests name "edges" in
        folder = save_random_controlnet(
            self.work / "diffusers" / "controlnet", standard, seed=1, conditioning_embedding=TINY_CONDITIONING_EMBEDDING
        )
        export_model(str(folder), controlnets / "edges", progress=lambda line: None)
        self.assets = {
            "lora": kohya_lora(standard, loras / f"{LORA_NAME}.safetensors", seed=1),
            "lora_2": kohya_lora(standard, loras / "other.safetensors", seed=2),
            "embedding": embedding_file(self.work / "embeddings", width=32),
            "controlnet": controlnets / "edges",
            "controlnet_dir": controlnets,
            "control": control_image(1),
        }
        return self.assets

    def pipeline(self, name: str):
        if name in self.pipelines:
            return self.pipelines[name]
        from sdrt.runtime.pipeline import Pipeline

        if name in ("standard", "inpaint", "v_prediction", "lcm"):
            loaded = Pipeline.load(self.export(name, self.source(name)))
        elif name == "addons":  # the standard export with a LoRA folder, an embedding and ControlNets
            loaded = Pipeline.load(
                self.export("standard", self.source("standard")),
                lora_dir=self.assets["lora"].parent,
                embeddings=[str(self.assets["embedding"])],
                controlnet_dir=self.assets["controlnet_dir"],
            )
        elif name == "features":  # DeepCache's graphs and a tiny VAE
            from sdrt.export.random_model import save_random_tiny_vae

            tiny_vae = save_random_tiny_vae(self.work / "diffusers" / "taesd", seed=3)
            loaded = Pipeline.load(
                self.export("features", self.source("standard"), deepcache=True, tiny_vae=str(tiny_vae))
            )
        elif name == "sdxl":
            loaded = Pipeline.load(
                self.export("sdxl-base", self.source("sdxl-base")),
                refiner=self.export("sdxl-refiner", self.source("sdxl-refiner")),
            )
        else:
            raise ValueError(f"unknown model {name!r}")
        self.pipelines[name] = loaded
        return loaded


# ---------------------------------------------------------------- running and fingerprinting
def sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def generate(pipeline, settings: dict, preview_every: int | None):
    """The generation, and the previews as (step, total, images) when asked for."""
    if preview_every is None:
        try:
            return pipeline.generate(**settings), []
        except TypeError:  # before the typed request: the sampler was called `scheduler`
            settings = dict(settings)
            settings["scheduler"] = settings.pop("sampler", "lms")
            return pipeline.generate(**settings), []
    Preview, GenerationRequest = runtime_type("Preview"), runtime_type("GenerationRequest")
    seen: list = []
    preview = Preview(preview_every, lambda step, total, images: seen.append((step, total, images)))
    prompt = settings.pop("prompt")
    if "preview" in inspect.signature(pipeline.run).parameters:
        return pipeline.run(GenerationRequest(prompt, **settings), preview=preview), seen
    return pipeline.run(GenerationRequest(prompt, preview=preview, **settings)), seen  # a request field


def fingerprints(work: Path, only: set[str] | None = None) -> dict[str, dict[str, str]]:
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    inputs = {"photo": photo, "mask": mask}
    models = Models(work)
    result = {}
    for case in cases(models.prepare_assets()):
        if only and case.name not in only:
            continue
        pipeline = models.pipeline(case.model)
        settings = {
            key: inputs.get(value, value) if isinstance(value, str) and key.endswith("image") else value
            for key, value in case.settings.items()
        }
        started = time.perf_counter()
        generated, previews = generate(pipeline, settings, case.preview_every)
        pixels = np.stack([np.asarray(image) for image in generated.images])
        result[case.name] = {"array_sha256": sha256(generated.array), "pixels_sha256": sha256(pixels)}
        if case.preview_every is not None:
            steps = np.array([(step, total) for step, total, _ in previews], np.int64)
            shown = np.stack([np.asarray(image) for _, _, images in previews for image in images])
            result[case.name].update(preview_steps=steps.tolist(), previews_sha256=sha256(shown))
        print(
            f"{case.name}: {result[case.name]['array_sha256'][:16]} ({time.perf_counter() - started:.1f} s)",
            file=sys.stderr,
        )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the fingerprints here")
    parser.add_argument("--compare", help="compare with fingerprints written earlier")
    parser.add_argument("--case", action="append", help="run only this case (repeatable; for debugging)")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        found = fingerprints(Path(work), set(args.case or ()))
    print(f"{len(found)} cases in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(found, indent=2) + "\n", encoding="utf-8")
    if args.compare:
        expected = json.loads(Path(args.compare).read_text(encoding="utf-8"))
        if args.case:
            expected = {name: value for name, value in expected.items() if name in found}
        differing = sorted(name for name in expected if name in found and found[name] != expected[name])
        missing = sorted(set(expected) - set(found))
        print(
            f"{len(expected) - len(differing) - len(missing)} of {len(expected)} cases byte-identical"
            + (f"; differ: {', '.join(differing)}" if differing else "")
            + (f"; missing: {', '.join(missing)}" if missing else "")
        )
        return 1 if differing or missing else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
