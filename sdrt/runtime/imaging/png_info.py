"""Generation parameters in PNG files, in the `parameters` text chunk AUTOMATIC1111 writes:

    <prompt>
    Negative prompt: <negative prompt>
    Steps: 20, Sampler: LMS, CFG scale: 7.5, Seed: 42, Size: 512x512, Model: name

so other tools (A1111, ComfyUI, image browsers) read them.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from pathlib import Path

from PIL import Image, PngImagePlugin

from sdrt.errors import SdrtError
from sdrt.runtime.files.leftovers import make_unique_temporary_dir, remove_stale, remove_temporary_dir
from sdrt.runtime.files.user_files import MAX_IMAGE_BYTES, open_regular
from sdrt.runtime.schedulers import DEFAULT_SCHEDULE, display_name, recorded_schedule

PARAMETERS_KEY = "parameters"
NEGATIVE_PREFIX = "Negative prompt: "
#: Forge's `CFG scale` on a guidance-distilled model (FLUX.1 dev) when no real CFG ran.
NO_CFG_SCALE = 1.0
# A temporary folder beside the output (a short name, so any valid output name has room for it),
# marked as sdrt's (sdrt.runtime.files.leftovers), holding the PNG until it is renamed into place.
PARTIAL_PREFIX, PARTIAL_SUFFIX = ".sdrt-", ".partial"  # .sdrt-PID-XXXXXXXX.partial
PARTIAL_FILE = "image.png"
STALE_PARTIAL = re.compile(r"\.sdrt-(?P<pid>\d+)-\w+\.partial")
NEW_FILE_MODE = 0o666  # what open() creates a file with, before the umask
_UMASK_LOCK = threading.Lock()
#: The samplers whose eta A1111 records as "Eta DDIM" (its timestep samplers' eta_ddim).
ETA_DDIM_SAMPLERS = ("a1111_ddim", "a1111_ddim_cfgpp")


class ImageFileError(SdrtError):
    """An image cannot be read or written."""


def format_parameters(prompt: str, parameters: dict, batch_position: int | None = None) -> str:
    """A1111's text; with several images, `batch_position` (1-based) says which (and picks its
    seed from `seeds`, one per image, where the images have their own)."""
    lines = [prompt]
    seed = parameters["seed"]
    if batch_position is not None and "seeds" in parameters:
        seed = parameters["seeds"][batch_position - 1]
    if parameters.get("negative_prompt"):
        lines.append(NEGATIVE_PREFIX + str(parameters["negative_prompt"]))
    fields = [
        ("Steps", parameters["steps"]),
        ("Sampler", display_name(parameters["sampler"])),
        *(
            (("Schedule type", schedule),)
            if (schedule := recorded_schedule(parameters["sampler"], parameters.get("schedule", DEFAULT_SCHEDULE)))
            else ()
        ),
        (
            "CFG scale",
            forge_cfg_scale(parameters) if "distilled_guidance" in parameters else parameters["guidance_scale"],
        ),
        ("Seed", seed),
        ("Size", f"{parameters['width']}x{parameters['height']}"),
        ("Model", parameters["model"]),
    ]
    if "a1111_noise" in parameters:  # variation seed, seed resize, ENSD, RNG
        from sdrt.runtime.a1111_noise import noise_fields

        fields += noise_fields(parameters["a1111_noise"], batch_position)
    fields += list(parameters.get("a1111_settings", {}).items())  # A1111's sampler settings, where they applied
    if parameters.get("discard_penultimate_sigma"):  # A1111's always_discard_next_to_last_sigma, where it applied
        fields.append(("Discard penultimate sigma", True))
    if parameters.get("eta") and parameters["sampler"] in ETA_DDIM_SAMPLERS:  # A1111's field, where not 0
        fields.append(("Eta DDIM", parameters["eta"]))
    if "strength" in parameters:
        fields.append(("Denoising strength", parameters["strength"]))
    if "distilled_guidance" in parameters:  # Forge's field for FLUX.1 dev's guidance input
        fields.append(("Distilled CFG Scale", parameters["distilled_guidance"]))
    if "hires" in parameters:  # A1111's hires fix fields
        hires = parameters["hires"]
        fields.append(
            ("Hires upscale", hires["scale"])
            if "scale" in hires
            else ("Hires resize", f"{hires['width']}x{hires['height']}")
        )
        fields += [
            *((("Hires steps", hires["steps"]),) if hires["steps"] else ()),
            ("Hires upscaler", hires["upscaler"]),
        ]
    if "clip_skip" in parameters:
        fields.append(("Clip skip", parameters["clip_skip"]))
    if "emphasis" in parameters:
        fields.append(("Emphasis", parameters["emphasis"]))
    if "ti_hashes" in parameters:
        fields.append(
            ("TI hashes", quote(", ".join(f"{name}: {digest}" for name, digest in parameters["ti_hashes"].items())))
        )
    if "lora_hashes" in parameters:
        fields.append(
            ("Lora hashes", quote(", ".join(f"{name}: {digest}" for name, digest in parameters["lora_hashes"].items())))
        )
    if "deepcache" in parameters:
        fields.append(("DeepCache", quote(parameters["deepcache"])))
    if "cache" in parameters:  # a transformer step cache (sdrt.runtime.features.step_caches)
        fields.append(("Step cache", quote(parameters["cache"])))
    if "skip_layer_guidance" in parameters:  # SD3's skip-layer guidance
        skip = parameters["skip_layer_guidance"]
        layers = ", ".join(str(layer) for layer in skip["layers"])
        fields.append(
            ("Skip layers", quote(f"{layers}; scale {skip['scale']:g}, {skip['start']:g} to {skip['stop']:g}"))
        )
    if "reference_images" in parameters:  # FLUX.2's editing
        fields.append(("Reference images", parameters["reference_images"]))
    for name, label in (("cfg_truncation", "CFG truncation"), ("cfg_normalization", "CFG normalization")):
        if name in parameters:  # Z-Image's CFG options
            fields.append((label, parameters[name]))
    if parameters.get("t5") is False:  # SD3 run without T5
        fields.append(("T5", "off"))
    if "max_sequence_length" in parameters:  # SD3's T5 length
        fields.append(("T5 length", parameters["max_sequence_length"]))
    if "vae" in parameters:  # A1111's field for the VAE used
        fields.append(("VAE", "TAESD" if parameters["vae"] == "tiny" else parameters["vae"]))
    for index, unit in enumerate(parameters.get("controlnets", ())):  # the A1111 extension's record
        fields.append(
            (
                f"ControlNet {index}",
                quote(
                    f"Module: {unit['preprocessor']}, Model: {unit['model']}, Weight: {unit['scale']}, "
                    f"Guidance Start: {unit['start']}, Guidance End: {unit['end']}, Control Mode: {unit['mode']}"
                ),
            )
        )
    if "refiner" in parameters:  # A1111's names for its refiner settings
        fields += [("Refiner", parameters["refiner"]), ("Refiner switch at", parameters["refiner_switch"])]
    if batch_position is not None:
        fields += [("Batch size", parameters["num_images"]), ("Batch pos", batch_position)]
    lines.append(", ".join(f"{key}: {value}" for key, value in fields))
    return "\n".join(lines)


def forge_cfg_scale(parameters: dict) -> float:
    """Forge's `CFG scale` on a guidance-distilled model: the real CFG scale, 1 (none) unless true CFG ran."""
    true_cfg = parameters.get("true_cfg_scale")
    ran = true_cfg is not None and true_cfg > NO_CFG_SCALE and bool(parameters.get("negative_prompt"))
    return true_cfg if ran else NO_CFG_SCALE


