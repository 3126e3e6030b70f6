"""Layer 2, runtime: how a computation runs (``Execution``: device, batch size, progress, shards),
torchrun sharding (``distributed``), the GPU fast paths and the model's runtime checks.  Imports core."""
