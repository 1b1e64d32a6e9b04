"""A benchmark report as text: per-stage latency, memory and the ratio to each baseline."""

from __future__ import annotations


def format_report(report: dict) -> str:
    """A human-readable summary of one benchmark report."""
    s, sd = report["settings"], report["sdrt"]
    lines = [
        f"{s['width']}x{s['height']}, {s['steps']} steps, guidance {s['guidance']}, "
        f"batch {s['num_images']}, {s['sampler']}, {report['backend']}, {report['threads']} threads",
        f"load (cold start)        {sd['load_seconds']:.2f} s",
    ]
    for stage, summary in sd["stages"].items():
        lines.append(
            f"{stage:<24} {summary['median'] * 1e3:10.1f} ms  (p10 {summary['p10'] * 1e3:.1f}, "
            f"p90 {summary['p90'] * 1e3:.1f})"
        )
    step = sd["unet_step"]
    lines.append(
        f"UNet step p50/p90/p99     {step['p50'] * 1e3:.1f} / {step['p90'] * 1e3:.1f} / {step['p99'] * 1e3:.1f} ms"
    )
    if "controlnet_step" in sd:
        control = sd["controlnet_step"]
        lines.append(
            f"ControlNets per step p50 {control['median'] * 1e3:.1f} ms ({control['median'] / step['p50']:.2f}x "
            f"the UNet's)"
        )
    lines.append(f"outside the engines      {sd['outside_engines_fraction']['median'] * 100:.2f} % of end to end")
    lines.append(f"peak memory              {sd['peak_rss_bytes'] / 2**30:.2f} GiB")
    if sd.get("peak_gpu_bytes"):
        lines.append(f"peak GPU memory          {sd['peak_gpu_bytes'] / 2**30:.2f} GiB (nvidia-smi)")
    if report.get("unet_gflops_achieved") is not None:
        lines.append(
            f"UNet                     {report['unet_gflops_achieved']:.1f} GFLOP/s achieved "
            f"({report['unet_gflop_per_call']:.1f} GFLOP a call); machine matmul "
            f"{report['matmul_gflops']:.1f} GFLOP/s"
        )
    if "diffusers" in report:
        d = report["diffusers"]
        lines.append(
            f"diffusers end to end     {d['end_to_end']['median'] * 1e3:10.1f} ms, load "
            f"{d['load_seconds']:.2f} s, peak {d['peak_rss_bytes'] / 2**30:.2f} GiB"
        )
        ratio = report["speedup_vs_diffusers"]
        lines.append(
            f"speedup vs diffusers     {ratio['median']:.2f}x median of "
            f"{len(ratio['pairs'])} {'sequential' if report.get('sequential') else 'interleaved'} pairs "
            f"(min {ratio['min']:.2f}, max {ratio['max']:.2f}); "
            f"memory {report['memory_ratio_vs_diffusers']:.2f}x"
        )
    if "openvino" in report:
        o, ratio = report["openvino"], report["speedup_vs_openvino"]
        lines.append(
            f"openvino end to end      {o['stages']['end_to_end']['median'] * 1e3:10.1f} ms, UNet step p50 "
            f"{o['unet_step']['p50'] * 1e3:.1f} ms, load {o['load_seconds']:.2f} s, peak "
            f"{o['peak_rss_bytes'] / 2**30:.2f} GiB"
        )
        lines.append(
            f"speedup vs openvino      {ratio['median']:.2f}x median of {len(ratio['pairs'])} pairs "
            f"(min {ratio['min']:.2f}, max {ratio['max']:.2f}); memory {report['memory_ratio_vs_openvino']:.2f}x"
        )
    return "\n".join(lines)
