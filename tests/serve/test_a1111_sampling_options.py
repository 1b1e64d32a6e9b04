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


def test_schedule_options_are_reported_with_a1111s_defaults_and_checked():
    report = A1111Options().report("m", None, 0)
    names = ("sigma_min", "sigma_max", "rho", "use_old_karras_scheduler_sigmas", "beta_dist_alpha", "beta_dist_beta")
    assert [report[k] for k in names] == [0.0, 0.0, 0.0, False, 0.6, 0.6]
    changed = A1111Options().changed({"sigma_max": 5.0, "use_old_karras_scheduler_sigmas": True}, "override_settings")
    assert changed.sampler.sigma_max == 5.0 and changed.sampler.use_old_karras_scheduler_sigmas is True
    for name, bad in (
        ("sigma_min", -0.1),
        ("rho", "7"),
        ("beta_dist_alpha", 0.0),
        ("use_old_karras_scheduler_sigmas", 0),
    ):
        with pytest.raises(RequestError) as refused:
            A1111Options().changed({name: bad}, "override_settings")
        assert refused.value.status == 400 and refused.value.param == f"override_settings.{name}"


def test_from_png_reads_schedule_settings_back():
    text = "a cat\nSteps: 4, Sampler: Euler, Schedule type: Beta, CFG scale: 7, Seed: 1, Schedule min sigma: 0.1, "
    text += "Schedule max sigma: 5.0, Schedule rho: 5.0, Beta schedule alpha: 0.3, Beta schedule beta: 0.9"
    defaults, notes = defaults_from_parameters(text)
    assert not notes
    names = ("sigma_min", "sigma_max", "rho", "beta_dist_alpha", "beta_dist_beta")
    assert [defaults[k] for k in names] == [0.1, 5.0, 5.0, 0.3, 0.9]


def test_a_payloads_eta_replaces_eta_ancestral_for_the_k_samplers_that_take_one():
    """Sampler.initialize: p.eta if the payload gives one, else opts.eta_ancestral."""
    from sdrt.runtime.sampler_settings import SamplerSettings
    from sdrt.serve.a1111_samplers import a1111_sampler_settings

    options = SamplerSettings(eta_ancestral=0.3)
    assert a1111_sampler_settings("k_euler_a", 0.7, options).eta_ancestral == 0.7
    assert a1111_sampler_settings("k_euler_a", None, options).eta_ancestral == 0.3
    assert a1111_sampler_settings("k_euler", 0.7, options) == options  # no eta in sample_euler


def test_generate_has_a_flag_per_setting_at_a1111s_default():
    import dataclasses

    from sdrt.cli.generate import generate
    from sdrt.runtime.sampler_settings import SamplerSettings

    params = {param.name: param for param in generate.params}
    for item in dataclasses.fields(SamplerSettings):
        param = params[item.name]  # a switch is a flag, off unless given (A1111's defaults are all off)
        assert (param.is_flag and item.default is False) or param.default == item.default, item.name
