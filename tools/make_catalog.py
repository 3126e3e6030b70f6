"""Write bench/metrics/catalog.json from the live registry (after changing a metric's declaration;
tests/test_layers.py fails until it is written again)."""

from bench.metrics import catalog, registry

if __name__ == "__main__":
    print(catalog.write(registry.load_all(), registry.modules()))
