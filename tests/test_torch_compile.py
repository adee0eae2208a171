"""torch.compile on the CPU (Inductor's C++ backend): one step compiles, runs and agrees."""

import numpy as np

from trainbench import data, model
from trainbench.backends.torch.backend import TorchBackend, TorchConfig
from trainbench.config import PRECISIONS, OptimConfig


def _losses(compile_: bool) -> list[float]:
    tiny = model.preset("tiny")
    backend = TorchBackend(TorchConfig(compile=compile_), tiny, PRECISIONS["fp32"], OptimConfig(),
                           total_steps=2)
    backend.setup(model.init_params(tiny, 0))
    source = data.SyntheticTokens(tiny.vocab, 2, 16, seed=0)
    return [backend.loss(backend.train_step(s, source.batch(s))) for s in range(2)]


def test_compiled_blocks_train_like_eager():
    # about 20 s on two cores (Inductor compiles C++ for each block), under the 30 s slow mark
    compiled = _losses(True)
    # float32; Inductor fuses and reorders reductions (norms, softmax), a few ulps per op
    np.testing.assert_allclose(compiled, _losses(False), rtol=1e-5)
