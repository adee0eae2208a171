#!/usr/bin/env bash
# The compiled plans committed in this folder: each model at seq 8192, FSDP over every device
# of the slice, bf16 matmuls, splash attention, remat, scanned layers, at the largest batch
# that fits (the batch search). Run from the repository root with the tpu extra installed; no TPU is needed.
# Usage: benchmarks/tpu/plans.sh [MODEL...]   (default: llama32_1b llama3_8b llama3_70b)
set -u
# slice -> "libtpu topology, JAX devices in it"
TARGETS=(
  "v5e-256 v5e:16x16 256"
  "v5p-128 v5p:4x4x4 64"
  "v6e-256 v6e:16x16 256"
  "tpu7x-128 tpu7x:4x4x4 128"
)
for model in ${@:-llama32_1b llama3_8b llama3_70b}; do
  for target in "${TARGETS[@]}"; do
    read -r _ topology devices <<<"$target"
    trainbench compile "target=tpu:$topology" search=batch "model=$model" backend=jax \
      precision=bf16 backend.attention=splash backend.remat=true backend.scan_layers=true \
      backend.data_parallel=1 "backend.fsdp=$devices" train.seq_len=8192 "train.batch_size=$devices" \
      results_dir=benchmarks/tpu
  done
done
