"""PuLID checkpoint key layouts at any size (the real structure), for tests and stand-in files."""

# The 70 SDXL cross-attention layers: odd checkpoint indices 1..139 in diffusers order,
# 640 wide at indices 1-7 and 109-119, 1280 elsewhere (checkpoint_layouts.json).
PULID_LAYER_INDICES = tuple(range(1, 140, 2))


def sdxl_width(index: int) -> int:
    return 640 if index <= 7 or 109 <= index <= 119 else 1280


def _mlp(prefix: str, dims) -> dict:
    d_in, h1, h2, d_out = dims
    return {
        f"{prefix}.0.weight": (h1, d_in),
        f"{prefix}.0.bias": (h1,),
        f"{prefix}.1.weight": (h1,),
        f"{prefix}.1.bias": (h1,),
        f"{prefix}.3.weight": (h2, h1),
        f"{prefix}.3.bias": (h2,),
        f"{prefix}.4.weight": (h2,),
        f"{prefix}.4.bias": (h2,),
        f"{prefix}.6.weight": (d_out, h2),
        f"{prefix}.6.bias": (d_out,),
    }


def pulid_shapes(
    version="v1",
    *,
    id_dim=20,
    vit_dim=12,
    hidden=16,
    context_dim=24,
    num_id_token=5,
    num_queries=8,
    former_dim=16,
    former_inner=16,
    depth=10,
    layer_width=None,
) -> dict:
    """{official key: shape} of a PuLID adapter with the real structure and small sizes.

    ``layer_width(index)`` gives each cross-attention layer's width; default the SDXL width / 80.
    """
    layer_width = layer_width or (lambda k: sdxl_width(k) // 80)
    shapes = {}
    if version == "v1":
        shapes.update(_mlp("body", (id_dim, hidden, hidden, num_id_token * context_dim)))
        for i in range(5):
            shapes.update(_mlp(f"mapping_{i}", (vit_dim, hidden, hidden, context_dim)))
            shapes.update(_mlp(f"mapping_patch_{i}", (vit_dim, hidden, hidden, context_dim)))
    else:
        shapes["latents"] = (1, num_queries, former_dim)
        shapes["proj_out"] = (former_dim, context_dim)
        for n in range(depth):
            p = f"layers.{n}"
            for norm in ("norm1", "norm2"):
                shapes[f"{p}.0.{norm}.weight"] = shapes[f"{p}.0.{norm}.bias"] = (former_dim,)
            shapes[f"{p}.0.to_q.weight"] = (former_inner, former_dim)
            shapes[f"{p}.0.to_kv.weight"] = (2 * former_inner, former_dim)
            shapes[f"{p}.0.to_out.weight"] = (former_dim, former_inner)
            shapes[f"{p}.1.0.weight"] = shapes[f"{p}.1.0.bias"] = (former_dim,)
            shapes[f"{p}.1.1.weight"] = (4 * former_dim, former_dim)
            shapes[f"{p}.1.3.weight"] = (former_dim, 4 * former_dim)
        for i in range(5):
            shapes.update(_mlp(f"mapping_{i}", (vit_dim, hidden, hidden, former_dim)))
        shapes.update(_mlp("id_embedding_mapping", (id_dim, hidden, hidden, num_id_token * former_dim)))
    out = {f"id_adapter.{k}": s for k, s in shapes.items()}
    for k in PULID_LAYER_INDICES:
        for p in ("k", "v"):
            out[f"id_adapter_attn_layers.{k}.id_to_{p}.weight"] = (layer_width(k), context_dim)
    return out


def to_ipadapter_layout(state: dict) -> dict:
    """Official PuLID keys -> IPAdapter-format keys (id_adapter. -> image_proj., id_adapter_attn_layers. ->
    ip_adapter., as in huchenlei/ipadapter_pulid's conversion)."""
    out = {}
    for key, value in state.items():
        key = key.replace("id_adapter_attn_layers.", "ip_adapter.").replace("id_adapter.", "image_proj.")
        out[key.replace(".id_to_k.", ".to_k_ip.").replace(".id_to_v.", ".to_v_ip.")] = value
    return out
