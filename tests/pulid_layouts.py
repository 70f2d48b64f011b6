"""PuLID, PuLID-FLUX and PhotoMaker checkpoint key layouts at any size (the real structure), for tests and stand-in files."""

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


# --- PuLID-FLUX (pulid_flux_v0.9.x.safetensors) -----------------------------------------------------

FLUX_CA_COUNT = 20  # after double blocks 0, 2, ..., 18 and single blocks 0, 4, ..., 36
# The released file's encoder: the v1.1 IDFormer at full size.
FLUX_ENCODER_SIZES = dict(
    id_dim=1280, vit_dim=1024, hidden=1024, context_dim=2048, num_id_token=5, num_queries=32,
    former_dim=1024, former_inner=1024, depth=10,
)


def flux_shapes(*, ca_dim=3072, ca_inner=2048, num_ca=FLUX_CA_COUNT, **encoder_sizes) -> dict:
    """{key: shape} of a PuLID-FLUX file: ``pulid_encoder.*`` (IDFormer, sizes as for
    ``pulid_shapes("v1.1", ...)``, default the released ones) and ``pulid_ca.{i}.*``.

    ``ca_dim``: the FLUX image-stream width (3072); ``ca_inner``: the CA's q/k/v width
    (heads x 128); the CA's ID-token width is the encoder's ``context_dim``.
    """
    sizes = {**FLUX_ENCODER_SIZES, **encoder_sizes}
    kv_dim = sizes["context_dim"]
    shapes = {
        "pulid_encoder." + k[len("id_adapter.") :]: s
        for k, s in pulid_shapes("v1.1", **sizes).items()
        if k.startswith("id_adapter.")
    }
    for i in range(num_ca):
        p = f"pulid_ca.{i}"
        shapes[f"{p}.norm1.weight"] = shapes[f"{p}.norm1.bias"] = (kv_dim,)
        shapes[f"{p}.norm2.weight"] = shapes[f"{p}.norm2.bias"] = (ca_dim,)
        shapes[f"{p}.to_q.weight"] = (ca_inner, ca_dim)
        shapes[f"{p}.to_kv.weight"] = (2 * ca_inner, kv_dim)
        shapes[f"{p}.to_out.weight"] = (ca_dim, ca_inner)
    return shapes


def tiny_flux_sizes() -> dict:
    """A small PuLID-FLUX adapter for a FLUX of width 128 (the golden tiny FLUX): CA 128 wide,
    two 128-wide heads, ID tokens 2048 wide as released, and a narrow IDFormer."""
    return dict(ca_dim=128, ca_inner=256, id_dim=20, vit_dim=12, hidden=16, num_id_token=5,
                num_queries=32, former_dim=16, former_inner=16, depth=10, context_dim=2048)


def flux_state_dict(*, dtype=None, salt="tiny:", rename=None, **sizes) -> dict:
    """A PuLID-FLUX state dict of ``flux_shapes(**sizes)``, every tensor filled by detfill from
    its name (``rename(key)`` gives the name to fill from, default the key itself).

    ``salt=None`` gives zeros that share one element of storage (stride 0): a full-size file's
    structure for loaders at no memory cost.
    """
    import torch

    dtype = dtype or torch.float32
    shapes = flux_shapes(**sizes)
    if salt is None:
        zero = torch.zeros((), dtype=dtype)
        return {k: zero.expand(s) for k, s in shapes.items()}
    detfill = _detfill()
    rename = rename or (lambda k: k)
    return {k: torch.from_numpy(detfill.tensor(rename(k), s, salt)).to(dtype) for k, s in shapes.items()}


