"""Layer 7, run: ``bench run`` and ``bench samples``: the runner, group execution (``compute``), cache
keys, the ``--out`` lock.  Imports every layer below; only ``bench.cli``, ``bench.api`` and
``bench.train`` sit above it."""
