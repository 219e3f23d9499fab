"""Generate small random-weight BLIP-2 retrieval checkpoints and PyTorch reference outputs.

Why this exists
---------------
quarry re-implements BLIP-2 image-text retrieval (Blip2ForImageTextRetrieval: ViT ->
Q-Former -> ITC / ITM) in Rust. The real checkpoint is 4.7 GB, far too big for tests, so
this script builds tiny models with the same architecture and the same on-disk layout as
a Hugging Face hub download, fills them with random but well-conditioned weights, and
records what Hugging Face `transformers` (PyTorch, float32) computes for them. The Rust
tests load the folders and compare their outputs against `reference.safetensors`.

Torch and transformers are development-only tools: the generated files are committed and
CI never runs this script.

How to run
----------
    .venv/bin/python tools/make_retrieval_fixtures.py

(or any venv with torch + "transformers>=4.57,<5" + pillow + numpy + safetensors; see
tools/README.md). It is deterministic (fixed seeds, single thread) and rewrites
everything under fixtures/retrieval/:

    images/                        synthetic PNG/JPEG inputs shared by all configs
    small_a/                       single model.safetensors, explicit vision layer_norm_eps
    small_b/                       sharded checkpoint, vision layer_norm_eps omitted from
                                   config.json (loader default 1e-6), old config spelling
                                   "qformer_text_input"
    small_a_lavis_bias/            small_a's weights with LAVIS-style q_bias / v_bias
                                   instead of the fused qkv.bias (reuse small_a's reference)
    <name>/reference.safetensors   reference tensors (f32; token ids/masks as i64)
    <name>/reference.json          texts, unpadded ids, image order, metadata

Options: --out DIR (default: <repo>/fixtures/retrieval), --shared-tokenizer DIR.
"""

import argparse
import json
import math
import os
import shutil
import sys

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import transformers
from transformers import (
    BertTokenizerFast,
    Blip2Config,
    Blip2ForImageTextRetrieval,
    BlipImageProcessor,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from blip2_hub_layout import (  # noqa: E402
    compare_layout,
    expected_retrieval_layout,
    layout_from_hf_config,
    read_safetensors_layout,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO_ROOT, "fixtures", "retrieval")
# The shared data folder sits beside the checkout (../shared), read-only.
DEFAULT_TOKENIZER = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "shared", "data", "tokenizers", "bert-base-uncased-blip2")

MAX_TEXT_LEN = 35  # LAVIS retrieval evaluation setting
VOCAB_SIZE = 30523  # bert-base-uncased + "[DEC]"

CONFIGS = {
    "small_a": {
        "seed": 1001,
        "vision": dict(
            image_size=56,
            patch_size=14,
            hidden_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=96,
            layer_norm_eps=1e-6,
        ),
        "qformer": dict(
            vocab_size=VOCAB_SIZE,
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=64,
            cross_attention_frequency=2,
            max_position_embeddings=64,
            use_qformer_text_input=True,
        ),
        "num_query_tokens": 8,
        "image_text_hidden_size": 16,
        "sharded": False,
        "omit_vision_eps": False,
        "old_text_input_spelling": False,
    },
    "small_b": {
        "seed": 2002,
        "vision": dict(
            image_size=42,
            patch_size=14,
            hidden_size=40,
            num_hidden_layers=3,
            num_attention_heads=5,
            intermediate_size=72,
            # layer_norm_eps deliberately not given: the class default (1e-6) is used and
            # the key is removed from config.json after saving.
        ),
        "qformer": dict(
            vocab_size=VOCAB_SIZE,
            hidden_size=24,
            num_hidden_layers=3,
            num_attention_heads=3,
            intermediate_size=48,
            cross_attention_frequency=1,
            max_position_embeddings=64,
            use_qformer_text_input=True,
        ),
        "num_query_tokens": 6,
        "image_text_hidden_size": 12,
        "sharded": True,
        "omit_vision_eps": True,
        "old_text_input_spelling": True,
    },
}

TEXTS = [
    "a large fountain spewing water into the air",
    "Two CATS laying on a pink blanket!!",
    "A woman and her dog sitting in a beach.",
    "café crème, naïve façade — 東京 🚀 emoji",
    "  extra   spaces\tand\nnewlines  ",
    (
        "this is a deliberately long caption that keeps going well past the thirty five "
        "token limit used by the lavis retrieval evaluation so that the tokenizer has to "
        "truncate it on the right and put the separator token at the very end of the "
        "sequence, which the rust tokenizer wrapper must reproduce exactly, including the "
        "attention mask that stays at one for every single position of the padded row "
        "because nothing is padded at all in this case"
    ),
    "two cats laying on a pink blanket",
    "dog",
]

