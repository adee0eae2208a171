"""What the GPU compiler makes of the Triton kernels, checked on the CPU: Triton lowers a kernel
to its IR for an NVIDIA target (here Hopper, GPUTarget("cuda", 90, 32)) without any GPU.

  - float scalars: Inductor passes a Python float to a user Triton kernel as fp64
    (torch/_inductor/codegen/triton_utils.py). Compiled with every float argument typed fp64,
    a kernel may convert each one to f32 once and must do no other f64 arithmetic.
  - int64 element offsets (every kernel, flash attention included): every pointer into an activation-sized tensor (which may hold more
    than 2**31 elements) is first moved by a scalar int64 offset (tt.addptr %ptr, %base : i64)
    and never indexed directly by the int32 per-element offsets.
  - num_warps by row width (Liger-Kernel's rule) for RMSNorm and RoPE at the presets' widths.

The shapes are Llama 3 8B's (d_model 4096, 32 query and 8 key heads of 128, d_ff 14336). The IR
is made in a fresh process (`python tests/test_triton_ir.py`) without TRITON_INTERPRET, since
an interpreted kernel has no IR; the pytest process never imports triton.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# variant -> (float arguments typed fp64, pointers into tensors that may pass 2**31 elements)
EXPECT = {
    "rmsnorm_fwd": (("eps",), ("x_ptr", "y_ptr")),
    "rmsnorm_bwd": ((), ("dy_ptr", "x_ptr", "dx_ptr")),
    "rope_fwd": ((), ("q_ptr", "k_ptr", "qo_ptr", "ko_ptr")),
    "rope_bwd": ((), ("q_ptr", "k_ptr", "qo_ptr", "ko_ptr")),
    "swiglu_fwd": ((), ("a_ptr", "b_ptr", "out_ptr")),
    "swiglu_bwd": ((), ("dout_ptr", "a_ptr", "b_ptr", "da_ptr", "db_ptr")),
    "cross_entropy_rows": ((), ("logits_ptr",)),
    "attention_fwd": (("qk_scale",), ("q_ptr", "k_ptr", "v_ptr", "o_ptr", "lse_ptr")),
    "attention_bwd_delta": ((), ("o_ptr", "do_ptr", "delta_ptr")),
    "attention_bwd_dkdv": (("scale", "qk_scale"), ("q_ptr", "k_ptr", "v_ptr", "do_ptr",
                                                   "lse_ptr", "delta_ptr", "dk_ptr", "dv_ptr")),
    "attention_bwd_dq": (("scale", "qk_scale"), ("q_ptr", "k_ptr", "v_ptr", "do_ptr", "lse_ptr",
                                                 "delta_ptr", "dq_ptr")),
}


@pytest.fixture(scope="module")
def compiled() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).parent)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _body(ir: str) -> list[str]:
    """The IR's operation lines, without the function signature and location records."""
    return [line for line in ir.splitlines()
            if line.strip() and "tt.func" not in line and not line.startswith("#loc")]


@pytest.mark.parametrize("variant", EXPECT)
@pytest.mark.parametrize("stage", ["ttir", "ttgir"])
def test_float_arguments_are_converted_once_and_math_stays_fp32(compiled: dict, variant: str,
                                                                stage: str) -> None:
    floats, _ = EXPECT[variant]
    f64_ops = [line.strip() for line in _body(compiled["ir"][variant][stage]) if "f64" in line]
    conversions = [op for op in f64_ops
                   if re.search(r"arith\.truncf %(\w+) : f64 to f32", op)
                   and re.search(r"arith\.truncf %(\w+)", op).group(1) in floats]
    assert len(conversions) == len(floats) and len(f64_ops) == len(floats), (
        f"{variant} {stage}: expected only one f64->f32 conversion per float argument "
        f"{floats}; f64 operations: {f64_ops[:8]}")


