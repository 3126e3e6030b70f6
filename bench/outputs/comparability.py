"""Whether two runs are comparable (``bench check``, ``bench check --another-model``, ``bench
compare``): the same model (``model_differences``: the weights as loaded), the same evaluation
(``evaluation_differences``: data set and digests, feature extractors, the settings that can change
a metric both hold, ``compared_settings``), and the fingerprint the exact rule needs
(``fingerprint_differences``: platform, versions, fast paths).  Each returns what differs, as
lines; ``bench.outputs.check`` says them and stops with exit code 2."""

from __future__ import annotations

from bench.core import fingerprint
from bench.core.results import Results
from bench.core.settings import DEFAULTS, FASTPATH_SETTINGS
from bench.core.values import same_value
from bench.metrics import registry

# settings that are part of the model, which ``model.weights_sha256`` holds (the mean and std are
# buffers of the EnergyModel): not compared as settings of the evaluation
MODEL_SETTINGS = ("normalize",)


def _data(res: Results) -> dict:
    d = res.run.get("data")
    return d if isinstance(d, dict) else {}


def compared_settings(base: Results, cur: Results) -> set[str] | None:
    """The settings that can change a metric both runs hold: those its group declares (``seed``
    always, and every setting no group declares, which reaches the model itself); None (all of
    them) where a common metric belongs to no registered group."""
    groups = list(registry.declared_groups().values())
    keys = {"seed"} | (set(DEFAULTS) - {k for g in groups for k in g.settings})
    for name in set(base.metrics) & set(cur.metrics):
        g = registry.group_of(name)
        if g is None:
            return None
        keys |= set(g.settings)
    return keys


def setting_differences(base: Results, cur: Results) -> list[str]:
    """What makes the two runs different evaluations, or evaluations of different models: the
    model (``model_differences``) and everything else (``evaluation_differences``)."""
    return model_differences(base, cur) + evaluation_differences(base, cur)


def model_differences(base: Results, cur: Results) -> list[str]:
    """Whether two runs evaluated other models: by ``model.weights_sha256``, the weights as loaded
    (normalisation included), whatever file or ``bench.evaluate`` module they came from; the file
    digest ``model.sha256`` only where a run predates the weights digest."""
    key = "weights_sha256" if base.model.get("weights_sha256") and cur.model.get("weights_sha256") else "sha256"
    b, c = base.model.get(key), cur.model.get(key)
    diffs = [] if b == c else [f"model.{key} (baseline {_show(b)}, current {_show(c)})"]
    if key == "sha256":  # the file digest leaves out the normalisation the weights digest holds
        bc, cc = (r.run.get("config") if isinstance(r.run.get("config"), dict) else {} for r in (base, cur))
        for k in MODEL_SETTINGS:
            if not same_value(bv := _setting(bc, k), cv := _setting(cc, k)):
                diffs.append(f"run.config.{k} (baseline {_show(bv)}, current {_show(cv)})")
    return diffs


def evaluation_differences(base: Results, cur: Results) -> list[str]:
    """What makes two runs different evaluations whatever the model: the data set and its digests,
    the feature extractors, and the run.config settings that change a number the two hold
    (``compared_settings``: a baseline made with another --n-gen still checks a robust-only run),
    compared as values (``same_value``: ``0.286/0.353`` is ``0.2860/0.3530``)."""
    diffs = []
    b, c = base.model.get("dataset"), cur.model.get("dataset")
    if b != c:
        diffs.append(f"model.dataset (baseline {_show(b)}, current {_show(c)})")
    for key in ("train_sha256", "test_sha256"):
        b, c = _data(base).get(key), _data(cur).get(key)
        if b != c:
            diffs.append(f"run.data.{key} (baseline {_show(b)}, current {_show(c)})")
    diffs += extractor_differences(base, cur)
    bc, cc = base.run.get("config") or {}, cur.run.get("config") or {}
    if not isinstance(bc, dict) or not isinstance(cc, dict):
        return diffs + ["run.config is not an object"]
    keys = (set(bc) | set(cc)) - set(FASTPATH_SETTINGS) - set(MODEL_SETTINGS)
    relevant = compared_settings(base, cur)
    for key in sorted(keys if relevant is None else keys & relevant):
        b, c = _setting(bc, key), _setting(cc, key)
        if not same_value(b, c):
            shown = [_show(v) + (" (absent: its default)" if key not in d and key in DEFAULTS else "")
                     for v, d in ((b, bc), (c, cc))]
            diffs.append(f"run.config.{key} (baseline {shown[0]}, current {shown[1]})")
    return diffs


def extractor_differences(base: Results, cur: Results) -> list[str]:
    """Metrics both runs hold whose feature extractors differ (``details.extractor_identity``: the
    network and its weights' sha256): an FID in DINOv2 features is no FID in Inception's, nor is one
    of ``auto`` resolving to another network on another machine, whatever the settings say."""
    out = []
    for name in sorted(set(base.metrics) & set(cur.metrics)):
        b, c = (getattr(r.metrics[name], "details", None) or {} for r in (base, cur))
        ib, ic = b.get("extractor_identity"), c.get("extractor_identity")
        if ib is not None and ic is not None and ib != ic:
            out.append(f"{name}'s feature extractor (baseline {ib}, current {ic})")
    more = f" (and {len(out) - 1} more metrics of that extractor)" if len(out) > 1 else ""
    return [out[0] + more] if out else []


def _setting(config: dict, key: str):
    """A run's setting; one the run predates counts as its default (what that run used)."""
    return config.get(key, DEFAULTS.get(key, "<absent>"))


def _show(v) -> str:
    if isinstance(v, str):
        return v[:16] + "..." if len(v) == 64 else v  # a sha256: its head
    return repr(v)


def _record(run: dict, key: str) -> dict:
    v = run.get(key)
    return v if isinstance(v, dict) else {}


def fast_path_differences(base: Results, cur: Results) -> list[str]:
    bc, cc = base.run.get("config") or {}, cur.run.get("config") or {}
    if not isinstance(bc, dict) or not isinstance(cc, dict):
        return []
    return [f"{k} {b!r} -> {c!r}" for k in FASTPATH_SETTINGS if (b := _setting(bc, k)) != (c := _setting(cc, k))]


def computed_on(res: Results, metric: str) -> dict:
    """The platform a metric's group was computed on (a cached group keeps its own)."""
    for g in _record(res.run, "groups").values():
        if isinstance(g, dict) and metric in (g.get("metrics") or ()) and isinstance(g.get("platform"), dict):
            return g["platform"]
    return _record(res.run, "platform")


def fingerprint_differences(base: Results, cur: Results, metric: str | None = None) -> list[str]:
    """Platform (of ``metric``'s group, else of the run), versions and fast paths that differ."""
    pb = computed_on(base, metric) if metric else _record(base.run, "platform")
    pc = computed_on(cur, metric) if metric else _record(cur.run, "platform")
    out = [f"platform.{d}" for d in fingerprint.differences(pb, pc)]
    out += [f"versions.{d}" for d in fingerprint.differences(_record(base.run, "versions"),
                                                             _record(cur.run, "versions"))]
    return out + fast_path_differences(base, cur)