EXACT_PER_CONFIG = 3
RESIZED_IMAGES = ["large_rgb.png", "small_rgb.png", "alpha.png", "photo.jpg"]


# --------------------------------------------------------------------------- images


def _synthetic_rgb(rng, width, height):
    """A deterministic 'scene': smooth gradients + a few filled shapes + mild noise."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    u, v = xs / max(width - 1, 1), ys / max(height - 1, 1)
    base = np.zeros((height, width, 3))
    for c in range(3):
        a, b, ph = rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(0, 2 * math.pi)
        freq = rng.uniform(1.0, 3.0)
        base[..., c] = 128 + 70 * (a * u + b * v) + 40 * np.sin(2 * math.pi * freq * (u + v) + ph)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, x1 = sorted(rng.integers(0, width, size=2))
        y0, y1 = sorted(rng.integers(0, height, size=2))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        if rng.random() < 0.5:
            draw.ellipse([x0, y0, x1 + 1, y1 + 1], fill=colour)
        else:
            draw.rectangle([x0, y0, x1, y1], fill=colour)
    arr = np.asarray(img).astype(np.int16)
    arr = arr + rng.integers(-6, 7, size=arr.shape)
    return np.clip(arr, 0, 255).astype(np.uint8)


def write_images(images_dir):
    os.makedirs(images_dir, exist_ok=True)
    rng = np.random.default_rng(20240601)
    written = {}
    for name, spec in CONFIGS.items():
        s = spec["vision"]["image_size"]
        for k in range(EXACT_PER_CONFIG):
            fname = f"{name}_exact_{k}.png"
            Image.fromarray(_synthetic_rgb(rng, s, s), "RGB").save(os.path.join(images_dir, fname), optimize=True)
            written[fname] = (s, s)

    Image.fromarray(_synthetic_rgb(rng, 317, 229), "RGB").save(os.path.join(images_dir, "large_rgb.png"), optimize=True)
    Image.fromarray(_synthetic_rgb(rng, 31, 23), "RGB").save(os.path.join(images_dir, "small_rgb.png"), optimize=True)

    rgb = _synthetic_rgb(rng, 120, 90)
    ys, xs = np.mgrid[0:90, 0:120]
    alpha = (255 * (0.15 + 0.85 * (xs / 119.0) * (0.5 + 0.5 * np.cos(ys / 9.0)))).clip(0, 255)
    alpha[10:30, 10:40] = 0  # fully transparent patch: its RGB must still be used (alpha dropped)
    rgba = np.dstack([rgb, alpha.astype(np.uint8)])
    Image.fromarray(rgba, "RGBA").save(os.path.join(images_dir, "alpha.png"), optimize=True)

    Image.fromarray(_synthetic_rgb(rng, 640, 480), "RGB").save(
        os.path.join(images_dir, "photo.jpg"), quality=90
    )
    written.update({"large_rgb.png": (317, 229), "small_rgb.png": (31, 23), "alpha.png": (120, 90), "photo.jpg": (640, 480)})
    return written


# --------------------------------------------------------------------------- weights


@torch.no_grad()
def init_well_conditioned(model, seed):
    """Overwrite every parameter with seeded values that keep activations O(1)."""
    gen = torch.Generator().manual_seed(seed)

    def normal_(t, std, mean=0.0):
        t.copy_(torch.randn(t.shape, generator=gen, dtype=torch.float32) * std + mean)

    seen = set()
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            fan_in = module.weight[0].numel()
            normal_(module.weight, fan_in**-0.5)
            seen.add(id(module.weight))
            if module.bias is not None:
                normal_(module.bias, 0.1)
                seen.add(id(module.bias))
                if name.startswith("vision_model.") and name.endswith("self_attn.qkv"):
                    # The real model has no key bias: the middle third of the fused
                    # bias is exactly zero (cat(q_bias, zeros, v_bias)).
                    h = module.weight.shape[1]
                    module.bias[h : 2 * h] = 0.0
        elif isinstance(module, torch.nn.LayerNorm):
            normal_(module.weight, 0.1, mean=1.0)
            normal_(module.bias, 0.1)
            seen.update({id(module.weight), id(module.bias)})
        elif isinstance(module, torch.nn.Embedding):
            normal_(module.weight, 0.5)
            seen.add(id(module.weight))
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        if name in (
            "query_tokens",
            "vision_model.embeddings.class_embedding",
            "vision_model.embeddings.position_embedding",
        ):
            normal_(p, 0.5)
            seen.add(id(p))
        else:
            raise RuntimeError(f"parameter {name} not covered by the initialiser")


def build_model(spec):
    config = Blip2Config(
        vision_config=dict(spec["vision"]),
        qformer_config=dict(spec["qformer"]),
        num_query_tokens=spec["num_query_tokens"],
        image_text_hidden_size=spec["image_text_hidden_size"],
        architectures=["Blip2ForImageTextRetrieval"],
    )
    torch.manual_seed(spec["seed"])
    model = Blip2ForImageTextRetrieval(config)
    init_well_conditioned(model, spec["seed"])
    model.eval()
    return model


# --------------------------------------------------------------------------- folders


def make_tokenizer(shared_dir):
    tok = BertTokenizerFast(
        vocab_file=os.path.join(shared_dir, "vocab.txt"),
        tokenizer_file=os.path.join(shared_dir, "tokenizer.json"),
        do_lower_case=True,
        bos_token="[DEC]",
        model_max_length=512,
    )
    assert tok.bos_token_id == 30522, tok.bos_token_id
    assert len(tok) == VOCAB_SIZE, len(tok)
    assert tok.cls_token_id == 101 and tok.sep_token_id == 102 and tok.pad_token_id == 0
    return tok


def make_image_processor(size):
    return BlipImageProcessor(
        do_resize=True,
        size={"height": size, "width": size},
        resample=3,  # PIL BICUBIC
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
        do_convert_rgb=True,
    )


def write_side_files(folder, tokenizer, size):
    tokenizer.save_pretrained(folder)
    proc = make_image_processor(size)
    proc.save_pretrained(folder)
    # Like the hub repos, record which processor class bundles the two.
    path = os.path.join(folder, "preprocessor_config.json")
    with open(path) as f:
        pc = json.load(f)
    pc["processor_class"] = "Blip2Processor"
    with open(path, "w") as f:
        json.dump(pc, f, indent=2, sort_keys=True)
        f.write("\n")


def edit_config_json(folder, spec):
    path = os.path.join(folder, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    vc, qc = cfg["vision_config"], cfg["qformer_config"]
    if spec["omit_vision_eps"]:
        vc.pop("layer_norm_eps", None)
    else:
        # to_diff_dict drops values equal to the class default; write it explicitly.
        vc["layer_norm_eps"] = spec["vision"]["layer_norm_eps"]
    if spec["old_text_input_spelling"]:
        assert qc.pop("use_qformer_text_input") is True
        qc["qformer_text_input"] = True
    else:
        qc["use_qformer_text_input"] = True
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    return cfg


def clean_dir(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.makedirs(path)


def folder_size(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def check_saved_layout(folder, model, expect_sharded):
    shapes, dtypes, files = read_safetensors_layout(folder)
    expected = expected_retrieval_layout(layout_from_hf_config(model.config))
    problems = compare_layout(expected, shapes)
    if problems:
        raise RuntimeError("saved layout differs from blip2-reference.md section 2:\n" + "\n".join(problems))
    assert set(dtypes.values()) == {"F32"}, set(dtypes.values())
    if expect_sharded:
        assert len(files) >= 2, files
    else:
        assert files == ["model.safetensors"], files
    # The saved bytes must be exactly the in-memory weights, k-part of qkv.bias zero.
    sd = model.state_dict()
    for fname in files:
        for name, t in load_file(os.path.join(folder, fname)).items():
            assert torch.equal(t, sd[name]), name
            if name.endswith("self_attn.qkv.bias"):
                h = t.shape[0] // 3
                assert torch.all(t[h : 2 * h] == 0) and torch.all(t[:h] != 0) and torch.all(t[2 * h :] != 0), name
    return shapes, files


# --------------------------------------------------------------------------- references


def l2n(x):
    return torch.nn.functional.normalize(x, dim=-1)


@torch.no_grad()
def compute_reference(model, tokenizer, processor, images_dir, name):
    cfg = model.config
    q_len = cfg.num_query_tokens

    exact_names = [f"{name}_exact_{k}.png" for k in range(EXACT_PER_CONFIG)]
    exact = [Image.open(os.path.join(images_dir, n)) for n in exact_names]
    resized = [Image.open(os.path.join(images_dir, n)) for n in RESIZED_IMAGES]
    px_exact = processor(images=exact, return_tensors="pt")["pixel_values"].float()
    px_resized = processor(images=resized, return_tensors="pt")["pixel_values"].float()

    # Exact-size images: preprocessing must be nothing but rescale + normalise.
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    for img, px in zip(exact, px_exact):
        manual = (torch.from_numpy(np.asarray(img.convert("RGB"))).permute(2, 0, 1).double() / 255 - mean) / std
        assert torch.allclose(px.double(), manual, atol=1e-6)
    # RGBA: the alpha channel is dropped (PIL convert("RGB")), not composited.
    rgba = np.asarray(Image.open(os.path.join(images_dir, "alpha.png")))
    assert rgba.shape[-1] == 4 and rgba[..., 3].min() == 0
    dropped = processor(images=[Image.fromarray(rgba[..., :3], "RGB")], return_tensors="pt")["pixel_values"][0]
    assert torch.equal(dropped.float(), px_resized[RESIZED_IMAGES.index("alpha.png")])

    enc = tokenizer(TEXTS, padding="max_length", truncation=True, max_length=MAX_TEXT_LEN, return_tensors="pt")
    ids, mask = enc["input_ids"].long(), enc["attention_mask"].long()
    unpadded = tokenizer(TEXTS, truncation=True, max_length=MAX_TEXT_LEN)["input_ids"]

    def image_side(px):
        vis = model.vision_model(pixel_values=px).last_hidden_state
        qt = model.query_tokens.expand(px.shape[0], -1, -1)
        qf = model.qformer(
            query_embeds=qt,
            encoder_hidden_states=vis,
            encoder_attention_mask=torch.ones(vis.shape[:-1], dtype=torch.long),
        ).last_hidden_state
        return vis, qf, l2n(model.vision_projection(qf))

    vis, qf_img, img_emb = image_side(px_exact)
    _, _, img_emb_resized = image_side(px_resized)

    txt_h = model.qformer(
        query_embeds=model.embeddings(input_ids=ids), query_length=0, attention_mask=mask
    ).last_hidden_state
    txt_emb = l2n(model.text_projection(txt_h[:, 0, :]))

    # ITC through the model's own forward, checked against the manual computation.
    itc_out = model(pixel_values=px_exact, input_ids=ids, attention_mask=mask, use_image_text_matching_head=False)
    itc = itc_out.logits_per_image
    itc_manual = torch.einsum("iqd,td->iqt", img_emb, txt_emb).max(dim=1).values
    assert torch.allclose(itc, itc_manual, atol=1e-6), (itc - itc_manual).abs().max()
    assert torch.allclose(itc_out.image_embeds, img_emb, atol=1e-6)
    assert torch.allclose(itc_out.text_embeds, txt_emb, atol=1e-6)

    # ITM for every (exact image, text) pair, through the model's forward.
    n_img, n_txt = px_exact.shape[0], ids.shape[0]
    itm_logits = torch.empty(n_img, n_txt, 2)
    for i in range(n_img):
        out = model(
            pixel_values=px_exact[i : i + 1].expand(n_txt, -1, -1, -1),
            input_ids=ids,
            attention_mask=mask,
            use_image_text_matching_head=True,
        )
        itm_logits[i] = out.logits_per_image
    itm_prob = torch.softmax(itm_logits, dim=-1)[..., 1]

    # Joint (ITM) Q-Former pass for (image 0, text 0), the same calls forward() makes.
    qt = model.query_tokens.expand(1, -1, -1)
    joint_in = model.embeddings(input_ids=ids[0:1], query_embeds=qt)
    joint_mask = torch.cat([torch.ones(1, q_len, dtype=torch.long), mask[0:1]], dim=1)
    joint = model.qformer(
        query_embeds=joint_in,
        query_length=q_len,
        attention_mask=joint_mask,
        encoder_hidden_states=vis[0:1],
        encoder_attention_mask=torch.ones(vis[0:1].shape[:-1], dtype=torch.long),
    ).last_hidden_state
    joint_logits = model.itm_head(joint[:, :q_len]).mean(dim=1)
    assert torch.allclose(joint_logits[0], itm_logits[0, 0], atol=1e-5), (joint_logits, itm_logits[0, 0])

    tensors = {
        "pixel_values_exact": px_exact,
        "pixel_values_resized": px_resized,
        "vision_last_hidden_state": vis,
        "qformer_image_last_hidden_state": qf_img,
        "image_embeds": img_emb,
        "image_embeds_resized": img_emb_resized,
        "text_input_ids": ids,
        "text_attention_mask": mask,
        "qformer_text_last_hidden_state": txt_h,
        "text_embeds": txt_emb,
        "itc": itc,
        "itm_logits": itm_logits,
        "itm_prob": itm_prob,
        "itm_logit_class1": itm_logits[..., 1].clone(),
        "qformer_joint_last_hidden_state": joint,
    }
    int_keys = ("text_input_ids", "text_attention_mask")
    tensors = {
        k: (v.contiguous().to(torch.int64) if k in int_keys else v.contiguous().float()) for k, v in tensors.items()
    }

    tokens_unpadded = [tokenizer.convert_ids_to_tokens(x) for x in unpadded]
    meta = {
        "config_name": name,
        "generator": "tools/make_retrieval_fixtures.py",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "dtype": "float32",
        "image_size": cfg.vision_config.image_size,
        "num_query_tokens": q_len,
        "vision_layer_norm_eps_used": model.vision_model.post_layernorm.eps,
        "qformer_layer_norm_eps_used": model.qformer.layernorm.eps,
        "images_dir": "../images",
        "exact_images": exact_names,
        "resized_images": RESIZED_IMAGES,
        "texts": TEXTS,
        "max_length": MAX_TEXT_LEN,
        "tokenizer_call": "BertTokenizerFast(text, padding='max_length', truncation=True, max_length=35)",
        "input_ids_unpadded": unpadded,
        "tokens_unpadded": tokens_unpadded,
        "itm_pairs": "itm_logits[i, t] = forward(pixel_values_exact[i], text t, use_image_text_matching_head=True)",
        "joint_pair": {"image": 0, "text": 0},
        "shapes": {k: list(v.shape) for k, v in tensors.items()},
    }
    return tensors, meta


def sanity_report(tensors, name):
    print(f"[{name}] reference tensors (max |x|):")
    for k, v in tensors.items():
        if v.dtype == torch.int64:
            print(f"  {k:36s} {str(list(v.shape)):16s} i64")
        else:
            print(f"  {k:36s} {str(list(v.shape)):16s} {v.abs().max().item():.4f}  std {v.std().item():.4f}")
    for k in ("vision_last_hidden_state", "qformer_image_last_hidden_state", "qformer_text_last_hidden_state"):
        m = tensors[k].abs().max().item()
        assert 0.5 < m < 50, (k, m)
    p = tensors["itm_prob"]
    spread = (p.max() - p.min()).item()
    print(f"  itm_prob min {p.min().item():.4f} max {p.max().item():.4f} spread {spread:.4f}")
    assert spread > 0.1 and p.max() < 0.995 and p.min() > 0.005, p
    print("  itm_prob:\n" + "\n".join("    " + " ".join(f"{x:.3f}" for x in row) for row in p.tolist()))
    te = tensors["text_embeds"]
    cos = te @ te.T
    off = cos[~torch.eye(cos.shape[0], dtype=torch.bool)]
    print(f"  text_embeds pairwise cosine: max off-diagonal {off.max().item():.4f}")
    assert off.max() < 0.98, off.max()
    itc = tensors["itc"]
    print(f"  itc range [{itc.min().item():.4f}, {itc.max().item():.4f}]")
    ie = tensors["image_embeds"].reshape(tensors["image_embeds"].shape[0], -1)
    ie = l2n(ie)
    print(f"  image_embeds pairwise cosine: max off-diagonal {(ie @ ie.T - torch.eye(ie.shape[0])).max().item():.4f}")


@torch.no_grad()
def reload_check(folder, spec, tensors):
    """Load the written folder back through transformers and recompute two outputs."""
    cfg = Blip2Config.from_pretrained(folder)
    if spec["old_text_input_spelling"]:
        # transformers itself only knows the new key; map the old one by hand.
        assert getattr(cfg.qformer_config, "qformer_text_input", None) is True
        assert cfg.qformer_config.use_qformer_text_input is False
        cfg.qformer_config.use_qformer_text_input = True
    assert cfg.vision_config.layer_norm_eps == 1e-6
    model = Blip2ForImageTextRetrieval.from_pretrained(folder, config=cfg).eval()
    assert model.vision_model.post_layernorm.eps == 1e-6
    vis = model.vision_model(pixel_values=tensors["pixel_values_exact"]).last_hidden_state
    assert torch.equal(vis, tensors["vision_last_hidden_state"])
    out = model(
        pixel_values=tensors["pixel_values_exact"],
        input_ids=tensors["text_input_ids"],
        attention_mask=tensors["text_attention_mask"],
    )
    assert torch.allclose(out.logits_per_image, tensors["itc"], atol=1e-6)
    tok = BertTokenizerFast.from_pretrained(folder)
    assert tok("x")["input_ids"] == [101, 1060, 102] and tok.bos_token_id == 30522
    proc = BlipImageProcessor.from_pretrained(folder)
    assert type(proc).__name__ == "BlipImageProcessor"


def write_lavis_variant(src, dst, hidden):
    clean_dir(dst)
    for f in os.listdir(src):
        if f not in ("model.safetensors", "reference.safetensors", "reference.json"):
            shutil.copy2(os.path.join(src, f), os.path.join(dst, f))
    sd = load_file(os.path.join(src, "model.safetensors"))
    with safe_open(os.path.join(src, "model.safetensors"), "pt") as f:
        metadata = f.metadata()
    out = {}
    for name, t in sd.items():
        if name.startswith("vision_model.") and name.endswith("self_attn.qkv.bias"):
            stem = name[: -len("qkv.bias")]
            assert torch.all(t[hidden : 2 * hidden] == 0)
            out[stem + "q_bias"] = t[:hidden].clone()
            out[stem + "v_bias"] = t[2 * hidden :].clone()
        else:
            out[name] = t
    save_file(out, os.path.join(dst, "model.safetensors"), metadata=metadata)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--shared-tokenizer", default=DEFAULT_TOKENIZER)
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")

    os.makedirs(args.out, exist_ok=True)
    images_dir = os.path.join(args.out, "images")
    clean_dir(images_dir)
    write_images(images_dir)
    for name, spec in CONFIGS.items():
        folder = os.path.join(args.out, name)
        clean_dir(folder)
        model = build_model(spec)
        assert model.vision_model.post_layernorm.eps == 1e-6
        attn0 = model.vision_model.encoder.layers[0].self_attn
        assert isinstance(attn0.qkv.bias, torch.nn.Parameter) and attn0.qkv.bias.shape[0] == 3 * attn0.embed_dim
        if spec["sharded"]:
            model.save_pretrained(folder, safe_serialization=True, max_shard_size="2MB")
        else:
            model.save_pretrained(folder, safe_serialization=True, max_shard_size="10GB")
        edit_config_json(folder, spec)
        # A fresh tokenizer per folder: calling a fast tokenizer with padding/truncation
        # stores those settings in its backend, and they would leak into tokenizer.json.
        write_side_files(folder, make_tokenizer(args.shared_tokenizer), spec["vision"]["image_size"])
        with open(os.path.join(folder, "tokenizer.json")) as f:
            tj = json.load(f)
        assert tj["truncation"] is None and tj["padding"] is None
        shapes, files = check_saved_layout(folder, model, spec["sharded"])
        print(f"[{name}] {len(shapes)} tensors in {files} match blip2-reference.md section 2:")
        for k in sorted(shapes):
            print(f"    {k} {list(shapes[k])}")

        # Reference inputs are produced by the folder's own tokenizer and (slow, PIL)
        # image processor, exactly as a user of the downloaded folder would get them.
        tokenizer = BertTokenizerFast.from_pretrained(folder)
        processor = BlipImageProcessor.from_pretrained(folder)
        tensors, meta = compute_reference(model, tokenizer, processor, images_dir, name)
        sanity_report(tensors, name)
        save_file(tensors, os.path.join(folder, "reference.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(folder, "reference.json"), "w") as f:
            json.dump(meta, f, indent=2, ensure_ascii=False)
            f.write("\n")
        reload_check(folder, spec, tensors)

        if name == "small_a":
            lavis = os.path.join(args.out, "small_a_lavis_bias")
            out = write_lavis_variant(folder, lavis, spec["vision"]["hidden_size"])
            print(f"[small_a_lavis_bias] {len(out)} tensors; vision attention biases:")
            for k in sorted(out):
                if "self_attn" in k and "bias" in k and "projection" not in k:
                    print(f"    {k} {list(out[k].shape)}")

    # safetensors files are created 0600; make everything ordinary, readable files.
    for d, _, fs in os.walk(args.out):
        for f in fs:
            os.chmod(os.path.join(d, f), 0o644)

    print("folder sizes:")
    for d in sorted(os.listdir(args.out)):
        p = os.path.join(args.out, d)
        print(f"  {d:22s} {folder_size(p) / 1e6:.2f} MB  {sorted(os.listdir(p))}")


if __name__ == "__main__":
    main()
