"""PyTorch baseline for BLIP-2 captioning speed at the real blip2-opt-2.7b size.

Why this exists
---------------
quarry's Rust captioner should be compared against what Hugging Face `transformers`
achieves on the same machine. This script builds `Blip2ForConditionalGeneration` at the
real `Salesforce/blip2-opt-2.7b` configuration with random weights:

    ViT-g/14 @224 (transformers' Blip2VisionConfig defaults: hidden 1408, 39 layers, 16 heads,
    MLP 6144), Q-Former defaults (768, 12 layers, cross-attention every 2nd layer, no text
    FFN: use_qformer_text_input False), 32 query tokens, OPT-2.7B (hidden 2560, ffn 10240,
    32 layers, 32 heads, vocab 50304, 2048 positions, eos 50118), image_token_index 50265

and times `generate()` from pixel values (ViT + Q-Former + language_projection + OPT
prefill + decoding) with no prompt, i.e. LM input [32 image rows][</s>]. Every run makes
exactly --max-new-tokens tokens (min_new_tokens = max_new_tokens masks EOS), so runs are
comparable; greedy (--num-beams 1) or beam search (--num-beams 5, LAVIS' setting).
Weights are random, so only the speed is meaningful.

Like `from_pretrained(..., dtype=...)`, everything is in --dtype except `query_tokens` and
the Q-Former, which Blip2ForConditionalGeneration keeps in float32 (_keep_in_fp32_modules).

It prints one JSON line:
    {"framework": "pytorch", "dtype", "batch", "num_beams", "new_tokens", "threads",
     "seconds": [per generate() call], "new_tokens_per_s": batch*new_tokens/mean(seconds),
     "captions_per_s": batch/mean(seconds), "first_step_seconds": [pixels -> first token
     logits, per call], "decode_tokens_per_s": batch*(new_tokens-1)/mean(rest), ...}
new_tokens_per_s counts tokens of the returned captions (not of every beam).

How to run (dev machine only; torch is never needed in CI)
----------
    .venv/bin/python tools/bench_torch_caption.py --dtype bfloat16 --iters 3
    .venv/bin/python tools/bench_torch_caption.py --num-beams 5 --max-new-tokens 30 --threads 8
    # quick check that the script works (2 OPT layers, 2 ViT layers):
    .venv/bin/python tools/bench_torch_caption.py --opt-layers 2 --vit-layers 2 --iters 1

Memory: float32 needs ~15 GB for the weights (3.74 B parameters), bfloat16/float16 ~7.5 GB.
Expect seconds per token in float32 on a small CPU. --device cuda also works.
"""

import argparse
import json
import os
import sys
import time

import torch

import transformers
from transformers import Blip2Config, Blip2ForConditionalGeneration, LogitsProcessor, LogitsProcessorList
from transformers.modeling_utils import no_init_weights


def real_config(opt_layers=32, vit_layers=39):
    """blip2-opt-2.7b (after the Nov-2024 hub update). Vision and Q-Former values are the
    transformers defaults, which equal the checkpoint; see shared/design/blip2-reference.md §1."""
    return Blip2Config(
        vision_config={"num_hidden_layers": vit_layers},
        qformer_config={"use_qformer_text_input": False},
        text_config={
            "model_type": "opt",
            "vocab_size": 50304,
            "hidden_size": 2560,
            "ffn_dim": 10240,
            "num_hidden_layers": opt_layers,
            "num_attention_heads": 32,
            "word_embed_proj_dim": 2560,
            "max_position_embeddings": 2048,
            "bos_token_id": 2,
            "pad_token_id": 1,
            "eos_token_id": 50118,
        },
        num_query_tokens=32,
        image_token_index=50265,
        architectures=["Blip2ForConditionalGeneration"],
    )


@torch.no_grad()
def quick_random_init(model, seed=0):
    """Cheap, sane random weights: Linear/Conv N(0, 1/fan_in), biases zero except the fused
    vision qkv bias (random q and v parts, zero k part), LayerNorms identity, embeddings and
    query tokens N(0, 0.5^2). The tied lm_head is the word embedding."""
    gen = torch.Generator().manual_seed(seed)
    word_emb = model.get_input_embeddings().weight
    for name, m in model.named_modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            if m.weight is word_emb:
                continue
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


