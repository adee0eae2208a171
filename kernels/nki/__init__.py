"""trainbench's NKI training kernels for AWS Trainium, and the means to run them without one.

    rmsnorm.py        RMSNorm forward / backward
    swiglu.py         silu(a) * b forward / backward
    cross_entropy.py  softmax cross-entropy over the vocabulary, online log-sum-exp
    attention.py      causal flash attention with grouped-query heads, forward / backward
    autograd.py       torch.autograd.Function wrappers with the PyTorch backend's op signatures
    emulator/         NumPy emulation of the NKI subset the kernels use, with the tile rules
    _api.py           gives the kernels the official `nki` modules, else the emulator's

Which path runs where: on the CPU here (and in CI) the kernels run in the emulator; where the
Neuron packages are installed (`nki` from AWS's package index) the same source runs in
`nki.simulate`; on a Trainium NeuronCore it is compiled by `nki.jit`. Importing this package
imports neither torch nor the Neuron packages.
"""
