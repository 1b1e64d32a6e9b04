"""ComfyUI's conditioning lists as a reference, written from comfy/samplers.py independently of
sdrt: process_conds (resolve_areas_and_cond_masks_multidim: percentage areas on the latents, masks
bilinear at their size and their bounds; calculate_start_end_timesteps: percents to sigmas;
create_cond_with_same_area_if_none) and calc_cond_batch (get_area_and_mult: each cond's UNet call
on its area with its feathered or masked weights; the denoised predictions summed over weight
sums that start at 1e-37), for one side of guidance."""

from __future__ import annotations

import math

import torch


def percent_to_sigma(s, percent: float) -> float:  # ModelSamplingDiscrete.percent_to_sigma
    if percent <= 0.0:
        return 999999999.9
    if percent >= 1.0:
        return 0.0
    return s.sigma(torch.tensor((1.0 - percent) * 999.0)).item()


def resolve_conds(conds: list[dict], s, rows: int, columns: int) -> list[dict]:
    """resolve_areas_and_cond_masks_multidim's percentages, then calculate_start_end_timesteps."""
    out = []
    for c in conds:
        c = dict(c)
        if "mask" in c:  # resized bilinear to the latents; "mask bounds": get_mask_aabb's box as the area
            mask = c["mask"]
            if mask.shape[1:] != (rows, columns):
                size = (rows, columns)
                mask = torch.nn.functional.interpolate(mask[:, None], size=size, mode="bilinear", align_corners=False)
                mask = mask[:, 0]
            c["mask"] = mask
            if c.get("set_area_to_bounds"):
                ys, xs = torch.where(mask.abs().max(dim=0).values != 0)
                h, w = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
                c["area"] = (max(8, h), max(8, w), int(ys.min()), int(xs.min()))
        if "area" in c and c["area"][0] == "percentage":
            _, h, w, y, x = c["area"]
            c["area"] = (max(1, round(h * rows)), max(1, round(w * columns)), round(y * rows), round(x * columns))
        if "start_percent" in c:
            c["timestep_start"] = percent_to_sigma(s, c["start_percent"])
        if "end_percent" in c:
            c["timestep_end"] = percent_to_sigma(s, c["end_percent"])
        out.append(c)
    return out


def same_area(conds: list[dict], c: dict) -> None:
    """create_cond_with_same_area_if_none."""
    if "area" not in c:
        return
    ca, smallest = c["area"], None
    for x in conds:
        if "area" in x:
            a = x["area"]
            inside = all(ca[2 + i] >= a[2 + i] and ca[i] + ca[2 + i] <= a[i] + a[2 + i] for i in range(2))
            if inside:
                if smallest is None or "area" not in smallest:
                    smallest = x
                elif math.prod(smallest["area"][:2]) > math.prod(a[:2]):
                    smallest = x
        elif smallest is None:
            smallest = x
    if smallest is None or smallest.get("area") == ca:
        return
    conds.append({**c, "context": smallest["context"]})


def calc_side(unet, s, conds: list[dict], x: torch.Tensor, sigma: torch.Tensor, feather: bool = True) -> torch.Tensor:
    """calc_cond_batch for one side: each cond's call on its area, weighted, summed, divided."""
    out, count = torch.zeros_like(x), torch.ones_like(x) * 1e-37
    rows, columns = x.shape[2:]
    for c in conds:
        if "timestep_start" in c and sigma[0] > c["timestep_start"]:
            continue
        if "timestep_end" in c and sigma[0] < c["timestep_end"]:
            continue
        h, w, y, left = c.get("area", (rows, columns, 0, 0))
        h, w = min(rows - y, h), min(columns - left, w)
        part = x[:, :, y : y + h, left : left + w]
        if "mask" in c:
            mask = c["mask"][: len(x), y : y + h, left : left + w] * c.get("mask_strength", 1.0)
            mask = mask[:, None].repeat(len(x) // len(mask), part.shape[1], 1, 1)
        else:
            mask = torch.ones_like(part)
        mult = mask * c.get("strength", 1.0)
        if "area" in c and "mask" not in c and feather:
            for axis, (offset, size, total) in enumerate(((y, h, rows), (left, w, columns))):
                rr = min(8, size // 4)
                for t in range(rr):
                    if offset != 0:
                        mult.narrow(axis + 2, t, 1).mul_((1.0 / rr) * (t + 1))
                    if offset + size < total:
                        mult.narrow(axis + 2, size - 1 - t, 1).mul_((1.0 / rr) * (t + 1))
        t = s.timestep(sigma).float()
        context = c["context"].repeat(len(x), 1, 1)
        extra = {}
        if "added" in c:  # SDXL's adm: its pooled output and the image's size ids (CONDRegular, repeated)
            extra["added_cond_kwargs"] = {name: value.repeat(len(x), 1) for name, value in c["added"].items()}
        output = unet(s.calculate_input(sigma, part), t, encoder_hidden_states=context, **extra).sample
        out[:, :, y : y + h, left : left + w] += s.calculate_denoised(sigma, output, part) * mult
        count[:, :, y : y + h, left : left + w] += mult
    return out / count
