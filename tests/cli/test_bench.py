"""`sdrt bench` on the tiny model: the report's structure and the command's errors.
Timings are reported, never asserted (they belong to a benchmark command, not to a test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from sdrt.benchmark import BenchError, BenchSettings, parse_sweep, run_benchmark, summarize
from sdrt.cli import main


@pytest.fixture(scope="module")
def engine(exported_tiny) -> Path:
    return exported_tiny("standard")


@pytest.mark.slow
def test_report_with_diffusers_baseline(engine, tiny_models):
    settings = BenchSettings(height=64, width=64, steps=3)
    report = run_benchmark(
        str(engine), settings, runs=2, warmup=0, compare="diffusers", diffusers_model=str(tiny_models["standard"])
    )
    sdrt = report["sdrt"]
    assert set(sdrt["stages"]) == {
        "tokenize",
        "text_encoder",
        "denoise",
        "scheduler_and_guidance",
        "vae_decoder",
        "png",
        "end_to_end",
    }
    assert sdrt["unet_step"]["count"] == 2 * 3  # two runs of three steps
    # The step percentiles are of the UNet calls inside the measured denoising loops: ordered,
    # and no call longer than the longest loop that contained it.
    step, denoise = sdrt["unet_step"], sdrt["stages"]["denoise"]
    assert 0 < step["p50"] <= step["p90"] <= step["p99"] <= denoise["max"]
    assert 0 <= sdrt["outside_engines_fraction"]["median"] < 1
    assert sdrt["load_seconds"] > 0 and sdrt["peak_rss_bytes"] > 0
    assert len(report["speedup_vs_diffusers"]["pairs"]) == 2 and report["memory_ratio_vs_diffusers"] > 0
    assert report["diffusers"]["unet_step"]["count"] == 2 * 3  # its UNet's calls, timed by hooks
    assert 0 < report["diffusers"]["unet_step"]["max"] <= report["diffusers"]["end_to_end"]["max"]
    assert report["unet_gflop_per_call"] > 0 and report["matmul_gflops"] > 0
    assert report["precision"]["unet"] == "fp32" and len(report["model"]["hash"]) == 16
    assert {"sdrt", "onnxruntime", "torch", "diffusers"} <= set(report["versions"])


@pytest.mark.slow
def test_cli_sweep_writes_one_report_per_value(engine, tmp_path):
    out = tmp_path / "sweep.json"
    result = CliRunner().invoke(
        main,
        [
            "bench",
            "--model",
            str(engine),
            "--sweep",
            "size=32,64",
            "--steps",
            "2",
            "--runs",
            "1",
            "--warmup",
            "0",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert [r["settings"]["height"] for r in payload["reports"]] == [32, 64]
    assert "UNet step p50/p90/p99" in result.output
    table = payload["table"]
    assert [row["size"] for row in table] == [32, 64] and table[0]["relative"] == 1.0
    for row, report in zip(table, payload["reports"]):
        assert row["end_to_end_s"] == report["sdrt"]["stages"]["end_to_end"]["median"]
        assert row["per_unit_s"] == pytest.approx(row["end_to_end_s"] / (row["size"] ** 2 / 1e6))
    assert "per megapixel" in result.output
    with Image.open(out.with_suffix(".png")) as plot:
        assert plot.format == "PNG" and plot.size[0] > 300


def test_cli_measures_the_hires_fix_and_a_schedule_type(engine, tmp_path):
    out = tmp_path / "hires.json"
    result = CliRunner().invoke(
        main,
        [
            "bench",
            "--model",
            str(engine),
            "--steps",
            "2",
            "--runs",
            "1",
            "--warmup",
            "0",
            "--sampler",
            "euler",
            "--schedule",
            "karras",
            "--hires",
            "2",
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["settings"]["hires"] == 2 and report["settings"]["schedule"] == "karras"
    stages = report["sdrt"]["stages"]
    assert stages["end_to_end"]["median"] > stages["first_pass_total"]["median"] > 0


@pytest.mark.parametrize(
    "arguments, message",
    [
        ([], "pass exactly one of --model DIR or --arch NAME"),
        (
            ["--arch", "sd3"],
            "unknown architecture 'sd3'; choose one of sd15, sdxl, tiny-sd3, sd35-medium, tiny-zimage, flux-tiny, "
            "tiny-flux2-klein",
        ),
        (["--sweep", "colour=1,2"], "--sweep takes NAME=V1,V2"),
        (["--runs", "0"], "--runs must be >= 1"),
        (["--sampler", "nope"], "unknown sampler 'nope'"),
    ],
)
def test_cli_errors(engine, arguments, message):
    if arguments[:1] != ["--arch"] and arguments:
        arguments = ["--model", str(engine), *arguments]
    result = CliRunner().invoke(main, ["bench", *arguments])
    assert result.exit_code == 2 and message in result.output


def test_compare_needs_the_diffusers_folder(engine, tmp_path):
    import shutil

    copy = tmp_path / "moved"
    shutil.copytree(engine, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["source"] = {"model": "someone/hub-id"}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BenchError, match="pass --diffusers-model DIR"):
        run_benchmark(str(copy), BenchSettings(64, 64), compare="diffusers")


@pytest.mark.slow  # ~10 s: two workers, one compiling the graphs for OpenVINO
def test_openvino_baseline_runs_the_same_loop_on_openvino_in_turns(engine):
    """`--compare openvino`: sdrt's loop on OpenVINO's CPU plugin, its own worker taking turns with
    sdrt's ONNX Runtime one; its report has sdrt's stages, its UNet calls and the pair ratios."""
    pytest.importorskip("openvino")
    settings = BenchSettings(height=64, width=64, steps=2)
    report = run_benchmark(str(engine), settings, runs=2, warmup=0, compare=("openvino",))
    openvino = report["openvino"]
    assert openvino["unet_step"]["count"] == 2 * 2 and report["sdrt"]["unet_step"]["count"] == 2 * 2  # 2 runs of 2
    assert set(openvino["stages"]) == set(report["sdrt"]["stages"]) and openvino["load_seconds"] > 0
    pairs = report["speedup_vs_openvino"]["pairs"]
    assert len(pairs) == 2 and all(p > 0 for p in pairs) and report["memory_ratio_vs_openvino"] > 0
    assert report["versions"]["openvino"] and "diffusers" not in report
    from sdrt.benchmark.report import format_report

    assert "speedup vs openvino" in format_report(report)


@pytest.mark.parametrize(
    ("compare", "backend", "message"),
    [
        ("openvino", "tensorrt", "--compare openvino runs beside --backend cpu (not tensorrt)"),
        (("diffusers", "nope"), "cpu", "unknown baseline 'nope'; choose from diffusers, openvino"),
    ],
)
def test_baselines_are_refused_in_one_line(engine, compare, backend, message):
    with pytest.raises(BenchError) as error:
        run_benchmark(str(engine), BenchSettings(64, 64), backend=backend, compare=compare)
    assert str(error.value) == message


def test_summary_and_sweep_parsing():
    summary = summarize([3.0, 1.0, 2.0, 10.0])
    assert summary["median"] == 2.5 and summary["min"] == 1.0 and summary["max"] == 10.0 and summary["count"] == 4
    assert parse_sweep("height=256,512") == ("height", [256, 512])
    with pytest.raises(BenchError, match="must be integers"):
        parse_sweep("steps=ten")


def test_gpu_memory_is_read_per_process_from_nvidia_smi():
    from sdrt.benchmark.worker import parse_compute_apps

    text = "4242, 1536\n77, 900\n4242, 512\n[N/A], [N/A]\n"
    assert parse_compute_apps(text, 4242) == 2048 * 2**20
    assert parse_compute_apps(text, 5) is None and parse_compute_apps("", 4242) is None


@pytest.mark.slow  # 20 s: two SDXL bench workers
def test_sequential_sdxl_report_with_diffusers_baseline(exported_sdxl, tiny_sdxl):
    """SDXL against diffusers' SDXL pipeline, one side at a time (what --arch sdxl needs on 24 GiB)."""
    settings = BenchSettings(height=64, width=64, steps=1)
    report = run_benchmark(
        str(exported_sdxl("base")),
        settings,
        runs=1,
        warmup=0,
        compare="diffusers",
        diffusers_model=str(tiny_sdxl["base"]),
        sequential=True,
    )
    assert report["sequential"] and report["sdrt"]["unet_step"]["count"] == 1
    assert len(report["speedup_vs_diffusers"]["pairs"]) == 1 and report["diffusers"]["load_seconds"] > 0
    assert report["unet_gflop_per_call"] > 0 and report["precision"]["text_encoder_2"] == "fp32"
    from sdrt.benchmark.report import format_report

    assert "1 sequential pairs" in format_report(report)


