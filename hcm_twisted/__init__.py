"""hcm-twisted: an open Hybrid Connection Manager on Twisted."""

__version__ = "0.1.0"
