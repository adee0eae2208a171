"""The PyTorch backend: the shared model as an nn.Module, trained with torch.optim.AdamW, with each
op dispatched to PyTorch-native code or to trainbench's Triton kernels (trainbench.kernels.triton).
"""
