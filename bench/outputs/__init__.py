"""Layer 6, outputs: what is made of results files (paper-style tables, the report page,
``bench check``).  Imports core and the metric facts of ``bench.metrics`` (never a metric's code)."""
