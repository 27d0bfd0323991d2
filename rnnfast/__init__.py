"""rnnfast: fused C++/CUDA recurrent kernels and gradient clipping for PyTorch, with the
d2l language-model workflow around them."""
__version__ = "0.1.0"
