"""ComfyUI's conditioning-list rules on their own (sdrt.runtime.regions, sdrt.runtime.loop.regional):
get_area_and_mult's feather and create_cond_with_same_area_if_none's copies, written out by
hand from comfy/samplers.py, and the calls' split to the denoiser's largest batch."""

from __future__ import annotations

import numpy as np
import pytest

from sdrt.errors import GenerationError
from sdrt.runtime.loop.regional import RegionalGuidance, Slot
from sdrt.runtime.regions import Area, ConditioningEntries, ConditioningEntry, Placed, place, weights


def test_the_feather_ramps_the_inner_edges_over_a_quarter_of_the_side_at_most():
    """(8, 12) at (0, 2) on 16 x 16: no ramp at the top (the border), rr = 8 // 4 = 2 rows at the
    bottom; rr = min(8, 12 // 4) = 3 columns each side: (t + 1) / rr from the edge."""
    mult = weights(Placed("a", (8, 12, 0, 2), 2.0, None), 16, 16)[0]
    rows = np.array([1, 1, 1, 1, 1, 1, 1, 0.5], np.float32)
    columns = np.array([1 / 3, 2 / 3, 1, 1, 1, 1, 1, 1, 1, 1, 2 / 3, 1 / 3], np.float32)
    np.testing.assert_allclose(mult, 2.0 * rows[:, None] * columns[None, :], rtol=1e-6)
    wide = weights(Placed("a", (40, 40, 4, 4), 1.0, None), 64, 64)[0]
    assert wide[7, 20] == pytest.approx(1.0) and wide[0, 20] == pytest.approx(1 / 8), "rr stops at 8"
    assert np.all(weights(Placed("a", None, 0.7, None), 16, 16) == np.float32(0.7)), "no area: the strength"
    edge = weights(Placed("a", (8, 8, 8, 8), 1.0, None), 16, 16)[0]
    assert edge[7, 7] == 1 and edge[0, 0] == pytest.approx(0.25), "no ramp at the right and bottom borders"


def test_an_area_is_cut_to_the_latents():
    mult = weights(Placed("a", (12, 8, 8, 0), 1.0, None), 16, 16)[0]
    assert mult.shape == (8, 8), "min(H - y, h) rows"


def test_each_side_gets_the_other_sides_areas_with_its_smallest_holding_entry():
    """create_cond_with_same_area_if_none, positive into negative, then back: the negative's
    copy takes the text of its smallest entry that holds the area (or its first without one) and
    the copied entry's strength and window; an equal area is not copied again."""
    entries = ConditioningEntries(
        (
            ConditioningEntry("whole"),
            ConditioningEntry("bird", Area(4, 4, 2, 2), strength=0.5, levels=(9.0, 1.0)),
        ),
        (
            ConditioningEntry("negative"),
            ConditioningEntry("big", Area(8, 8, 0, 0)),
            ConditioningEntry("same", Area(6, 6, 10, 10)),
        ),
    )
    negative, positive = place(entries, 16, 16)
    assert negative[3:] == [Placed("big", (4, 4, 2, 2), 0.5, (9.0, 1.0))], "the smallest holding area's text"
    # the negative's areas come back to the positive with the positive's text ("whole": no area holds them)
    assert positive[2:] == [Placed("whole", (8, 8, 0, 0), 1.0, None), Placed("whole", (6, 6, 10, 10), 1.0, None)]


def test_percentage_areas_round_to_latent_units():
    area = Area(0.4, 0.01, 0.3, 0.5, percentage=True)
    assert area.resolve(16, 16) == (6, 1, 5, 8), "max(1, round(p * H)); round(p * H)"


def test_an_entry_is_checked_when_the_lists_are_made():
    with pytest.raises(GenerationError, match="strength must be a finite number"):
        ConditioningEntries((ConditioningEntry("a", strength=float("nan")),), ())
    with pytest.raises(GenerationError, match="at least one positive entry"):
        ConditioningEntries((), (ConditioningEntry("a"),))


def test_calls_split_to_the_denoisers_largest_batch_and_skip_entries_outside_their_levels():
    full = np.ones((1, 1, 4, 4), np.float32)
    slots = [Slot(1, "a", (0, 0, 4, 4), full, None) for _ in range(3)]
    slots.append(Slot(1, "a", (0, 0, 4, 4), full, (5.0, 2.0)))
    encodings = {"a": {"encoder_hidden_states": np.zeros((77, 8), np.float32)}}
    guidance = RegionalGuidance(
        slots, 2, None, encodings=encodings, extras={1: {}}, sequence_feed="encoder_hidden_states", embeddings=()
    )
    guidance.max_rows = 4
    guidance.follow(type("Sampler", (), {"sigmas": np.array([9.0, 3.0], np.float32)})(), 0)
    early = guidance.calls(0, {})
    assert [list(rows) for rows, _, _ in early] == [[0, 1, 2, 3], [4, 5]], "two entries of two images a call"
    later = guidance.calls(1, {})
    assert sorted(row for rows, _, _ in later for row in rows) == list(range(8)), "the fourth joins at sigma 3"


def test_conditioning_lists_with_a_sampler_other_than_comfyuis_are_refused_naming_the_field():
    """Their entries are decided by ComfyUI's per-call sigmas: another sampler is refused before any encoding."""
    from types import SimpleNamespace

    from sdrt.runtime.loop.guiders import ClassifierFreeGuidance
    from sdrt.runtime.loop.regional import regional_guidance

    entries = ConditioningEntries((ConditioningEntry("a", Area(4, 4, 0, 0)),), (ConditioningEntry("b"),))
    resolved = SimpleNamespace(request=SimpleNamespace(conditionings=entries, sampler="euler"))
    with pytest.raises(GenerationError, match="ComfyUI's samplers") as refused:
        regional_guidance(None, {}, resolved, ClassifierFreeGuidance(7.5), [], None)
    assert refused.value.param == "conditionings"
