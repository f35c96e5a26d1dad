"""resbench: measure and tune where the weights of a diffusion pipeline live."""

__version__ = "0.1.0"
