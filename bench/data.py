"""``bench.data``, kept for scripts written against it (README): the module is ``bench.inputs.data``."""

from bench.inputs.data import *  # noqa: F401,F403
from bench.inputs.data import Dataset, digits_split, load  # noqa: F401
