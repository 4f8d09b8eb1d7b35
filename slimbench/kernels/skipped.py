"""Parameter-free stand-ins for removed sublayers (``dropped-modules``).

``SkippedAttention`` / ``SkippedMLP`` replace a dropped attention / MLP sublayer of a decoder
block: they compute nothing and return a scalar zero, so the block's residual add is ``h + 0``
(the attention stand-in also returns no attention weights). Layer dropping
(``slimbench.methods.layerdrop``) installs them; saved models name them in their module list.
"""

from __future__ import annotations

from torch import nn


class SkippedAttention(nn.Module):
    """A dropped attention sublayer: no parameters, no compute, no cache; adds zero."""

    def forward(self, *args, **kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        return hidden.new_zeros(()), None


class SkippedMLP(nn.Module):
    """A dropped MLP sublayer: no parameters, no compute; adds zero."""

    def forward(self, *args, **kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        return hidden.new_zeros(())
