"""A1111's sampling options on sdrt's A1111 server (GET/POST /sdapi/v1/options, override_settings)
and their PNG parameters read back by `sdrt generate --from-png`."""

from __future__ import annotations

import pytest

from sdrt.cli.from_png import defaults_from_parameters
from sdrt.serve.a1111_options import FIXED_OPTIONS, A1111Options
from sdrt.serve.schemas import RequestError


def test_always_discard_is_reported_with_a1111s_default_and_settable():
    options = A1111Options()
    assert "always_discard_next_to_last_sigma" not in FIXED_OPTIONS
    assert options.report("m", None, 0)["always_discard_next_to_last_sigma"] is False  # A1111's default
    changed = options.changed({"always_discard_next_to_last_sigma": True}, "override_settings")
    assert changed.report("m", None, 0)["always_discard_next_to_last_sigma"] is True
    with pytest.raises(RequestError) as refused:
        options.changed({"always_discard_next_to_last_sigma": "yes"}, "override_settings")
    assert refused.value.status == 400 and refused.value.param == "override_settings.always_discard_next_to_last_sigma"


def test_from_png_reads_discard_penultimate_sigma_back():
    text = "a cat\nSteps: 4, Sampler: Euler, Schedule type: Karras, CFG scale: 7, Seed: 1, "
    text += "Discard penultimate sigma: True"
    defaults, notes = defaults_from_parameters(text)
    assert defaults["discard_penultimate_sigma"] is True and not notes


def test_sgm_noise_multiplier_is_reported_with_a1111s_default_and_settable():
    options = A1111Options()
    assert options.report("m", None, 0)["sgm_noise_multiplier"] is False  # A1111's default
    changed = options.changed({"sgm_noise_multiplier": True}, "override_settings")
    assert changed.report("m", None, 0)["sgm_noise_multiplier"] is True
    assert changed.sampler.sgm_noise_multiplier is True and options.sampler.sgm_noise_multiplier is False
    with pytest.raises(RequestError) as refused:
        options.changed({"sgm_noise_multiplier": 1}, "override_settings")
    assert refused.value.status == 400 and refused.value.param == "override_settings.sgm_noise_multiplier"


def test_from_png_reads_sgm_noise_multiplier_back():
    text = "a cat\nSteps: 4, Sampler: Euler, Schedule type: Karras, CFG scale: 7, Seed: 1, SGM noise multiplier: True"
    defaults, notes = defaults_from_parameters(text)
    assert defaults["sgm_noise_multiplier"] is True and not notes


def test_eta_and_churn_options_are_reported_with_a1111s_defaults_and_checked():
    report = A1111Options().report("m", None, 0)
    assert {k: report[k] for k in ("eta_ancestral", "s_churn", "s_tmin", "s_tmax", "s_noise")} == {
        "eta_ancestral": 1.0,
        "s_churn": 0.0,
        "s_tmin": 0.0,
        "s_tmax": 0.0,
        "s_noise": 1.0,
    }
    changed = A1111Options().changed({"s_churn": 2.5, "eta_ancestral": 0.5}, "override_settings")
    assert changed.sampler.s_churn == 2.5 and changed.sampler.eta_ancestral == 0.5
    for name, bad in (("eta_ancestral", 1.5), ("s_noise", "1"), ("s_tmax", -1.0), ("s_churn", float("nan"))):
        with pytest.raises(RequestError) as refused:
            A1111Options().changed({name: bad}, "override_settings")
        assert refused.value.status == 400 and refused.value.param == f"override_settings.{name}"


def test_from_png_reads_eta_and_churn_back():
    text = "a cat\nSteps: 4, Sampler: Euler, CFG scale: 7, Seed: 1, Eta: 0.5, Sigma churn: 2.0, "
    text += "Sigma tmin: 1.0, Sigma tmax: 5.0, Sigma noise: 0.8"
    defaults, notes = defaults_from_parameters(text)
    assert not notes
    assert [defaults[k] for k in ("eta_ancestral", "s_churn", "s_tmin", "s_tmax", "s_noise")] == [
        0.5,
        2.0,
        1.0,
        5.0,
        0.8,
    ]
