"""Settings are declared once (bench.core.settings.SETTINGS): the command line, validation, derived
defaults and the registry all come from that table."""

import re

import pytest
from click.testing import CliRunner

from bench import cli
from bench.core import settings
from bench.core.errors import BenchError
from bench.core.settings import DEFAULTS, SETTINGS, Norm
from bench.engines import attacks
from bench.metrics import registry


def _help() -> str:
    return CliRunner().invoke(cli.cli, ["run", "--help"], terminal_width=200).output


def test_every_declared_setting_is_a_bench_run_option_with_its_declared_choices():
    text = _help()
    for st in SETTINGS:
        assert st.flag in text, st.name
        if st.kind == "choice":  # a "choices" list is text: its help names the choices
            shown = re.search(re.escape(st.flag) + r" \[([^\]]+)\]", text)
            assert shown and shown[1].split("|") == [c.value for c in st.choices], st.name
    assert set(DEFAULTS) == {st.name for st in SETTINGS}
    assert DEFAULTS["norm"] == "Linf" and type(DEFAULTS["norm"]) is str  # plain values in run.config


def test_every_group_keys_on_declared_settings_and_registration_refuses_others():
    for g in registry.load_all().values():
        assert set(g.settings) <= set(settings.SPECS), g.name
    with pytest.raises(ValueError, match="not declared"):
        registry.register("gadget_undeclared", "gadgetry", ("gadget_x",), settings=("n_eval", "n_gadgets"))


@pytest.mark.parametrize("key, value, message", [
    ("n_eval", 0, "n-eval must be a positive integer, got 0"),
    ("n_ref", -3, "n-ref must be a positive integer, got -3"),
    ("pgd_steps", 2.5, "pgd-steps must be a positive integer"),
    ("max_diverged", 1.5, "max-diverged must be a number in [0, 1]"),
    ("norm", "L1", "unknown norm 'L1'; expected one of Linf, L2"),
    ("gen_init", "zeros", "unknown gen init 'zeros'; expected one of gaussian, uniform, buffer"),
    ("denoise_steps", [10, 0], "denoise-steps must be positive integers"),
    ("ref_stats", "/no/such/file.npz", "--ref-stats file not found: /no/such/file.npz"),
    ("eps", float("nan"), "eps must be a finite number"),
    ("eps", 8, "outside [0, 1)"),
])
def test_validation_comes_from_the_declaration(key, value, message):
    with pytest.raises(BenchError, match=re.escape(message)):
        settings.validate(dict(DEFAULTS, eps=0.1) | {key: value}, (1, 8, 8))


def test_bad_values_on_the_command_line_are_one_line_errors(capsys):
    assert cli.main(["run", "--n-eval", "0", "--suite", "robust"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: n-eval must be a positive integer, got 0"
    assert cli.main(["run", "--denoise-steps", "10,x"]) == 2
    assert "not a comma list of integers" in capsys.readouterr().err


def test_derived_defaults_are_computed_in_one_place():
    s = settings.complete(dict(DEFAULTS, eps=0.2))
    assert s["pgd_step_size"] == pytest.approx(0.05) and s["landscape_radius"] == pytest.approx(0.4)
    # under L2 the landscape stays sized by the L-inf radius; the PGD step follows the L2 eps
    s = settings.complete(dict(DEFAULTS, eps=1.5, norm="L2"), linf_eps=0.1)
    assert s["pgd_step_size"] == pytest.approx(0.375) and s["landscape_radius"] == pytest.approx(0.2)
    given = settings.complete(dict(DEFAULTS, eps=0.2, pgd_step_size=0.01))
    assert given["pgd_step_size"] == 0.01  # a value given is kept
    assert settings.value(dict(DEFAULTS, eps=0.2), "pgd_step_size") == pytest.approx(0.05)


def test_closed_vocabularies_are_enums():
    assert attacks.NORMS == ("Linf", "L2") and tuple(Norm) == attacks.NORMS
    assert attacks.LOSSES == ("ce", "energy")
    with pytest.raises(ValueError, match="expected one of ce, energy"):
        attacks.attack_loss(None, None, None, "hinge")


def test_help_and_docs_say_what_the_code_does():
    """ECE and MCE bin by equal width (only ece_adaptive by equal mass); the OOD pxgrad in [0, 1]
    pixels is twice JEM's on [-1, 1] inputs (x = (z + 1) / 2, so d/dx = 2 d/dz)."""
    import torch

    from bench.core.settings import SPECS
    from bench.metrics import calibration, ood

    assert "ece and mce (equal-width)" in SPECS["ece_bins"].help and "ece_adaptive (equal-mass)" in SPECS["ece_bins"].help
    _, stats = calibration.expected_calibration_error(torch.tensor([0.26, 0.74, 0.76]), torch.tensor([1, 0, 1]), 2)
    assert [c for c in stats["count"] if c] == [1, 2]  # (0, 0.5], (0.5, 1]: widths (equal mass: 2, 1)
    assert "twice JEM's" in " ".join(ood.__doc__.split()) and "half JEM's" not in ood.__doc__
