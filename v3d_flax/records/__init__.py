"""Model records: one module per family, each calling `v3d_flax.registry.register_model` once per model.

The registry imports every module of this package on first use. Records are plain Python (no JAX).
"""
