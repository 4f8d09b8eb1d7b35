"""Packed weight formats and the kernels that compute with them (see ``qlinear``)."""

from slimbench.kernels.qlinear import QuantLinear, choose_layout

__all__ = ["QuantLinear", "choose_layout"]
