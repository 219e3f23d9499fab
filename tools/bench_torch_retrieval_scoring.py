"""PyTorch baseline for the Q-Former side of `quarry eval`: text embeddings/s and ITM pairs/s.

Why this exists
---------------
benches/retrieval_scoring.rs measures quarry's text embedding and ITM throughput at the real
`Salesforce/blip2-itm-vit-g` size with random weights. This script times the same work with
transformers' `Blip2ForImageTextRetrieval` modules, exactly as LAVIS's `compute_sim_matrix`
runs it:
  * text embeddings: Q-Former text mode on a [batch, len] batch -> [CLS] -> text_projection
    -> L2 normalise;
  * ITM (LAVIS `compute_itm`): ViT features [1, 257, 1408] repeated `batch` times, the joint
    Q-Former with the query tokens, itm_head, class-1 logit averaged over the queries.
Same token ids (random word pieces, [CLS] ... [SEP], no padding) and batch as the Rust bench.
Weights are random, so only the speed is meaningful.

Prints one JSON line:
    {"framework": "pytorch", "batch": B, "text_len": L, "threads": T,
     "text_embeddings_per_s": ..., "itm_pairs_per_s": ..., "seconds": {...}}

Run (dev only):
    /work/venv/bin/python tools/bench_torch_retrieval_scoring.py --batch 16 --iters 3
"""

import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from transformers import Blip2ForImageTextRetrieval

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_torch_image_embedding import quick_random_init, real_config  # noqa: E402


def token_ids(batch, length):
    """The Rust bench's ids: [CLS], word pieces, [SEP]."""
    rows = []
    for b in range(batch):
        rows.append([101] + [1000 + (b * 7919 + i * 104_729) % 28_000 for i in range(length - 2)] + [102])
    return torch.tensor(rows)


def best_of(fn, iters):
    fn()  # warm-up
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), times


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--text-len", type=int, default=20)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = real_config()
    model = Blip2ForImageTextRetrieval(config).eval()
    quick_random_init(model)
    model.vision_model = None  # not used here; frees ~4 GB

    ids = token_ids(args.batch, args.text_len)
    mask = torch.ones_like(ids)
    v = config.vision_config
    tokens = (v.image_size // v.patch_size) ** 2 + 1
    features = torch.randn(1, tokens, v.hidden_size)

    def text_embeddings():
        hidden = model.qformer(query_embeds=model.embeddings(input_ids=ids), query_length=0,
                               attention_mask=mask).last_hidden_state
        return F.normalize(model.text_projection(hidden[:, 0, :]), dim=-1)

    def compute_itm():
        image_inputs = features.repeat(args.batch, 1, 1)
        q = model.query_tokens.expand(args.batch, -1, -1)
        att = torch.cat([torch.ones(q.shape[:-1], dtype=torch.long), mask], dim=1)
        out = model.qformer(query_embeds=model.embeddings(input_ids=ids, query_embeds=q),
                            query_length=q.shape[1], attention_mask=att,
                            encoder_hidden_states=image_inputs,
                            encoder_attention_mask=torch.ones(image_inputs.shape[:-1], dtype=torch.long)
                            ).last_hidden_state
        return model.itm_head(out[:, : q.shape[1], :])[:, :, 1].mean(dim=1)

    assert text_embeddings().shape == (args.batch, 256)
    t_text, all_text = best_of(text_embeddings, args.iters)
    t_itm, all_itm = best_of(compute_itm, args.iters)
    print(json.dumps({
        "framework": "pytorch", "torch": torch.__version__, "batch": args.batch,
        "text_len": args.text_len, "threads": args.threads,
        "text_embeddings_per_s": args.batch / t_text, "itm_pairs_per_s": args.batch / t_itm,
        "seconds": {"text": all_text, "itm": all_itm},
    }))


if __name__ == "__main__":
    main()
