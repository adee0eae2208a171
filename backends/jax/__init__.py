"""The JAX/XLA backend: the shared model in Flax Linen, Optax AdamW, one jit-compiled step over a
(data, fsdp) device mesh; runs on TPUs, GPUs and CPUs through XLA."""
