#!/usr/bin/env bash
# The compiled FSDP x tensor-parallel plans committed in this folder (issue 13): llama3_70b on
# v5p-128 with the batch search, and the smallest slices llama31_405b fits on, beside the next
# smaller ones it does not fit on. Seq 8192, bf16, splash attention, remat, scanned layers.
# Run from the repository root with the tpu extra installed; no TPU is needed.
set -u
plan() {  # topology fsdp tp model [extra overrides...]
  local topology=$1 fsdp=$2 tp=$3 model=$4
  shift 4
  trainbench compile "target=tpu:$topology" "model=$model" backend=jax precision=bf16 \
    backend.attention=splash backend.remat=true backend.scan_layers=true \
    backend.data_parallel=1 "backend.fsdp=$fsdp" "backend.tensor_parallel=$tp" \
    train.seq_len=8192 "train.batch_size=$fsdp" results_dir=benchmarks/tpu "$@"
}
plan v5p:4x4x4 16 4 llama3_70b search=batch
plan v6e:16x16 64 4 llama3_70b search=batch   # FSDP alone does not fit v6e-256
plan tpu7x:4x4x4 16 8 llama31_405b   # 64 chips (128 TensorCores): fits
plan tpu7x:2x4x4 8 8 llama31_405b    # 32 chips: does not
plan v5p:4x4x8 16 8 llama31_405b     # 128 chips: fits
plan v5p:4x4x4 8 8 llama31_405b      # 64 chips: does not
