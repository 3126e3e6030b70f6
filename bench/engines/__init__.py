"""Layer 4, engines: the computations the metric groups call, on tensors (attacks, AutoAttack's
adapter, SGLD sampling and the generated set, Taylor-mode traces, feature extractors, reference
statistics, sample quality, the SSIM kernel, figures).  Imports core, runtime and inputs."""