def _detfill():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("pulid_detfill", Path(__file__).with_name("detfill.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def photomaker_shapes(
    version: str,
    *,
    hidden=1024,
    depth=24,
    mlp=4096,
    patch=14,
    grid=16,
    proj=(768, 1280),
    id_dim=512,
    id_inner=None,
    tokens=2,
    q_depth=4,
    q_inner=2048,
) -> dict:
    """{key: shape} of a PhotoMaker id_encoder with the official key names (TencentARC/PhotoMaker
    ``photomaker/model.py``, ``model_v2.py``) and these sizes; the defaults are the released files'.
    ``id_inner`` (the QFormer's token projection) defaults to 4 * id_dim."""
    id_inner = 4 * id_dim if id_inner is None else id_inner
    h, d = hidden, sum(proj)
    shapes = {
        "vision_model.embeddings.class_embedding": (h,),
        "vision_model.embeddings.patch_embedding.weight": (h, 3, patch, patch),
        "vision_model.embeddings.position_embedding.weight": (grid * grid + 1, h),
        "vision_model.pre_layrnorm.weight": (h,),
        "vision_model.pre_layrnorm.bias": (h,),
        "vision_model.post_layernorm.weight": (h,),
        "vision_model.post_layernorm.bias": (h,),
        "visual_projection.weight": (proj[0], h),
        "visual_projection_2.weight": (proj[1], h),
    }
    for i in range(depth):
        p = f"vision_model.encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[p + f"self_attn.{name}.weight"] = (h, h)
            shapes[p + f"self_attn.{name}.bias"] = (h,)
        for name in ("layer_norm1", "layer_norm2"):
            shapes[p + f"{name}.weight"] = (h,)
            shapes[p + f"{name}.bias"] = (h,)
        shapes.update(
            {
                p + "mlp.fc1.weight": (mlp, h),
                p + "mlp.fc1.bias": (mlp,),
                p + "mlp.fc2.weight": (h, mlp),
                p + "mlp.fc2.bias": (h,),
            }
        )
    for mlp_name, d_in in (("mlp1", 2 * d), ("mlp2", d)):
        p = f"fuse_module.{mlp_name}."
        shapes.update(
            {
                p + "layernorm.weight": (d_in,),
                p + "layernorm.bias": (d_in,),
                p + "fc1.weight": (d, d_in),
                p + "fc1.bias": (d,),
                p + "fc2.weight": (d, d),
                p + "fc2.bias": (d,),
            }
        )
    shapes.update({"fuse_module.layer_norm.weight": (d,), "fuse_module.layer_norm.bias": (d,)})
    if version == "v2":
        q, r = "qformer_perceiver.", "qformer_perceiver.perceiver_resampler."
        shapes.update(
            {
                q + "token_proj.0.weight": (id_inner, id_dim),
                q + "token_proj.0.bias": (id_inner,),
                q + "token_proj.2.weight": (d * tokens, id_inner),
                q + "token_proj.2.bias": (d * tokens,),
                q + "token_norm.weight": (d,),
                q + "token_norm.bias": (d,),
                r + "proj_in.weight": (d, h),
                r + "proj_in.bias": (d,),
                r + "proj_out.weight": (d, d),
                r + "proj_out.bias": (d,),
                r + "norm_out.weight": (d,),
                r + "norm_out.bias": (d,),
            }
        )
        for j in range(q_depth):
            p = f"{r}layers.{j}."
            shapes.update(
                {
                    p + "0.norm1.weight": (d,),
                    p + "0.norm1.bias": (d,),
                    p + "0.norm2.weight": (d,),
                    p + "0.norm2.bias": (d,),
                    p + "0.to_q.weight": (q_inner, d),
                    p + "0.to_kv.weight": (2 * q_inner, d),
                    p + "0.to_out.weight": (d, q_inner),
                    p + "1.0.weight": (d,),
                    p + "1.0.bias": (d,),
                    p + "1.1.weight": (4 * d, d),
                    p + "1.3.weight": (d, 4 * d),
                }
            )
    return shapes


def official_encoder_state(layout: dict, fill) -> dict:
    """A released PuLID SDXL layout (key -> shape) with its encoder filled by official key
    (``fill(key, shape)``) and the 140 ID K/V layers only 8 wide: enough for the loader's structure
    checks, and the encoder does not use them."""
    state = {k: fill(k, s) for k, s in layout.items() if k.startswith("id_adapter.")}
    for k, s in layout.items():
        if k.startswith("id_adapter_attn_layers."):
            state[k] = fill(k, (8, s[1]))
    return state
