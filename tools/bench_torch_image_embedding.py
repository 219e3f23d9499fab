"""PyTorch baseline for BLIP-2 image embedding throughput, and a real-size random checkpoint.

Why this exists
---------------
quarry's Rust image embedder should be compared against what Hugging Face `transformers`
achieves on the same CPU. This script builds `Blip2ForImageTextRetrieval` at the real
`Salesforce/blip2-itm-vit-g` configuration (ViT-g/14 at 224: hidden 1408, 39 layers,
16 heads, MLP 6144; Q-Former defaults with vocab 30523 and the text FFN; 32 queries;
256-d projections) with random weights, and times the image path

    vision_model -> qformer (query tokens, image mode) -> vision_projection -> l2 norm

on random pixel batches. Weights are random, so only the speed is meaningful.

It prints one JSON line:
    {"framework": "pytorch", "dtype": ..., "batch": ..., "threads": ...,
     "images_per_s": ..., "seconds_per_batch": [...]}

With --save-checkpoint DIR it instead writes the random real-size model as a hub-style
folder (single f32 model.safetensors of ~4.7 GB, config.json, tokenizer files,
preprocessor_config.json), checks its 809 tensor names/shapes against
shared/design/blip2-reference.md section 2, and exits. The Rust side uses such a folder
to measure load time and memory. Keep it outside the repository.

How to run (dev machine only; torch is never needed in CI)
----------
    .venv/bin/python tools/bench_torch_image_embedding.py --batch 4 --iters 3
    .venv/bin/python tools/bench_torch_image_embedding.py --dtype bfloat16 --threads 8
    .venv/bin/python tools/bench_torch_image_embedding.py --save-checkpoint ../bigckpt

Expect several seconds per image in float32 on a small CPU.
"""

import argparse
import json
import os
import sys
import time

import torch

import transformers
from transformers import BertTokenizerFast, Blip2Config, Blip2ForImageTextRetrieval, BlipImageProcessor
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from blip2_hub_layout import (  # noqa: E402
    compare_layout,
    expected_retrieval_layout,
    layout_from_hf_config,
    read_safetensors_layout,
)

# The shared data folder sits beside the checkout (../shared), read-only.
DEFAULT_TOKENIZER = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "shared", "data", "tokenizers", "bert-base-uncased-blip2")


def real_config():
    # Vision and most Q-Former values are the transformers defaults, which equal the
    # hub checkpoint; only what the ITM checkpoint overrides is spelled out.
    return Blip2Config(
        vision_config={},
        qformer_config={"vocab_size": 30523, "use_qformer_text_input": True},
        num_query_tokens=32,
        image_text_hidden_size=256,
        architectures=["Blip2ForImageTextRetrieval"],
    )


@torch.no_grad()
def quick_random_init(model, seed=0):
    """Cheap, sane random weights (no denormals, O(1) activations).

    Linear/Conv weights N(0, 1/fan_in), biases zero except the fused vision qkv bias,
    which gets random q and v parts and a zero k part like the real model;
    LayerNorms identity; embeddings / query tokens N(0, 0.5^2)."""
    gen = torch.Generator().manual_seed(seed)
    for name, m in model.named_modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            m.weight.normal_(0.0, m.weight[0].numel() ** -0.5, generator=gen)
            if m.bias is not None:
                m.bias.zero_()
                if name.endswith("self_attn.qkv"):
                    h = m.weight.shape[1]
                    m.bias[:h].normal_(0.0, 0.1, generator=gen)
                    m.bias[2 * h :].normal_(0.0, 0.1, generator=gen)
        elif isinstance(m, torch.nn.LayerNorm):
            m.weight.fill_(1.0)
            m.bias.zero_()
        elif isinstance(m, torch.nn.Embedding):
            m.weight.normal_(0.0, 0.5, generator=gen)
    for p in (
        model.query_tokens,
        model.vision_model.embeddings.class_embedding,
        model.vision_model.embeddings.position_embedding,
    ):
        p.normal_(0.0, 0.5, generator=gen)


def cast_like_hf(model, dtype):
    """Mimic from_pretrained(dtype=...): everything in `dtype` except the modules that
    Blip2ForImageTextRetrieval keeps in float32 (query_tokens, qformer)."""
    if dtype == torch.float32:
        return model
    model.to(dtype)
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name in keep:
        obj = getattr(model, name)
        if isinstance(obj, torch.nn.Parameter):
            obj.data = obj.data.float()
        else:
            obj.float()
    return model


