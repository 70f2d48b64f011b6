"""ComfyUI adapters: one module per node family; the math lives in pulid_core."""


def node_list() -> list:
    """Every node class this pack registers (only nodes that really work)."""
    return []