def quote(value: str) -> str:
    """A1111's quoting of a field value that holds its separators (a JSON string)."""
    return json.dumps(value, ensure_ascii=False) if any(c in value for c in ",:\n") else value


def parse_parameters(text: str) -> dict:
    """The fields of a `parameters` chunk: prompt, negative prompt and the key: value line."""
    lines = text.split("\n")
    settings = lines.pop() if lines else ""
    negative = [i for i, line in enumerate(lines) if line.startswith(NEGATIVE_PREFIX)]
    result: dict[str, str] = {}
    if negative:
        first = negative[0]
        result["Prompt"] = "\n".join(lines[:first])
        result["Negative prompt"] = "\n".join(lines[first:])[len(NEGATIVE_PREFIX) :]
    else:
        result["Prompt"] = "\n".join(lines)
    for item in _split_fields(settings):
        key, sep, value = item.partition(": ")
        if sep:
            result[key] = value
    return result


def _split_fields(line: str) -> list[str]:
    """The "Key: value" items of A1111's settings line: split at ", " outside quoted values."""
    items, start, quoted, index = [], 0, False, 0
    while index < len(line):
        char = line[index]
        if char == "\\" and quoted:
            index += 2
            continue
        if char == '"':
            quoted = not quoted
        elif not quoted and line.startswith(", ", index):
            items.append(line[start:index])
            start = index + 2
            index += 1
        index += 1
    items.append(line[start:])
    return items


