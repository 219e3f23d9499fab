"""Expected tensor names and shapes of a Hugging Face `Blip2ForImageTextRetrieval`
checkpoint, written out independently of transformers from the layout documented in
shared/design/blip2-reference.md section 2 (hub safetensors layout).

Used by make_retrieval_fixtures.py and bench_torch_image_embedding.py to check that
what `save_pretrained` wrote is exactly the layout the Rust loader expects.
Not a script; import it from the other tools.
"""


def expected_retrieval_layout(cfg):
    """Return {tensor_name: shape_tuple} for a Blip2ForImageTextRetrieval checkpoint.

    `cfg` is a plain dict with keys:
      vision: hidden, layers, intermediate, image_size, patch_size
      qformer: hidden, layers, intermediate, cross_attention_frequency,
               max_position_embeddings, vocab_size
      num_query_tokens, image_text_hidden_size
    The vision qkv bias is the fused hub form `self_attn.qkv.bias` [3*hidden].
    """
    v = cfg["vision"]
    q = cfg["qformer"]
    hv, hq = v["hidden"], q["hidden"]
    tokens = (v["image_size"] // v["patch_size"]) ** 2 + 1
    out = {}

    # --- vision tower ---
    out["vision_model.embeddings.class_embedding"] = (1, 1, hv)
    out["vision_model.embeddings.position_embedding"] = (1, tokens, hv)
    out["vision_model.embeddings.patch_embedding.weight"] = (hv, 3, v["patch_size"], v["patch_size"])
    out["vision_model.embeddings.patch_embedding.bias"] = (hv,)
    for layer in range(v["layers"]):
        p = f"vision_model.encoder.layers.{layer}."
        for ln in ("layer_norm1", "layer_norm2"):
            out[p + ln + ".weight"] = (hv,)
            out[p + ln + ".bias"] = (hv,)
        out[p + "self_attn.qkv.weight"] = (3 * hv, hv)
        out[p + "self_attn.qkv.bias"] = (3 * hv,)
        out[p + "self_attn.projection.weight"] = (hv, hv)
        out[p + "self_attn.projection.bias"] = (hv,)
        out[p + "mlp.fc1.weight"] = (v["intermediate"], hv)
        out[p + "mlp.fc1.bias"] = (v["intermediate"],)
        out[p + "mlp.fc2.weight"] = (hv, v["intermediate"])
        out[p + "mlp.fc2.bias"] = (hv,)
    out["vision_model.post_layernorm.weight"] = (hv,)
    out["vision_model.post_layernorm.bias"] = (hv,)

    # --- Q-Former ---
    out["query_tokens"] = (1, cfg["num_query_tokens"], hq)
    out["qformer.layernorm.weight"] = (hq,)
    out["qformer.layernorm.bias"] = (hq,)

    def attention_block(prefix, kv_in):
        out[prefix + "attention.query.weight"] = (hq, hq)
        out[prefix + "attention.query.bias"] = (hq,)
        for kv in ("key", "value"):
            out[prefix + f"attention.{kv}.weight"] = (hq, kv_in)
            out[prefix + f"attention.{kv}.bias"] = (hq,)
        out[prefix + "output.dense.weight"] = (hq, hq)
        out[prefix + "output.dense.bias"] = (hq,)
        out[prefix + "output.LayerNorm.weight"] = (hq,)
        out[prefix + "output.LayerNorm.bias"] = (hq,)

    def ffn(inter_name, out_name, prefix):
        out[prefix + inter_name + ".dense.weight"] = (q["intermediate"], hq)
        out[prefix + inter_name + ".dense.bias"] = (q["intermediate"],)
        out[prefix + out_name + ".dense.weight"] = (hq, q["intermediate"])
        out[prefix + out_name + ".dense.bias"] = (hq,)
        out[prefix + out_name + ".LayerNorm.weight"] = (hq,)
        out[prefix + out_name + ".LayerNorm.bias"] = (hq,)

    for i in range(q["layers"]):
        p = f"qformer.encoder.layer.{i}."
        attention_block(p + "attention.", hq)
        if i % q["cross_attention_frequency"] == 0:
            attention_block(p + "crossattention.", hv)
        ffn("intermediate_query", "output_query", p)
        ffn("intermediate", "output", p)  # text FFN (use_qformer_text_input)

    # --- text embeddings and heads ---
    out["embeddings.word_embeddings.weight"] = (q["vocab_size"], hq)
    out["embeddings.position_embeddings.weight"] = (q["max_position_embeddings"], hq)
    d = cfg["image_text_hidden_size"]
    out["vision_projection.weight"] = (d, hq)
    out["vision_projection.bias"] = (d,)
    out["text_projection.weight"] = (d, hq)
    out["text_projection.bias"] = (d,)
    out["itm_head.weight"] = (2, hq)
    out["itm_head.bias"] = (2,)
    return out


def layout_from_hf_config(config):
    """Build the plain-dict description used above from a transformers Blip2Config."""
    v, q = config.vision_config, config.qformer_config
    return {
        "vision": {
            "hidden": v.hidden_size,
            "layers": v.num_hidden_layers,
            "intermediate": v.intermediate_size,
            "image_size": v.image_size,
            "patch_size": v.patch_size,
        },
        "qformer": {
            "hidden": q.hidden_size,
            "layers": q.num_hidden_layers,
            "intermediate": q.intermediate_size,
            "cross_attention_frequency": q.cross_attention_frequency,
            "max_position_embeddings": q.max_position_embeddings,
            "vocab_size": q.vocab_size,
        },
        "num_query_tokens": config.num_query_tokens,
        "image_text_hidden_size": config.image_text_hidden_size,
    }


def compare_layout(expected, actual):
    """Return a list of human-readable problems (empty when `actual` matches exactly).

    `actual` maps names to shapes (tuples or lists)."""
    problems = []
    for name in sorted(set(expected) - set(actual)):
        problems.append(f"missing: {name} {expected[name]}")
    for name in sorted(set(actual) - set(expected)):
        problems.append(f"unexpected: {name} {tuple(actual[name])}")
    for name in sorted(set(expected) & set(actual)):
        if tuple(actual[name]) != tuple(expected[name]):
            problems.append(f"shape mismatch: {name} expected {expected[name]} got {tuple(actual[name])}")
    return problems


def read_safetensors_layout(folder):
    """Return ({name: shape}, {name: dtype_string}, [files]) over a single-file or
    sharded safetensors checkpoint folder, reading only the headers."""
    import json
    import os
    import struct

    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    shapes, dtypes = {}, {}
    for fname in files:
        with open(os.path.join(folder, fname), "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if name in shapes:
                raise ValueError(f"{name} appears in more than one shard")
            shapes[name] = tuple(info["shape"])
            dtypes[name] = info["dtype"]
    return shapes, dtypes, files


# --------------------------------------------------------------------------- captioning


def expected_caption_layout(cfg, lm_head_stored):
    """Return {tensor_name: shape_tuple} for a Blip2ForConditionalGeneration (OPT) checkpoint
    (shared/design/blip2-reference.md sections 2.1, 2.2 and 2.4).

    `cfg` is the plain dict of `caption_layout_from_hf_config`: the retrieval keys for
    vision/qformer/num_query_tokens plus
      opt: hidden, layers, ffn, vocab_size, max_position_embeddings, word_embed_proj_dim
    Captioning checkpoints have no Q-Former text FFN (`intermediate`/`output`), no
    `embeddings.*`, no projections or ITM head. `language_model.lm_head.weight` is tied to
    `embed_tokens`; old hub shards store it (`lm_head_stored=True`), new ones do not.
    """
    import re

    # Reuse the vision / Q-Former part of the retrieval layout and drop what only the
    # retrieval model has.
    retrieval_cfg = dict(cfg)
    retrieval_cfg["qformer"] = dict(cfg["qformer"], vocab_size=1, max_position_embeddings=1)
    retrieval_cfg["image_text_hidden_size"] = 1
    text_ffn = re.compile(r"^qformer\.encoder\.layer\.\d+\.(intermediate|output)\.")
    out = {
        k: v
        for k, v in expected_retrieval_layout(retrieval_cfg).items()
        if not (
            k.startswith(("embeddings.", "vision_projection.", "text_projection.", "itm_head."))
            or text_ffn.match(k)
        )
    }

    o = cfg["opt"]
    h, d_word = o["hidden"], o["word_embed_proj_dim"]
    out["language_projection.weight"] = (h, cfg["qformer"]["hidden"])
    out["language_projection.bias"] = (h,)
    p = "language_model.model.decoder."
    out[p + "embed_tokens.weight"] = (o["vocab_size"], d_word)
    out[p + "embed_positions.weight"] = (o["max_position_embeddings"] + 2, h)  # OPT offset 2
    if d_word != h:
        out[p + "project_in.weight"] = (h, d_word)
        out[p + "project_out.weight"] = (d_word, h)
    for i in range(o["layers"]):
        lp = f"{p}layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out[lp + f"self_attn.{proj}.weight"] = (h, h)
            out[lp + f"self_attn.{proj}.bias"] = (h,)
        for ln in ("self_attn_layer_norm", "final_layer_norm"):
            out[lp + ln + ".weight"] = (h,)
            out[lp + ln + ".bias"] = (h,)
        out[lp + "fc1.weight"] = (o["ffn"], h)
        out[lp + "fc1.bias"] = (o["ffn"],)
        out[lp + "fc2.weight"] = (h, o["ffn"])
        out[lp + "fc2.bias"] = (h,)
    out[p + "final_layer_norm.weight"] = (h,)
    out[p + "final_layer_norm.bias"] = (h,)
    if lm_head_stored:
        out["language_model.lm_head.weight"] = (o["vocab_size"], d_word)
    return out


def caption_layout_from_hf_config(config):
    """Plain-dict description of a transformers Blip2Config with an OPT text_config."""
    base = layout_from_hf_config(config)
    t = config.text_config
    base["opt"] = {
        "hidden": t.hidden_size,
        "layers": t.num_hidden_layers,
        "ffn": t.ffn_dim,
        "vocab_size": t.vocab_size,
        "max_position_embeddings": t.max_position_embeddings,
        "word_embed_proj_dim": t.word_embed_proj_dim,
    }
    return base
