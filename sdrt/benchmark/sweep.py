"""`sdrt bench --sweep`: how cost grows with the work. A table always; a PNG plot when
matplotlib is installed (pip install 'sdrt[plot]')."""

from __future__ import annotations

from pathlib import Path

# What one unit of work is for each sweep: the table divides cost by it, so a flat
# "per unit" column means cost grows linearly with the swept quantity.
UNITS = {"height": "pixel row", "width": "pixel column", "size": "megapixel", "batch": "image", "steps": "step"}


def work_units(name: str, value: int) -> float:
    return value * value / 1e6 if name == "size" else float(value)


def sweep_rows(name: str, values: list[int], reports: list[dict]) -> list[dict]:
    rows = []
    for value, report in zip(values, reports):
        sd = report["sdrt"]
        end_to_end = sd["stages"]["end_to_end"]["median"]
        row = {
            name: value,
            "end_to_end_s": end_to_end,
            "unet_step_s": sd["unet_step"]["p50"],
            "per_unit_s": end_to_end / work_units(name, value),
            "peak_rss_gib": sd["peak_rss_bytes"] / 2**30,
        }
        if "speedup_vs_diffusers" in report:
            row["diffusers_s"] = report["diffusers"]["end_to_end"]["median"]
            row["speedup"] = report["speedup_vs_diffusers"]["median"]
        rows.append(row)
    first = rows[0]["end_to_end_s"] if rows else 1.0
    for row in rows:
        row["relative"] = row["end_to_end_s"] / first
    return rows


def format_table(name: str, rows: list[dict]) -> str:
    unit = UNITS[name]
    with_baseline = any("speedup" in row for row in rows)
    header = f"{name:>8}  {'end to end':>11}  {'UNet step':>10}  {'per ' + unit:>16}  {'x first':>7}  {'peak':>8}"
    if with_baseline:
        header += f"  {'diffusers':>10}  {'speedup':>7}"
    lines = [header]
    for row in rows:
        line = (
            f"{row[name]:>8}  {row['end_to_end_s']:>9.3f} s  {row['unet_step_s'] * 1e3:>7.1f} ms  "
            f"{row['per_unit_s']:>14.4f} s  {row['relative']:>7.2f}  {row['peak_rss_gib']:>4.2f} GiB"
        )
        if with_baseline:
            line += f"  {row.get('diffusers_s', float('nan')):>8.3f} s  {row.get('speedup', float('nan')):>6.2f}x"
        lines.append(line)
    return "\n".join(lines)


def plot(name: str, rows: list[dict], path: Path, title: str) -> Path | None:
    """End to end (and diffusers', when compared) against the swept value; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    values = [row[name] for row in rows]
    figure, axis = plt.subplots(figsize=(6, 4), dpi=120)
    axis.plot(values, [row["end_to_end_s"] for row in rows], marker="o", label="sdrt end to end")
    axis.plot(values, [row["unet_step_s"] for row in rows], marker=".", linestyle=":", label="sdrt UNet step")
    if any("diffusers_s" in row for row in rows):
        axis.plot(values, [row.get("diffusers_s") for row in rows], marker="s", label="diffusers end to end")
    axis.set_xlabel(name)
    axis.set_ylabel("seconds (median)")
    axis.set_title(title, fontsize=9)
    axis.grid(True, alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
