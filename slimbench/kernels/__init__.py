"""Packed and factored module types and the kernels that compute with them.

``qlinear.QuantLinear``: packed int8/int4 codes + scales, computed by torch's CPU kernels or
the Triton kernels of ``triton_gemm`` (simulated path where no kernel fits);
``factored.FactoredLinear``: a linear as two low-rank factors; ``skipped``: the parameter-free
stand-ins of dropped sublayers.
"""

from slimbench.kernels.qlinear import QuantLinear, choose_layout

__all__ = ["QuantLinear", "choose_layout"]
