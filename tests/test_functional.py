"""bench.functional: every public function documented with an example, and the examples pass."""

import doctest

import bench.functional as F


def test_the_examples_run_and_pass(one_thread):
    result = doctest.testmod(F, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted >= 2 * len(F.__all__)


def test_every_function_has_an_example():
    missing = [n for n in F.__all__ if ">>>" not in (getattr(F, n).__doc__ or "")]
    assert not missing
