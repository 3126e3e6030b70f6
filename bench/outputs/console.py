"""The console summary of a run: what ``bench run`` prints and ``print(bench.evaluate(...))`` shows.

One line per metric: its name, value, standard error (``± std``, as results.json records it) and
the number of points it is over (``n``), or ``null`` with the reason; then the threat model the
attacks used (``eps`` and its norm), which no metric line names.  No torch: it reads a ``Results``.
"""

from __future__ import annotations

from bench.core.results import Result, Results


def metric_lines(metrics: dict[str, Result]) -> list[str]:
    """``name  value  ± std  n=N`` per metric, columns aligned; ``name  null  (reason)`` for a null."""
    width = max((len(k) for k in metrics), default=0)
    shown = {k: (f"{r.value:.4f}", f"± {r.std:.4f}" if r.std is not None else "") for k, r in metrics.items()
             if r.value is not None}
    vw = max((len(v) for v, _ in shown.values()), default=0)
    sw = max((len(s) for _, s in shown.values()), default=0)
    lines = []
    for k, r in metrics.items():
        if r.value is None:
            lines.append(f"{k:<{width}}  null  ({r.reason})")
            continue
        value, std = shown[k]
        n = f"n={r.n}" if r.n is not None else ""
        lines.append(f"{k:<{width}}  {value:>{vw}}  {std:<{sw}}  {n}".rstrip())
    return lines


def threat_line(res: Results) -> str | None:
    """``threat model: Linf eps = 0.1 (25.5/255)`` from the run's settings (``run.config``); None
    when the run records no eps."""
    config = res.run.get("config") or {}
    eps = config.get("eps")
    if eps is None:
        return None
    norm = config.get("norm") or "Linf"
    scale = f" ({eps * 255:.4g}/255 of the [0, 1] pixel range)" if norm == "Linf" else " (pixels in [0, 1])"
    return f"threat model: {norm} eps = {eps:.4g}{scale}; set it with --eps (eps= in bench.evaluate)"


def summary(res: Results) -> list[str]:
    """The metric lines, then the threat model line."""
    line = threat_line(res)
    return metric_lines(res.metrics) + ([line] if line else [])