def typed_parameters(fields: dict[str, str]) -> dict:
    """parse_parameters' fields with numbers as numbers and quoted values unquoted (for JSON)."""
    typed: dict = {}
    for key, value in fields.items():
        if key in ("Prompt", "Negative prompt"):
            typed[key] = value
            continue
        if value.startswith('"') and value.endswith('"'):
            try:
                typed[key] = json.loads(value)
                continue
            except ValueError:
                pass
        try:
            typed[key] = int(value)
        except ValueError:
            try:
                number = float(value)
                typed[key] = number if math.isfinite(number) else value
            except ValueError:
                typed[key] = value
    return typed


def _umask() -> int:
    """The process's umask (read by setting and restoring it, under a lock)."""
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
    return mask


def save_png(image: Image.Image, path: Path, parameters_text: str) -> None:
    """Write the PNG aside and rename it into place, so a failure leaves no partial file. The
    file gets the permissions the user's umask gives a new file (mkstemp's are 0600)."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, parameters_text)
    path = Path(path)
    check_writable_file(path)
    remove_stale(path.parent, STALE_PARTIAL)
    folder = None
    try:
        folder = make_unique_temporary_dir(path.parent, f"{PARTIAL_PREFIX}{os.getpid()}-", PARTIAL_SUFFIX)
        temporary = folder / PARTIAL_FILE
        with open(temporary, "xb") as stream:
            image.save(stream, format="PNG", pnginfo=info)
        os.chmod(temporary, NEW_FILE_MODE & ~_umask())
        check_writable_file(path)  # nothing else took its place meanwhile
        os.replace(temporary, path)
    except OSError as error:
        raise ImageFileError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        if folder is not None:
            remove_temporary_dir(folder)


def check_writable_file(path: Path) -> None:
    """A path an image may be written to: absent, or a regular file (never a folder, a FIFO or a
    device, which writing would replace)."""
    try:
        special = path.exists() and not path.is_file()
    except OSError:  # a name the system cannot look up: writing it reports why
        return
    if special:
        raise ImageFileError(f"{path} exists and is not a regular file; refusing to replace it")


def read_parameters(path: Path) -> str:
    try:
        with open_regular(path, MAX_IMAGE_BYTES, ImageFileError) as handle, Image.open(handle) as image:
            text = image.info.get(PARAMETERS_KEY)
    except Image.DecompressionBombError:
        raise ImageFileError(f"{path} declares an image too large to be one sdrt made") from None
    except (OSError, SyntaxError, ValueError) as error:  # ValueError: PIL's text-chunk limits
        raise ImageFileError(f"cannot read {path} as an image: {error}") from None
    if text is None:
        raise ImageFileError(f"{path} has no generation parameters")
    return text
