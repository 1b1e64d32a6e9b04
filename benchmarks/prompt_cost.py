"""What A1111's prompt language costs: one loaded model, prompts of each kind run in turn
(interleaved, so drift on a shared machine hits them alike), medians per stage as JSON.

    python benchmarks/prompt_cost.py --arch sd15 --size 256 --steps 10 --runs 3 \\
        --json docs/benchmarks/cpu-sd15-256-prompt-cost.json

Kinds: a plain 1-chunk prompt (diffusers' conditioning exactly), the same with emphasis, a
300-token weighted prompt (4 chunks: 4 encoder rows, a 308-token UNet context), a prompt edit
with an alternation (texts change during denoising), and a 2-vector textual-inversion
embedding. Ratios are to the plain prompt; the UNet step is the median UNet call.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

PROMPTS = {
    "plain": "an astronaut riding a horse on mars, highly detailed",
    "emphasis": "an (astronaut:1.3) riding a [[horse]] on mars, (highly detailed:1.2)",
    "long_300_tokens": "(an astronaut:1.1) riding a horse on mars " * 42 + "x x x x x x",
    "edit_and_alternation": "an [astronaut:robot:0.5] riding a [horse|camel] on mars, highly detailed",
    "embedding": "an astronaut riding a sdrtstyle horse on mars, highly detailed",
}
EMBEDDING_VECTORS = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="an exported model folder")
    parser.add_argument("--arch", help="instead: a random-weight model of this architecture (sdrt bench's)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args()
    from safetensors.numpy import save_file

    from sdrt.benchmark import arch_model, machine_info
    from sdrt.runtime.manifest import Manifest
    from sdrt.runtime.pipeline import Pipeline

    model = args.model or arch_model(args.arch, progress=print)[0]
    manifest = Manifest.load(model)
    width = manifest.components["text_encoder"].inputs[1].shape[1]
    folder = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    save_file(
        {"emb_params": rng.standard_normal((EMBEDDING_VECTORS, width)).astype(np.float32) * 0.02},
        str(folder / "sdrtstyle.safetensors"),
    )
    pipeline = Pipeline.load(model, embeddings=[folder])
    timings: dict[str, list[dict]] = {kind: [] for kind in PROMPTS}
    for run in range(args.runs + 1):  # the first is a warm-up
        for kind, prompt in PROMPTS.items():
            result = pipeline.generate(prompt, steps=args.steps, seed=run, height=args.size, width=args.size)
            if run:
                t = result.timings
                timings[kind].append(
                    {
                        "text_encoder": t["text_encoder"],
                        "tokenize": t.get("tokenize", 0.0),
                        "unet_step": float(np.median(t["unet_steps"])),
                        "unet_calls": len(t["unet_steps"]),
                        "end_to_end": t["total"],
                    }
                )
            print(f"run {run}: {kind} {result.timings['total']:.2f}s", flush=True)
    medians = {
        kind: {key: float(np.median([r[key] for r in rows])) for key in rows[0]} for kind, rows in timings.items()
    }
    plain = medians["plain"]
    report = {
        "command": "python benchmarks/prompt_cost.py "
        + " ".join(f"--{k} {v}" for k, v in vars(args).items() if v is not None and k != "json_path"),
        "machine": machine_info(),
        "model": {"path": str(model), "family": manifest.family},
        "settings": {"size": args.size, "steps": args.steps, "runs": args.runs},
        "prompts": PROMPTS,
        "medians_s": medians,
        "ratio_to_plain": {
            kind: {key: m[key] / plain[key] for key in ("text_encoder", "unet_step", "end_to_end")}
            for kind, m in medians.items()
        },
    }
    print(json.dumps(report["ratio_to_plain"], indent=2))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