@torch.no_grad()
def embed_images(model, pixel_values):
    # Blip2ForImageTextRetrieval has no get_image_features(); this is the image branch
    # of its forward(use_image_text_matching_head=False).
    vis = model.vision_model(pixel_values=pixel_values.to(model.vision_model.dtype)).last_hidden_state
    queries = model.query_tokens.expand(vis.shape[0], -1, -1)
    q = model.qformer(
        query_embeds=queries,
        encoder_hidden_states=vis,
        encoder_attention_mask=torch.ones(vis.shape[:-1], dtype=torch.long),
    ).last_hidden_state
    q = q.to(model.vision_projection.weight.dtype)
    return torch.nn.functional.normalize(model.vision_projection(q), dim=-1)


def save_checkpoint(model, folder, tokenizer_dir):
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True, max_shard_size="10GB")
    tok = BertTokenizerFast(
        vocab_file=os.path.join(tokenizer_dir, "vocab.txt"),
        tokenizer_file=os.path.join(tokenizer_dir, "tokenizer.json"),
        do_lower_case=True,
        bos_token="[DEC]",
        model_max_length=512,
    )
    assert tok.bos_token_id == 30522
    tok.save_pretrained(folder)
    size = model.config.vision_config.image_size
    BlipImageProcessor(
        size={"height": size, "width": size},
        resample=3,
        image_mean=OPENAI_CLIP_MEAN,
        image_std=OPENAI_CLIP_STD,
        do_convert_rgb=True,
    ).save_pretrained(folder)

    for f in os.listdir(folder):  # safetensors files are created 0600
        os.chmod(os.path.join(folder, f), 0o644)

    shapes, dtypes, files = read_safetensors_layout(folder)
    expected = expected_retrieval_layout(layout_from_hf_config(model.config))
    problems = compare_layout(expected, shapes)
    if problems:
        raise SystemExit("layout mismatch:\n" + "\n".join(problems))
    assert files == ["model.safetensors"], files
    assert set(dtypes.values()) == {"F32"}, set(dtypes.values())
    n_vit = sum(k.startswith("vision_model.") for k in shapes)
    n_qf = sum(k.startswith("qformer.") or k == "query_tokens" for k in shapes)
    total = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    print(
        json.dumps(
            {
                "saved": folder,
                "files": sorted(os.listdir(folder)),
                "tensors": len(shapes),
                "vision_tensors": n_vit,
                "qformer_tensors_incl_query_tokens": n_qf,
                "other_tensors": len(shapes) - n_vit - n_qf,
                "parameters": sum(p.numel() for p in model.parameters()),
                "model_safetensors_bytes": os.path.getsize(os.path.join(folder, "model.safetensors")),
                "folder_bytes": total,
                "layout_matches_reference_md": True,
            }
        )
    )


def main():
    ap = argparse.ArgumentParser(description="BLIP-2 image embedding throughput (PyTorch baseline)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-checkpoint", metavar="DIR", help="write the random real-size model here and exit")
    ap.add_argument("--tokenizer-dir", default=DEFAULT_TOKENIZER)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    t0 = time.perf_counter()
    model = Blip2ForImageTextRetrieval(real_config())
    quick_random_init(model, args.seed)
    model.eval()
    build_s = time.perf_counter() - t0
    print(f"# built real-size model in {build_s:.1f}s "
          f"(transformers {transformers.__version__}, torch {torch.__version__})", file=sys.stderr)

    if args.save_checkpoint:
        save_checkpoint(model, args.save_checkpoint, args.tokenizer_dir)
        return

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    cast_like_hf(model, dtype)
    size = model.config.vision_config.image_size
    gen = torch.Generator().manual_seed(args.seed + 1)
    pixels = torch.randn(args.batch, 3, size, size, generator=gen)

    out = embed_images(model, pixels)  # warm-up
    assert out.shape == (args.batch, model.config.num_query_tokens, model.config.image_text_hidden_size)
    assert torch.isfinite(out).all()

    times = []
    for _ in range(args.iters):
        t = time.perf_counter()
        embed_images(model, pixels)
        times.append(time.perf_counter() - t)
    mean = sum(times) / len(times)
    print(
        json.dumps(
            {
                "framework": "pytorch",
                "dtype": args.dtype,
                "batch": args.batch,
                "threads": args.threads,
                "images_per_s": args.batch / mean,
                "seconds_per_batch": [round(x, 4) for x in times],
            }
        )
    )


if __name__ == "__main__":
    main()
