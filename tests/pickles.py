"""A pickle that runs code when loaded, written the ways a checkpoint can be, for the loaders' refusal tests."""

import os
import pickle

import torch

WRITERS = ("torch.save", "torch.save legacy", "pickle.dump")


class RunsCode:
    """Unpickling this calls ``os.system`` to create ``marker``: the test checks it never appears."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write(path, payload, writer: str) -> None:
    """Save ``payload`` with one of WRITERS (torch's zip format, its legacy format, a bare pickle)."""
    if writer == "torch.save":
        torch.save(payload, path)
    elif writer == "torch.save legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    elif writer == "pickle.dump":
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    else:
        raise ValueError(writer)
