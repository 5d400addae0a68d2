"""Model records: one module per family, holding everything framework-free about it.

Each module has the family's architecture tables and rules (stage widths, block tables, shape
arithmetic), which both `v3d_flax.models.<family>` and `v3d_torch_ref.models.<family>` build from,
and calls `v3d_flax.registry.register_model` once per model. The registry imports every module of
this package on first use. Records are plain Python: no numpy, JAX or torch.
"""
