"""The bundled training module: one small function per method (``methods``), a shared loop
(``loop.train``), recipes (``recipe``) and the Fig. 3 energy-change monitor (``monitor``)."""

from bench.train.loop import train
from bench.train.methods import METHODS
from bench.train.recipe import Recipe, load_recipe

__all__ = ["METHODS", "Recipe", "load_recipe", "train"]