def test_every_arch_is_a_random_model():
    """`--arch` builds through `sdrt export --random`'s registry (flux-tiny is its tiny-flux)."""
    from sdrt.benchmark import ARCH_RANDOM_NAMES, ARCHES
    from sdrt.export.random_sources import RANDOM_MODELS

    assert all(ARCH_RANDOM_NAMES.get(arch, arch) in RANDOM_MODELS for arch in ARCHES)
    assert ARCH_RANDOM_NAMES["flux-tiny"] == "tiny-flux"


@pytest.mark.slow
def test_flux_tiny_against_diffusers_with_the_stage_breakdown(exported_flux, tiny_flux):
    """What `sdrt bench --arch flux-tiny --compare diffusers` measures, on the session's tiny FLUX.1
    dev (diffusers keeps its flow-matching scheduler, sdrt runs the family's flow_euler)."""
    settings = BenchSettings(height=64, width=64, steps=2)
    report = run_benchmark(
        str(exported_flux("dev")),
        settings,
        runs=1,
        warmup=0,
        compare="diffusers",
        diffusers_model=str(tiny_flux["dev"]),
    )
    stages = report["sdrt"]["stages"]
    assert {"text_encoder", "denoise", "vae_decoder", "end_to_end"} <= set(stages)
    assert report["sdrt"]["unet_step"]["count"] == 2
    assert len(report["speedup_vs_diffusers"]["pairs"]) == 1


@pytest.mark.slow
def test_flux2_klein_against_diffusers(exported_flux2_klein, tiny_flux2_klein):
    """What `sdrt bench --arch tiny-flux2-klein --compare diffusers` measures, on the session's
    tiny klein (Flux2KleinPipeline takes the prompt by name: its first argument is the image)."""
    settings = BenchSettings(height=64, width=64, steps=2)
    report = run_benchmark(
        str(exported_flux2_klein),
        settings,
        runs=1,
        warmup=0,
        compare="diffusers",
        diffusers_model=str(tiny_flux2_klein),
    )
    assert {"text_encoder", "denoise", "vae_decoder", "end_to_end"} <= set(report["sdrt"]["stages"])
    assert report["sdrt"]["unet_step"]["count"] == 2
    assert len(report["speedup_vs_diffusers"]["pairs"]) == 1