def build_model(config, dtype, seed):
    """Allocate directly in `dtype` (no float32 copy of the 15 GB model), skip transformers'
    own init, then keep query_tokens and the Q-Former in float32 like from_pretrained does."""
    with no_init_weights():
        model = Blip2ForConditionalGeneration._from_config(config, dtype=dtype)
    for name in getattr(model, "_keep_in_fp32_modules", None) or []:
        obj = getattr(model, name)
        if isinstance(obj, torch.nn.Parameter):
            obj.data = obj.data.float()
        else:
            obj.float()
    model.tie_weights()
    lm = model.language_model
    assert lm.lm_head.weight is lm.get_input_embeddings().weight
    quick_random_init(model, seed)
    return model.eval()


class StepClock(LogitsProcessor):
    """Records when each decoding step's logits are ready (processors run once per step)."""

    def __init__(self, device):
        self.device, self.stamps = device, []

    def __call__(self, input_ids, scores):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())
        return scores


def main():
    ap = argparse.ArgumentParser(description="BLIP-2 OPT-2.7b captioning speed (PyTorch baseline)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--num-beams", type=int, choices=[1, 5], default=1)
    ap.add_argument("--max-new-tokens", type=int, default=20)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--opt-layers", type=int, default=32, help="shrink OPT for a quick check (real: 32)")
    ap.add_argument("--vit-layers", type=int, default=39, help="shrink the ViT for a quick check (real: 39)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    transformers.logging.set_verbosity_error()
    device = torch.device(args.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]

    t0 = time.perf_counter()
    config = real_config(args.opt_layers, args.vit_layers)
    model = build_model(config, dtype, args.seed).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"# built model ({n_params / 1e9:.3f} B parameters, OPT layers {args.opt_layers}, ViT layers "
          f"{args.vit_layers}) in {time.perf_counter() - t0:.1f}s (transformers {transformers.__version__}, "
          f"torch {torch.__version__}, attention {model.language_model.config._attn_implementation})",
          file=sys.stderr)

    size = config.vision_config.image_size
    gen = torch.Generator().manual_seed(args.seed + 1)
    pixels = torch.randn(args.batch, 3, size, size, generator=gen).to(device=device, dtype=dtype)
    n = args.max_new_tokens

    def run():
        clock = StepClock(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = model.generate(
            pixel_values=pixels,
            do_sample=False,
            num_beams=args.num_beams,
            max_new_tokens=n,
            min_new_tokens=n,
            length_penalty=1.0,
            logits_processor=LogitsProcessorList([clock]),
        )
        if device.type == "cuda":
            torch.cuda.synchronize()
        end = time.perf_counter()
        # returned ids: 32 <image> ids + </s> + n new tokens
        assert out.shape == (args.batch, config.num_query_tokens + 1 + n), out.shape
        assert len(clock.stamps) == n, len(clock.stamps)
        return end - start, clock.stamps[0] - start

    with torch.inference_mode():
        for _ in range(args.warmup):
            run()
        times, firsts = [], []
        for _ in range(args.iters):
            total, first = run()
            times.append(total)
            firsts.append(first)
    mean = sum(times) / len(times)
    rest = sum(t - f for t, f in zip(times, firsts)) / len(times)
    result = {
        "framework": "pytorch",
        "dtype": args.dtype,
        "device": args.device,
        "batch": args.batch,
        "num_beams": args.num_beams,
        "new_tokens": n,
        "threads": args.threads,
        "opt_layers": args.opt_layers,
        "vit_layers": args.vit_layers,
        "seconds": [round(x, 4) for x in times],
        "new_tokens_per_s": args.batch * n / mean,
        "captions_per_s": args.batch / mean,
        "first_step_seconds": [round(x, 4) for x in firsts],
        "decode_tokens_per_s": (args.batch * (n - 1) / rest) if n > 1 and rest > 0 else None,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
