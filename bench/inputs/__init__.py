"""Layer 3, inputs: what is evaluated, the data sets (``data``, ``ood_data``, the one image-folder
reader ``images``), checkpoints, the released zoo and the architectures (``nets``).  Imports core and runtime."""
