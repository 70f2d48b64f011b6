"""Lazy package attributes (PEP 562): a package names its public objects without importing the
torch-heavy submodules that define them (or optional dependencies such as insightface) until one
is used."""

from importlib import import_module


def lazy_getattr(package: str, exports: dict[str, str]):
    """A module-level ``__getattr__`` for ``package`` (pass its ``__name__``) that resolves each name
    in ``exports`` ({public name: submodule relative to the package, e.g. ``".adapter"``}).

    Relative to the package, so it works both as ``pulid_core`` (scripts, unit tests) and as
    ``<pack>.pulid_core`` (inside ComfyUI).
    """

    def __getattr__(name):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(module, package), name)

    return __getattr__
