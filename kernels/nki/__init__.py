"""trainbench's NKI training kernels for AWS Trainium, and the means to run them without one.

    rmsnorm.py        RMSNorm forward / backward
    swiglu.py         silu(a) * b forward / backward
    cross_entropy.py  softmax cross-entropy over the vocabulary, online log-sum-exp
    attention.py      causal flash attention with grouped-query heads, forward / backward
    autograd.py       the kernels as PyTorch custom operators (torch_neuronx.nki_op) with
                      register_autograd, with the PyTorch backend's op signatures
    emulator/         NumPy emulation of the NKI API the kernels use, held to api.yaml
    api.yaml          the documented NKI API (NKI 0.6.0 / Neuron 2.32) transcribed as data
    subset.py         the source check of the NKI Python subset
    _tiles.py         tiling, LNC sharding and SBUF/PSUM idioms shared by the kernels
    _api.py           gives the kernels the official `nki` modules (a PyPI placeholder `nki`
                      is refused), else the emulator's

Which path runs where: on the CPU here (and in CI) the kernels run in the emulator; where the
Neuron packages are installed (`nki` from AWS's package index) the same source runs in
`nki.simulate`; on a Trainium NeuronCore it is compiled by `nki.jit`. Importing this package
imports neither torch nor the Neuron packages.
"""
