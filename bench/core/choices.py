"""The closed vocabularies of the settings (``bench.core.settings``), one ``StrEnum`` each."""

from bench.core.compat import StrEnum


class Norm(StrEnum):
    """Threat model of PGD, FGSM/FGM and AutoAttack."""

    LINF = "Linf"
    L2 = "L2"


class GenEnergy(StrEnum):
    """Energy the SGLD sampler descends: joint -log p(x, y) (Eq. 17) or the CE loss (Eq. 16)."""

    JOINT = "joint"
    CE = "ce"


class GenInit(StrEnum):
    """Where the SGLD chains start."""

    GAUSSIAN = "gaussian"  # class-conditional Gaussian of the training split (Sec. 2.2)
    UNIFORM = "uniform"
    BUFFER = "buffer"  # the checkpoint's replay buffer


class FisherSpace(StrEnum):
    """What the Fisher scores differentiate with respect to."""

    PIXEL = "pixel"  # the image in [0, 1]
    MODEL = "model"  # the network's normalised input (x - m) / s (the paper's convention)


class DenoiseLabel(StrEnum):
    """The label y of the denoising energy E(x, y)."""

    PREDICTED = "predicted"
    ORACLE = "oracle"


class OodScore(StrEnum):
    """The OOD scores (higher = in-distribution; bench.metrics.ood)."""

    PX = "px"  # logsumexp f(x) = -E(x)
    PY = "py"  # max softmax
    PXGRAD = "pxgrad"  # -||d log p(x)/dx||_2


class Amp(StrEnum):
    OFF = "off"
    BF16 = "bf16"


class DefenseKind(StrEnum):
    """Defended inference (``bench.engines.defense``)."""

    NONE = "none"
    SGLD_REFINE = "sgld-refine"


class AAVersion(StrEnum):
    STANDARD = "standard"
    PLUS = "plus"
    RAND = "rand"


# kinds of value: what the command line parses and ``validate`` accepts
