import pytest
import torch

from bench.core.errors import BenchError
from bench.inputs import nets


@pytest.mark.parametrize("name,params", [("wrn-28-10", 36_479_194), ("resnet18", 11_173_962),
                                         ("preact-resnet18", 11_172_170)])
def test_standard_sizes(name, params):
    # parameter counts of the reference CIFAR implementations
    m = nets.build(name, 10, 3)
    assert sum(p.numel() for p in m.parameters()) == params


def test_key_layouts_match_common_implementations():
    assert {"conv1.weight", "block1.layer.0.convShortcut.weight", "bn1.running_var", "fc.weight"} <= set(
        nets.build("wrn-16-2", 10).state_dict())
    assert {"layer2.0.shortcut.1.weight", "linear.weight", "bn1.weight"} <= set(nets.build("resnet18", 10).state_dict())
    assert {"layer2.0.shortcut.0.weight", "bn.weight", "linear.weight"} <= set(
        nets.build("preact-resnet18", 10).state_dict())
    jem = nets.build("jem-wrn-10-2", 10).state_dict()
    assert {"f.conv1.bias", "f.layer1.0.shortcut.0.weight", "f.linear.weight", "class_output.weight",
            "energy_output.weight"} <= set(jem)


def test_input_size_agnostic():
    for name, c in [("wrn-10-1", 3), ("resnet18", 3), ("preact-resnet18", 3), ("digits-cnn", 1)]:
        m = nets.build(name, 7, c).eval()
        for s in (8, 32):
            assert m(torch.rand(2, c, s, s)).shape == (2, 7)


def test_wrn_without_norm_has_no_batchnorm():
    m = nets.build("wrn-10-2", 10, norm="none")
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())


def test_unknown_arch():
    with pytest.raises(BenchError, match="unknown architecture 'vgg'"):
        nets.build("vgg", 10)
    with pytest.raises(BenchError, match="depth must be 6n"):
        nets.build("wrn-27-10", 10)
