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


def _cast(t, like):
    if t is None:
        return None
    return t.to(device=like.device, dtype=like.dtype, non_blocking=True)


class Linear(nn.Linear):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("device", "meta")
        super().__init__(*args, **kwargs)

    def reset_parameters(self):
        # Weights always come from a state dict; skip the random init.
        return None

    def forward(self, x):
        return F.linear(x, _cast(self.weight, x), _cast(self.bias, x))


class LayerNorm(nn.LayerNorm):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("device", "meta")
        super().__init__(*args, **kwargs)

    def reset_parameters(self):
        return None

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, _cast(self.weight, x), _cast(self.bias, x), self.eps)


class Conv2d(nn.Conv2d):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("device", "meta")
        super().__init__(*args, **kwargs)

    def reset_parameters(self):
        return None

    def forward(self, x):
        return self._conv_forward(x, _cast(self.weight, x), _cast(self.bias, x))


def cast_parameter(p: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A raw nn.Parameter (latents, proj_out, class embeddings) in the input's dtype/device."""
    return _cast(p, like)
