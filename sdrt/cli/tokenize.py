"""`sdrt tokenize`: each prompt's chunks of text encoder ids, with their weights."""

from __future__ import annotations

import json
from pathlib import Path

import click

from sdrt.cli import main
from sdrt.cli.prompt_options import embedding_options, embedding_sources, prompt_options
from sdrt.errors import SdrtError
from sdrt.runtime.request_checks import MAX_STEPS

#: How `sdrt tokenize` names an SD3 export's tokenizers, in the order it encodes with them.


@main.command()
@click.argument("prompts", nargs=-1, required=True)
@click.option(
    "--model",
    "model_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="Model folder (with a tokenizer/ inside) or a tokenizer folder.",
)
@click.option(
    "--steps",
    default=None,
    type=click.IntRange(min=1, max=MAX_STEPS),
    help="Show the text of each step's part of a [from:to:when] or [a|b] schedule of this many steps.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the chunks' ids, tokens and weights as JSON.")
@prompt_options
@embedding_options
def tokenize(
    prompts: tuple[str, ...],
    model_dir: str,
    steps: int | None,
    as_json: bool,
    emphasis: str,
    clip_skip: int,
    plain_prompt: bool,
    embedding_dirs,
    embedding_files,
) -> None:
    """Print each PROMPT's chunks of text encoder ids, with the weights emphasis gives them
    (and, with a model folder's embeddings, the ids their trigger words become)."""
    from sdrt.runtime.manifest import MANIFEST_NAME, Manifest
    from sdrt.runtime.text.embeddings import EmbeddingSource
    from sdrt.runtime.text.encoders import TextEncoders
    from sdrt.runtime.text.prompts.chunks import text_chunks
    from sdrt.runtime.text.prompts.emphasis import emphasis_mode
    from sdrt.runtime.text.prompts.options import TextOptions
    from sdrt.runtime.text.prompts.schedule import prompt_schedule
    from sdrt.runtime.text.tokenizer import ClipTokenizer

    folder = Path(model_dir)
    mode = emphasis_mode("None" if plain_prompt else emphasis)
    sources = [EmbeddingSource.parse(s) for s in embedding_sources(embedding_dirs, embedding_files)]
    names: dict[int, str] = {}
    manifest = Manifest.load(folder) if (folder / MANIFEST_NAME).is_file() else None
    if manifest is not None and (manifest.flux is not None or manifest.sd3 is not None or manifest.flux2 is not None):
        if sources:
            raise SdrtError(f"{manifest.model_family.display_name} exports take no textual-inversion embeddings")
        _plain_tokens(folder, manifest, prompts, as_json)
        return
    if manifest is not None:  # a malformed model folder is one line here too
        encoders = TextEncoders.load(folder, manifest, sources)  # SDXL: the first encoder's
        tokenizer = encoders.tokenizers[0]
        if encoders.tables[0] is not None:  # an embedding's ids show as NAME#N
            for triggers in encoders.tables[0].by_first.values():
                names.update({i: f"<{t.name}#{n}>" for t in triggers for n, i in enumerate(t.ids)})
        chunker = lambda text: encoders.chunks(text, TextOptions(mode, clip_skip))  # noqa: E731
    elif sources:
        raise SdrtError("--embeddings needs an exported model folder (its manifest says the vectors' widths)")
    else:
        tokenizer = ClipTokenizer.from_folder(folder)
        chunker = lambda text: text_chunks(text, mode, tokenizer)  # noqa: E731
    rows = []
    for prompt in prompts:
        schedule = prompt_schedule(prompt, steps) if steps and not plain_prompt else [(steps, prompt)]
        for last_step, text in schedule:
            chunks = chunker(text)
            rows.append(
                {
                    "prompt": prompt,
                    "text": text,
                    "last_step": last_step,
                    "token_count": chunks.token_count,
                    "embeddings": list(chunks.embeddings),
                    "chunks": [
                        {
                            "input_ids": ids.tolist(),
                            "tokens": [names.get(int(i)) or tokenizer.decode([i]) for i in ids],
                            "weights": [round(float(w), 6) for w in weights],
                        }
                        for ids, weights in zip(chunks.ids, chunks.weights)
                    ],
                }
            )
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False))
        return
    for row in rows:
        if row["last_step"] is not None:
            click.echo(f"to step {row['last_step']}: {row['text']}")
        for number, chunk in enumerate(row["chunks"], start=1):
            shown = chunk["input_ids"].index(tokenizer.eos_id) + 1  # through the end token: the rest is padding
            click.echo(f"chunk {number}/{len(row['chunks'])} ({row['token_count']} tokens in all):")
            click.echo(" ".join(str(i) for i in chunk["input_ids"][:shown]))
            words = [
                token if weight == 1 else f"({token}:{weight:g})"
                for token, weight in zip(chunk["tokens"][:shown], chunk["weights"][:shown])
            ]
            click.echo(" ".join(words))


def _plain_tokens(folder: Path, manifest, prompts: tuple[str, ...], as_json: bool) -> None:
    """The tokenizers' ids of each prompt as plain text for a transformer export (FLUX.1: CLIP's
    for the pooled embedding and T5's for the hidden states; Chroma: T5's; FLUX.2: Qwen3's,
    chat-wrapped; SD3: CLIP-L's, CLIP-G's and T5's when exported), up to each one's end token,
    and what each cut."""
    family = manifest.model_family
    encoders = family.load_text_encoders(folder, manifest, None)
    roles = family.text_encoder_roles[
        : len(encoders.tokenizers)
    ]  # FLUX.1: clip, t5; Chroma: t5; SD3: clip_l, clip_g (, t5)
    rows = []
    for prompt in prompts:
        row: dict = {"prompt": prompt}
        for name, tokenizer in zip(roles, encoders.tokenizers):
            encoded = tokenizer.encode(prompt)
            ids = encoded.input_ids[0].tolist()[: encoded.lengths[0]]
            row[name] = {"input_ids": ids, "tokens": [tokenizer.decode([i]) for i in ids]}
            row[name]["cut"] = encoded.dropped_text[0]
        rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False))
        return
    for row in rows:
        for name in roles:
            part = row[name]
            cut = f", cut: {part['cut']!r}" if part["cut"] else ""
            click.echo(f"{name} ({len(part['input_ids'])} tokens{cut}):")
            click.echo(" ".join(str(i) for i in part["input_ids"]))
            click.echo(" ".join(part["tokens"]))
