import os

import pytest
import torch

from bench import data, nets
from bench.energy import EnergyModel

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def digits():
    return data.load("digits")


def tiny_model(num_classes=10, in_channels=1, shape=(1, 8, 8), act="silu", seed=0, width=4):
    torch.manual_seed(seed)
    net = nets.build("digits-cnn", num_classes, in_channels, width=width, act=act)
    return EnergyModel(net, 0.5, 0.5, shape, num_classes).eval()


@pytest.fixture
def model():
    return tiny_model()
