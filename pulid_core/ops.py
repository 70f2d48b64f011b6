"""Layers that keep their weights in the file's dtype and cast them at call time.

A PuLID adapter stored in fp16 must run its encoder in fp32 (as the authors do)
and its K/V projections in whatever dtype the UNet uses, without keeping a second
copy of the weights. These layers cast weight and bias to the input's dtype and
device on every forward. ComfyUI's ``comfy.ops.manual_cast`` has the same
interface, so models built here accept it as ``operations=`` inside ComfyUI.
"""

import torch
import torch.nn.functional as F
from torch import nn


def cast_parameter(p: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """A weight or raw nn.Parameter (latents, proj_out, class embeddings) in the input's dtype/device."""
    if p is None:
        return None
    return p.to(device=like.device, dtype=like.dtype, non_blocking=True)


class CastWeights:
    """Mixin for torch layers: built on the meta device (weights always come from a state
    dict, loaded with ``assign=True``), no random init, weight and bias cast to the input."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("device", "meta")
        super().__init__(*args, **kwargs)

    def reset_parameters(self):
        return None

    def cast_weights(self, x: torch.Tensor):
        return cast_parameter(self.weight, x), cast_parameter(self.bias, x)


class Linear(CastWeights, nn.Linear):
    def forward(self, x):
        return F.linear(x, *self.cast_weights(x))


class LayerNorm(CastWeights, nn.LayerNorm):
    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, *self.cast_weights(x), self.eps)


class Conv2d(CastWeights, nn.Conv2d):
    def forward(self, x):
        return self._conv_forward(x, *self.cast_weights(x))