@pytest.mark.parametrize("variant", EXPECT)
def test_activation_pointers_move_by_an_int64_base(compiled: dict, variant: str) -> None:
    _, pointers = EXPECT[variant]
    ttir = compiled["ir"][variant]["ttir"]
    for ptr in pointers:
        assert re.search(rf"tt\.addptr %{ptr}, %[\w.]+ : !tt\.ptr<\w+>, i64", ttir), (
            f"{variant}: {ptr} is never moved by an int64 offset; its element offsets are "
            "int32 and wrap past 2**31 elements")
        assert not re.search(rf"tt\.splat %{ptr} :", ttir), (
            f"{variant}: {ptr} is indexed directly by per-element offsets")


def test_warps_follow_the_row_width(compiled: dict) -> None:
    warps = compiled["warps"]
    # RMSNorm: row width d_model -> 4 below 2048 elements, 8 to 8191, 16 to 32767, then 32
    assert warps["rmsnorm"] == {"576": 4, "2048": 8, "4096": 8, "8192": 16, "16384": 16,
                                "32768": 32}
    # RoPE: a token's query row, Hq * D: Llama 3 8B 32 x 128, 70B 64 x 128, tiny 4 x 16
    assert warps["rope"] == {"32x128": 8, "64x128": 16, "4x16": 4}


# --- the compiler, run in the subprocess ----------------------------------------------------------

