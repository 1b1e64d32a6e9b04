"""What `sdrt info DIR` says of an export: the model, the sizes it takes, its components."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from sdrt.runtime.manifest import BATCH, HEIGHT, WIDTH, Manifest

MIB = 2**20


def model_summary(folder: str | Path) -> dict:
    manifest = Manifest.load(folder)
    folder = Path(folder)
    dims = manifest.dims

    def side(name: str) -> dict | None:
        valid = dims.get(name)
        return None if valid is None else {"min": valid.min, "max": valid.max, "multiple": valid.multiple}

    components = {}
    for name, spec in manifest.components.items():
        files = [folder / spec.file, *(folder / Path(spec.file).parent / extra for extra in spec.data_files)]
        size = sum(path.stat().st_size for path in files if path.is_file())
        components[name] = {"precision": spec.precision, "target": spec.target, "mib": round(size / MIB, 1)}
        if spec.quantization is not None:
            components[name]["quantization"] = asdict(spec.quantization)
        if spec.qdq is not None:
            components[name]["qdq"] = asdict(spec.qdq)
    batch = dims.get(BATCH)
    return {
        "model": folder.name,
        "family": manifest.family,
        "prediction_type": manifest.prediction_type,
        "native_size": {"width": manifest.native_width, "height": manifest.native_height},
        "width": side(WIDTH),
        "height": side(HEIGHT),
        "max_batch": batch.max if batch else None,
        "max_prompt_tokens": _prompt_tokens(manifest),
        "tiny_vae": manifest.tiny_vae is not None,
        **({} if manifest.flux is None else {"flux": _flux(manifest)}),
        **({} if manifest.flux2 is None else {"flux2": _flux2(manifest)}),
        "components": components,
        "source": manifest.source.get("model"),
    }


def _flux(manifest: Manifest) -> dict:
    flux = manifest.flux
    assert flux is not None  # called for FLUX exports only
    return {
        "family_name": manifest.model_family.display_name,
        "guidance_distilled": flux.guidance_embeds,
        "t5_tokens": flux.max_sequence_length,
        "t5_precision": flux.t5_precision,
        "text_encoder": getattr(manifest.model_family, "text_label", "T5"),
        "variant": "Kontext" if flux.kontext else "Fill" if flux.conditioning_channels else None,
    }


def _flux2(manifest: Manifest) -> dict:
    spec = manifest.flux2
    assert spec is not None  # called for FLUX.2 exports only
    return {"distilled": spec.distilled, "text_layers": list(spec.text_layers), "qwen_tokens": spec.max_sequence_length}


def _prompt_tokens(manifest: Manifest) -> int:
    from sdrt.runtime.manifest import TEXT_SEQUENCE

    if manifest.flux2 is not None:  # Qwen3's padded length, the chat wrapping's tokens included
        return manifest.flux2.max_sequence_length
    if manifest.flux is not None:  # the family's (FLUX: T5's; CLIP's 75 are its pooled part)
        return manifest.model_family.prompt_tokens(manifest)  # type: ignore[attr-defined]
    sequence = manifest.dims.get(TEXT_SEQUENCE)
    chunks = 1 if sequence is None else sequence.max // manifest.text_length  # older exports: one chunk
    return chunks * (manifest.text_length - 2)  # each chunk holds its tokens between start and end


def format_summary(summary: dict) -> str:
    def sizes(side: dict | None) -> str:
        return "any" if side is None else f"{side['min']} to {side['max']} in steps of {side['multiple']}"

    native = summary["native_size"]
    lines = [
        f"{summary['model']}: {summary['family']} ({summary['prediction_type']}), from {summary['source']}",
        f"native size: {native['width']}x{native['height']}",
        f"width: {sizes(summary['width'])}",
        f"height: {sizes(summary['height'])}",
        f"images per call: up to {summary['max_batch']}",
        f"longest prompt: {summary['max_prompt_tokens']} tokens",
        f"tiny VAE: {'yes' if summary['tiny_vae'] else 'no'}",
    ]
    if "flux" in summary:
        flux = summary["flux"]
        kind = "guidance-distilled (--guidance)" if flux["guidance_distilled"] else "no guidance input"
        name = flux["family_name"] + (f" {flux['variant']}" if flux.get("variant") else "")
        text = f"{flux['text_encoder']} {flux['t5_precision']}, {flux['t5_tokens']} tokens"
        lines.append(f"{name}: {kind}; {text}")
    if "flux2" in summary:
        flux2 = summary["flux2"]
        kind = "distilled (no CFG; --guidance ignored)" if flux2["distilled"] else "base (CFG with --guidance > 1)"
        layers = ", ".join(map(str, flux2["text_layers"]))
        lines.append(f"FLUX.2 [klein]: {kind}; Qwen3 hidden states {layers}, {flux2['qwen_tokens']} tokens")
    lines += [
        f"  {name}: {c['precision']} for {c['target']}, {c['mib']} MiB"
        f"{_weights(c.get('quantization'))}{_qdq(c.get('qdq'))}"
        for name, c in summary["components"].items()
    ]
    return "\n".join(lines)


def _weights(quantization: dict | None) -> str:
    if quantization is None:
        return ""
    q = quantization
    return (
        f", {q['weights']} weights (block {q['block_size']}{', symmetric' if q['symmetric'] else ''}): "
        f"{q['matmuls_quantized']} MatMuls quantized, {q['matmuls_kept']} kept"
    )


def _qdq(qdq: dict | None) -> str:
    if qdq is None:
        return ""
    return (
        f", {qdq['qdq']} Q/DQ for TensorRT: {qdq['nodes_quantized']} layers quantized, {qdq['nodes_kept']} kept "
        f"(calibrated on {qdq['calibration_prompts']} prompts)"
    )
