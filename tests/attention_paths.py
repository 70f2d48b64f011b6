"""The three ways to the ID attention (pulid_core.attention.id_attention_prepared): torch's fused
attention (GPUs, fp16/bf16), the explicit path on torch's ops, and the same path in the compiled
CPU kernel (pulid_core.native). Tests of the kernel skip only where the machine has no C compiler
(or it is switched off); a kernel that does not build or disagrees with torch turns them red."""

from pulid_core import native

ATTENTION_PATHS = {
    "fused": {"fused": True},
    "explicit": {"fused": False, "native": False},
    "native": {"fused": False, "native": True},
}


def native_buildable() -> bool:
    return native.compiler() is not None and native.enabled()
