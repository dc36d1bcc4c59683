"""reslab: a depth-scaling benchmark suite for residual networks (He et al. 2015, 2016)."""

__version__ = "0.1.0"
