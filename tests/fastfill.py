"""detfill's values computed faster, for full-size weights (the PhotoMaker and EVA-CLIP towers hold
hundreds of millions of values): detfill.values() allocates several full-size temporaries, so the same
splitmix64 stream is computed here in cache-sized chunks (checked bit for bit against detfill in
tests/unit/test_photomaker_encoder.py)."""

import zlib

import numpy as np
import torch

from tests import detfill

_M = [np.uint64(m) for m in (0x9E3779B97F4A7C15, 0xD1B54A32D192ED03, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)]


def values(key, n, chunk=1 << 16):
    """detfill.values(key, n)."""
    with np.errstate(over="ignore"):
        base = np.uint64(zlib.crc32(key.encode("utf-8"))) * _M[1]
        out = np.empty(n, np.float64)
        idx = np.arange(chunk, dtype=np.uint64)
        x = np.empty(chunk, np.uint64)
        t = np.empty(chunk, np.uint64)
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            xv, tv = x[:m], t[:m]
            np.multiply(idx[:m] + np.uint64(s), _M[0], out=xv)
            xv += base
            for shift, mult in ((30, _M[2]), (27, _M[3])):
                np.right_shift(xv, np.uint64(shift), out=tv)
                xv ^= tv
                xv *= mult
            np.right_shift(xv, np.uint64(31), out=tv)
            xv ^= tv
            xv >>= np.uint64(11)
            o = out[s : s + m]
            o[:] = xv
            o *= 2.0 / float(2**53)
            o -= 1.0
    return out


def fill(name, shape, salt):
    """detfill.tensor(name, shape, salt) as a torch tensor."""
    shape = tuple(int(s) for s in shape)
    n = int(np.prod(shape)) if shape else 1
    return torch.from_numpy(detfill.scale(name, values(salt + name, n).reshape(shape)))