if __name__ == "__main__":
    import importlib

    from triton._C.libtriton import ir
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend

    rmsnorm = importlib.import_module("trainbench.kernels.triton.rmsnorm")
    rope = importlib.import_module("trainbench.kernels.triton.rope")
    swiglu = importlib.import_module("trainbench.kernels.triton.swiglu")
    cross_entropy = importlib.import_module("trainbench.kernels.triton.cross_entropy")
    attention = importlib.import_module("trainbench.kernels.triton.attention")

    TARGET = GPUTarget("cuda", 90, 32)

    def lower(kernel, signature: dict[str, str], constexprs: dict[str, object],
              num_warps: int) -> dict[str, str]:
        """TTIR and TTGIR of `kernel`, through the NVIDIA backend's own stages (as
        torch/_higher_order_ops/triton_kernel_wrap.py's generate_ttir does); no PTX."""
        sig = {name: signature.get(name, "constexpr") for name in kernel.arg_names}
        src = ASTSource(kernel, sig, constexprs=constexprs)
        backend = make_backend(TARGET)
        options = backend.parse_options({"num_warps": num_warps})
        stages: dict = {}
        backend.add_stages(stages, options, src.language)
        context = ir.context()
        ir.load_dialects(context)
        backend.load_dialects(context)
        module = src.make_ir(TARGET, options, backend.get_codegen_implementation(options),
                             backend.get_module_map(), context)
        metadata = {"hash": "ir-check", "target": TARGET, **options.__dict__}
        ttir = stages["ttir"](module, metadata)
        out = {"ttir": str(ttir)}
        out["ttgir"] = str(stages["ttgir"](ttir, metadata))
        return out

    def split(cfg: dict[str, int]) -> tuple[dict[str, int], int]:
        cfg = dict(cfg)
        return cfg, cfg.pop("num_warps")

    d_model, Hq, Hk, D, d_ff = 4096, 32, 8, 128, 14336
    bf16, f32, i32 = "*bf16", "*fp32", "i32"
    variants = {}
    norm, norm_warps = split(rmsnorm.launch_config(d_model))
    variants["rmsnorm_fwd"] = lower(
        rmsnorm._rmsnorm_fwd, {"x_ptr": bf16, "w_ptr": f32, "y_ptr": bf16, "rstd_ptr": f32,
                               "M": i32, "D": i32, "eps": "fp64"}, norm, norm_warps)
    variants["rmsnorm_bwd"] = lower(
        rmsnorm._rmsnorm_bwd, {"dy_ptr": bf16, "x_ptr": bf16, "w_ptr": f32, "rstd_ptr": f32,
                               "dx_ptr": bf16, "dw_part_ptr": f32, "M": i32, "D": i32},
        norm, norm_warps)
    rot, rot_warps = split(rope.launch_config(Hq, Hk, D))
    rope_sig = {"q_ptr": bf16, "k_ptr": bf16, "cos_ptr": f32, "sin_ptr": f32, "qo_ptr": bf16,
                "ko_ptr": bf16, "T": i32, "Hq": i32, "Hk": i32, "D": i32}
    for name, backward in (("rope_fwd", False), ("rope_bwd", True)):
        variants[name] = lower(rope._rope, rope_sig, {**rot, "BACKWARD": backward}, rot_warps)
    block = {"BLOCK": swiglu._BLOCK}
    variants["swiglu_fwd"] = lower(swiglu._swiglu_fwd, {"a_ptr": bf16, "b_ptr": bf16,
                                                        "out_ptr": bf16, "n": "i64"}, block, 4)
    variants["swiglu_bwd"] = lower(swiglu._swiglu_bwd, {
        "dout_ptr": bf16, "a_ptr": bf16, "b_ptr": bf16, "da_ptr": bf16, "db_ptr": bf16,
        "n": "i64"}, block, 4)
    variants["cross_entropy_rows"] = lower(
        cross_entropy._ce_rows, {"logits_ptr": bf16, "targets_ptr": "*i64", "loss_ptr": f32,
                                 "inv_n_ptr": f32, "V": i32, "stride_row": i32,
                                 "ignore_index": i32},
        {"WRITE_GRAD": True, "BLOCK_V": cross_entropy._BLOCK_V}, 4)
    # flash attention at its default (first autotune) tiles, bf16, causal, head dim 128
    strides = {name: i32 for name in ("s_qb", "s_qt", "s_qh", "s_kb", "s_kt", "s_kh")}
    meta = {"CAUSAL": True, "HEAD_DIM": D, "PRECISION": "tf32", "UPCAST": False}
    for name, kernel, args in (
            ("attention_fwd", "fwd", {"q_ptr": bf16, "k_ptr": bf16, "v_ptr": bf16, "o_ptr": bf16,
                                      "lse_ptr": f32, "T": i32, "Hq": i32, "GROUP": i32,
                                      "qk_scale": "fp64"}),
            ("attention_bwd_dkdv", "dkdv", {
                "q_ptr": bf16, "k_ptr": bf16, "v_ptr": bf16, "do_ptr": bf16, "lse_ptr": f32,
                "delta_ptr": f32, "dk_ptr": bf16, "dv_ptr": bf16, "T": i32, "Hq": i32,
                "Hkv": i32, "GROUP": i32, "scale": "fp64", "qk_scale": "fp64"}),
            ("attention_bwd_dq", "dq", {
                "q_ptr": bf16, "k_ptr": bf16, "v_ptr": bf16, "do_ptr": bf16, "lse_ptr": f32,
                "delta_ptr": f32, "dq_ptr": bf16, "T": i32, "Hq": i32, "GROUP": i32,
                "scale": "fp64", "qk_scale": "fp64"})):
        tile = attention.candidates(kernel, 2, D)[0]
        variants[name] = lower(attention._KERNELS[kernel], {**args, **strides},
                               {**meta, **tile.kwargs}, tile.num_warps)
    variants["attention_bwd_delta"] = lower(
        attention._attn_bwd_delta, {"o_ptr": bf16, "do_ptr": bf16, "delta_ptr": f32, "T": i32,
                                    "Hq": i32, "s_qb": i32, "s_qt": i32, "s_qh": i32},
        {"BLOCK_M": 64, "HEAD_DIM": D}, 4)
    warps = {"rmsnorm": {str(d): rmsnorm.launch_config(d)["num_warps"]
                         for d in (576, 2048, 4096, 8192, 16384, 32768)},
             "rope": {f"{h}x{hd}": rope.launch_config(h, 8, hd)["num_warps"]
                      for h, hd in ((32, 128), (64, 128), (4, 16))}}
    print(json.dumps({"ir": variants, "warps": warps}))
