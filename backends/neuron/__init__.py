"""The Neuron backend: the PyTorch backend's model on AWS Trainium with NKI kernels swapped in."""
