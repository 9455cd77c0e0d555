"""rnncu: recurrent neural networks, GPU-first (CuPy + hand-written CUDA kernels), with a
NumPy backend that shares one interface."""

from rnncu.backend import (
    BackendUnavailableError,
    available_backends,
    get_backend,
    set_backend,
)
from rnncu.linear import Linear
from rnncu.module import Module
from rnncu.rnn import RNN

__version__ = "0.1.0"

__all__ = [
    "RNN",
    "BackendUnavailableError",
    "Linear",
    "Module",
    "available_backends",
    "get_backend",
    "set_backend",
    "__version__",
]
