"""The ops with a NumPy reference and a CUDA kernel of our own, one module per op family."""
