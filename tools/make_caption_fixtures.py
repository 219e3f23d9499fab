"""Generate small random-weight BLIP-2 captioning checkpoints and PyTorch reference outputs.

Why this exists
---------------
quarry re-implements BLIP-2 captioning (Blip2ForConditionalGeneration: ViT -> Q-Former ->
language_projection -> OPT decoder, greedy / beam search) in Rust. The real checkpoints are
15 GB, so this script builds tiny models with the same architecture and the same on-disk
layout as a Hugging Face hub download, fills them with random but well-conditioned weights,
and records what Hugging Face `transformers` 4.57 (PyTorch, float32, CPU) computes and
generates with them. The Rust tests load the folders and compare against
`reference.safetensors` / `reference.json`.

Torch and transformers are development-only tools: the generated files are committed and
CI never runs this script.

How to run
----------
    .venv/bin/python tools/make_caption_fixtures.py

(or any venv with torch + "transformers>=4.57,<5" + pillow + numpy + safetensors; see
tools/README.md). It is deterministic (fixed seeds, one thread) and rewrites everything
under fixtures/captioning/:

    images/          synthetic exact-size PNG inputs (3 per config)
    opt_current/     CURRENT hub layout of Salesforce/blip2-opt-2.7b: image_token_index
                     50265, vocab 50304, tied lm_head not stored, sharded safetensors,
                     processor_config.json {num_query_tokens}, tokenizer with "<image>"
    opt_legacy/      LEGACY layout of Salesforce/blip2-opt-2.7b-coco: no image_token_index,
                     vocab 50272, language_model.lm_head.weight stored, single file, no
                     processor_config.json / generation_config.json, tokenizer.json = the
                     shared OPT tokenizer byte for byte. Its eos_token_id is a token the
                     random model really emits (picked by a dry greedy run).
                     transformers 4.57.6's Blip2ForConditionalGeneration.generate cannot run
                     such a config (it raises without and with input_ids; recorded in
                     reference.json), so its references come from the LAVIS / legacy concat:
                     language_model.generate(inputs_embeds=cat(image rows, embed(text ids))).
    opt_proj_lm/     a bare OPTForCausalLM (hub layout of facebook/opt-*) with
                     word_embed_proj_dim 16 != hidden_size 32, i.e. with project_in /
                     project_out. BLIP-2 cannot use such an OPT (see reference.json notes),
                     so this exercises the two projections on token-id inputs only.
    <name>/reference.safetensors   reference tensors (f32; token ids / masks as i64)
    <name>/reference.json          every setting, all ids as JSON lists, semantics notes

Every generation case is also re-run through an independent, deliberately simple
re-implementation of greedy and beam search below (`mirror_greedy`, `mirror_beam`: full
recompute, no KV cache). It must reproduce transformers' token ids exactly and its beam
scores to 1e-5; that checks the semantics written into reference.json, and it measures the
decision margins (top1-top2 logit gap for greedy, gaps between ranked beam candidates) so
that float noise cannot flip a token in the Rust port.

Options: --out DIR (default <repo>/fixtures/captioning), --shared-tokenizer FILE,
--only NAME (regenerate one config; images are rewritten identically).
"""

import argparse
import copy
import json
import math
import os
import shutil
import sys
import warnings

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import transformers
from transformers import (
    AutoTokenizer,
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    BlipImageProcessor,
    GPT2TokenizerFast,
    OPTConfig,
    OPTForCausalLM,
)
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from blip2_hub_layout import (  # noqa: E402
    caption_layout_from_hf_config,
    compare_layout,
    expected_caption_layout,
    read_safetensors_layout,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO_ROOT, "fixtures", "captioning")
# The shared data folder sits beside the checkout (../shared), read-only.
DEFAULT_TOKENIZER = os.path.join(
    os.path.dirname(REPO_ROOT), "shared", "data", "tokenizers", "opt", "tokenizer.json")

IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_ID = 50265  # first id after the 50265 ids of the OPT tokenizer
BOS, PAD = 2, 1
NEWLINE_EOS = 50118  # "\n", the real checkpoints' eos

PROMPT = "a photo of"
QUESTION = "Question: what is shown here? Answer:"
N_IMAGES = 3
GREEDY_MARGIN_MIN = 1e-3  # minimum top1-top2 gap accepted at any recorded greedy step
BEAM_MARGIN_MIN = 1e-4  # minimum gap between ranked beam candidates (log-prob units)

CONFIGS = {
    "opt_current": {
        "layout": "current",
        "seeds": [3003, 3103, 3203, 3303, 3403, 3503],
        "emb_stds": [0.2, 0.15, 0.25],
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
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            cross_attention_frequency=2,
            max_position_embeddings=64,
            use_qformer_text_input=False,
        ),
        "num_query_tokens": 8,
        "text": dict(
            vocab_size=50304,
            hidden_size=32,
            word_embed_proj_dim=32,
            ffn_dim=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=64,
            bos_token_id=BOS,
            pad_token_id=PAD,
            eos_token_id=NEWLINE_EOS,
        ),
        "image_token_index": IMAGE_TOKEN_ID,
        "sharded": True,
        "lm_head_stored": False,
    },
    "opt_legacy": {
        "layout": "legacy",
        "seeds": [4004, 4104, 4204, 4304, 4404, 4504],
        "emb_stds": [0.45, 0.3, 0.6],
        "vision": dict(
            image_size=42,
            patch_size=14,
            hidden_size=40,
            num_hidden_layers=2,
            num_attention_heads=5,
            intermediate_size=72,
            layer_norm_eps=1e-6,
        ),
        "qformer": dict(
            hidden_size=24,
            num_hidden_layers=2,
            num_attention_heads=3,
            intermediate_size=48,
            cross_attention_frequency=1,
            max_position_embeddings=64,
            use_qformer_text_input=False,
        ),
        "num_query_tokens": 6,
        # word_embed_proj_dim == hidden_size: Blip2ForConditionalGeneration feeds
        # language_projection outputs (hidden_size wide) as inputs_embeds, which OPT
        # expects word_embed_proj_dim wide, so BLIP-2 only works without project_in/out
        # (true of every real BLIP-2 OPT). opt_proj_lm covers the projections instead.
        "text": dict(
            vocab_size=50272,
            hidden_size=16,
            word_embed_proj_dim=16,
            ffn_dim=48,
            num_hidden_layers=3,
            num_attention_heads=4,
            max_position_embeddings=64,
            bos_token_id=BOS,
            pad_token_id=PAD,
            eos_token_id=NEWLINE_EOS,  # replaced by a token the model emits (dry run)
        ),
        "image_token_index": None,
        "sharded": False,
        "lm_head_stored": True,
        "pick_eos": True,
    },
}

OPT_PROJ = {
    "seeds": [5005, 5105, 5205, 5305, 5405, 5505],
    "emb_stds": [0.3, 0.45, 0.2],
    "text": dict(
        vocab_size=1000,
        hidden_size=32,
        word_embed_proj_dim=16,
        ffn_dim=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=64,
        bos_token_id=BOS,
        pad_token_id=PAD,
        eos_token_id=NEWLINE_EOS,  # replaced by a token the model emits (dry run)
    ),
    # token-id prompts; row 1 is left-padded to row 0's length
    "prompts": [[BOS, 5, 17, 42, 99, 7], [BOS, 300, 12]],
}


# --------------------------------------------------------------------------- images


def synthetic_image(rng, size):
    """Smooth colour gradients + a few filled shapes + mild noise, size x size RGB."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) / max(size - 1, 1)
    base = np.empty((size, size, 3))
    for c in range(3):
        a, b = rng.uniform(-1, 1, size=2)
        phase, freq = rng.uniform(0, 2 * math.pi), rng.uniform(1.0, 3.0)
        base[..., c] = 128 + 70 * (a * xs + b * ys) + 40 * np.sin(2 * math.pi * freq * (xs - ys) + phase)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(5):
        x0, x1 = sorted(int(v) for v in rng.integers(0, size, size=2))
        y0, y1 = sorted(int(v) for v in rng.integers(0, size, size=2))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
    arr = np.asarray(img).astype(np.int16) + rng.integers(-8, 9, size=(size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def write_images(images_dir):
    os.makedirs(images_dir, exist_ok=True)
    rng = np.random.default_rng(20240917)
    for name, spec in CONFIGS.items():
        s = spec["vision"]["image_size"]
        for k in range(N_IMAGES):
            synthetic_image(rng, s).save(os.path.join(images_dir, f"{name}_exact_{k}.png"), optimize=True)


def image_names(name):
    return [f"{name}_exact_{k}.png" for k in range(N_IMAGES)]


# --------------------------------------------------------------------------- weights


@torch.no_grad()
def init_well_conditioned(model, seed, word_emb_std):
    """Overwrite every parameter with seeded values that keep activations O(1).

    Linear/Conv weight N(0, 1/fan_in), bias N(0, 0.1^2) (vision qkv bias: zero k third);
    LayerNorm weight 1 + N(0, 0.1^2), bias N(0, 0.1^2); embeddings, positions, class
    embedding, query tokens N(0, 0.5^2), except the OPT word embeddings (= the tied
    lm_head): Gaussian rows rescaled to norm word_emb_std * sqrt(width), which sets how
    peaked the next-token logits are."""
    gen = torch.Generator().manual_seed(seed)

    def normal_(t, std, mean=0.0):
        t.copy_(torch.randn(t.shape, generator=gen, dtype=torch.float32) * std + mean)

    word_emb = model.get_input_embeddings().weight
    seen = set()
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            if id(module.weight) in seen:  # the tied lm_head
                assert module.weight is word_emb, name
                continue
            normal_(module.weight, module.weight[0].numel() ** -0.5)
            seen.add(id(module.weight))
            if module.bias is not None:
                normal_(module.bias, 0.1)
                seen.add(id(module.bias))
                if "vision_model." in name and name.endswith("self_attn.qkv"):
                    h = module.weight.shape[1]
                    module.bias[h : 2 * h] = 0.0
        elif isinstance(module, torch.nn.LayerNorm):
            normal_(module.weight, 0.1, mean=1.0)
            normal_(module.bias, 0.1)
            seen.update({id(module.weight), id(module.bias)})
        elif isinstance(module, torch.nn.Embedding):
            if module.weight is word_emb:
                # Rows rescaled to one common norm (word_emb_std * sqrt(width)): in a 16-32 wide
                # space the few longest of ~50k Gaussian rows otherwise win nearly every argmax
                # of the tied lm_head, and greedy decoding repeats one token forever.
                normal_(module.weight, 1.0)
                module.weight.mul_(word_emb_std * module.weight.shape[1] ** 0.5 / module.weight.norm(dim=1, keepdim=True))
            else:
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
    out_emb = model.get_output_embeddings().weight
    assert out_emb is word_emb or torch.equal(out_emb, word_emb), "lm_head not tied"


def build_blip2(spec, seed, emb_std, eos_token_id):
    text = dict(spec["text"], eos_token_id=eos_token_id)
    config = Blip2Config(
        vision_config=dict(spec["vision"]),
        qformer_config=dict(spec["qformer"]),
        text_config=dict(text, model_type="opt"),
        num_query_tokens=spec["num_query_tokens"],
        image_token_index=spec["image_token_index"],
        architectures=["Blip2ForConditionalGeneration"],
    )
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config)
    init_well_conditioned(model, seed, emb_std)
    model.eval()
    return model


def build_opt(seed, emb_std, eos_token_id):
    config = OPTConfig(**dict(OPT_PROJ["text"], eos_token_id=eos_token_id), architectures=["OPTForCausalLM"])
    torch.manual_seed(seed)
    model = OPTForCausalLM(config)
    init_well_conditioned(model, seed, emb_std)
    model.eval()
    return model


# --------------------------------------------------------------------------- tokenizer / processor


def make_tokenizer(shared_file):
    # Settings of the hub tokenizer_config.json of the OPT checkpoints: bos = eos = unk =
    # "</s>" (id 2, prepended by the tokenizer.json post-processor), pad "<pad>" (1).
    tok = GPT2TokenizerFast(
        tokenizer_file=shared_file,
        bos_token="</s>",
        eos_token="</s>",
        unk_token="</s>",
        pad_token="<pad>",
        add_prefix_space=False,
        add_bos_token=True,
        errors="replace",
    )
    assert tok.bos_token_id == BOS and tok.pad_token_id == PAD and len(tok) == 50265
    assert tok("a photo of")["input_ids"] == [2, 102, 1345, 9]
    assert tok("\n")["input_ids"] == [2, NEWLINE_EOS]
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


def write_json(path, obj, sort_keys=True):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=sort_keys, ensure_ascii=False)
        f.write("\n")


def read_json(path):
    with open(path) as f:
        return json.load(f)


# --------------------------------------------------------------------------- folders


def clean_dir(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    os.makedirs(path)


def folder_size(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def write_blip2_folder(folder, model, spec, shared_tokenizer):
    clean_dir(folder)
    if spec["sharded"]:
        model.save_pretrained(folder, safe_serialization=True, max_shard_size="3MB")
    else:
        model.save_pretrained(folder, safe_serialization=True, max_shard_size="10GB")
    config_path = os.path.join(folder, "config.json")
    cfg = read_json(config_path)
    # to_diff_dict drops values equal to the class default; write the eps explicitly.
    cfg["vision_config"]["layer_norm_eps"] = spec["vision"]["layer_norm_eps"]
    if spec["layout"] == "legacy":
        # save_pretrained writes "image_token_index": null; the old hub config has no such key
        assert cfg.pop("image_token_index", None) is None
        # old hub configs are full dumps; spell out the ids that to_diff_dict drops as defaults
        cfg["text_config"].update(bos_token_id=BOS, pad_token_id=PAD)
    else:
        assert cfg["image_token_index"] == IMAGE_TOKEN_ID
    write_json(config_path, cfg)

    size = spec["vision"]["image_size"]
    if spec["layout"] == "current":
        # transformers >= 4.45 Blip2Processor: adds "<image>" to the tokenizer (id 50265) and,
        # with num_query_tokens set, prepends num_query_tokens image tokens before BOS.
        proc = Blip2Processor(make_image_processor(size), make_tokenizer(shared_tokenizer),
                              num_query_tokens=spec["num_query_tokens"])
        assert proc.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == IMAGE_TOKEN_ID
        proc.save_pretrained(folder)
        # The updated hub repo also has added_tokens.json (23 bytes).
        added = os.path.join(folder, "added_tokens.json")
        if not os.path.exists(added):
            write_json(added, {IMAGE_TOKEN: IMAGE_TOKEN_ID})
        pc = read_json(os.path.join(folder, "processor_config.json"))
        assert pc.get("num_query_tokens") == spec["num_query_tokens"], pc
    else:
        tok = make_tokenizer(shared_tokenizer)
        tok.save_pretrained(folder)
        saved = read_json(os.path.join(folder, "tokenizer.json"))
        shared = read_json(shared_tokenizer)
        assert saved == shared, "save_pretrained changed the OPT tokenizer.json"
        shutil.copyfile(shared_tokenizer, os.path.join(folder, "tokenizer.json"))  # byte for byte
        make_image_processor(size).save_pretrained(folder)
        path = os.path.join(folder, "preprocessor_config.json")
        pc = read_json(path)
        pc["processor_class"] = "Blip2Processor"
        write_json(path, pc)
        # The legacy hub repo predates generation_config.json / processor_config.json.
        for f in ("generation_config.json", "processor_config.json", "added_tokens.json"):
            if os.path.exists(os.path.join(folder, f)):
                os.remove(os.path.join(folder, f))

    # save_pretrained also writes the slow-tokenizer files vocab.json / merges.txt (the hub
    # repos have them too); tokenizer.json alone defines the tokenizer, so leave them out.
    for f in ("vocab.json", "merges.txt"):
        os.remove(os.path.join(folder, f))
    tj = read_json(os.path.join(folder, "tokenizer.json"))
    assert tj["truncation"] is None and tj["padding"] is None
    has_image = [t for t in tj["added_tokens"] if t["content"] == IMAGE_TOKEN]
    if spec["layout"] == "current":
        assert has_image and has_image[0]["id"] == IMAGE_TOKEN_ID and has_image[0]["special"], has_image
    else:
        assert not has_image

    if spec["lm_head_stored"]:
        add_stored_lm_head(folder, model)
    check_saved_layout(folder, model, spec)


def add_stored_lm_head(folder, model):
    """Old hub shards stored the tied lm_head; save_pretrained drops it. Put it back."""
    path = os.path.join(folder, "model.safetensors")
    with safe_open(path, "pt") as f:
        metadata = f.metadata()
    tensors = load_file(path)
    key = "language_model.lm_head.weight"
    if key not in tensors:
        tensors[key] = model.get_input_embeddings().weight.detach().clone().contiguous()
        save_file(tensors, path, metadata=metadata)


def check_saved_layout(folder, model, spec):
    shapes, dtypes, files = read_safetensors_layout(folder)
    expected = expected_caption_layout(caption_layout_from_hf_config(model.config), spec["lm_head_stored"])
    problems = compare_layout(expected, shapes)
    if problems:
        raise RuntimeError("saved layout differs from blip2-reference.md section 2:\n" + "\n".join(problems))
    assert set(dtypes.values()) == {"F32"}, set(dtypes.values())
    assert not any(k.startswith("embeddings.") or ".intermediate." in k for k in shapes)
    if spec["sharded"]:
        assert len(files) >= 2, files
    else:
        assert files == ["model.safetensors"], files
    sd = model.state_dict()
    for fname in files:
        for name, t in load_file(os.path.join(folder, fname)).items():
            src = sd[name] if name in sd else model.get_input_embeddings().weight
            assert torch.equal(t, src), name
    emb = "language_model.model.decoder.embed_tokens.weight"
    print(f"  {len(shapes)} tensors in {files}; lm_head stored: {'language_model.lm_head.weight' in shapes}; "
          f"embed_tokens {list(shapes[emb])}")
    return shapes, files


# --------------------------------------------------------------------------- decoding mirror


class Prefix:
    """What the OPT decoder sees before the first new token, for one row per sequence.

    embeds  [N, P, D] inputs_embeds (image rows already placed)
    mask    [N, P]    attention mask (0 = padding)
    context [N, C]    token ids that generate() keeps in `input_ids` (and that repetition
                      penalty / no_repeat_ngram see); C may be 0
    """

    def __init__(self, embeds, mask, context):
        self.embeds, self.mask, self.context = embeds, mask.long(), context.long()

    def repeat(self, n):
        r = lambda t: t.repeat_interleave(n, dim=0)  # noqa: E731
        return Prefix(r(self.embeds), r(self.mask), r(self.context))


@torch.no_grad()
def lm_last_logits(lm, prefix, generated):
    """Logits at the last position for prefix + generated ids, recomputed from scratch.
    Positions are cumsum(mask) - 1 (padding rows get 1, as generate() does; they are never
    attended to)."""
    emb = lm.get_input_embeddings()(generated)
    x = torch.cat([prefix.embeds, emb], dim=1)
    m = torch.cat([prefix.mask, torch.ones_like(generated)], dim=1)
    pos = m.cumsum(-1) - 1
    pos = pos.masked_fill(m == 0, 1)
    return lm(inputs_embeds=x, attention_mask=m, position_ids=pos, use_cache=False).logits[:, -1].float()


def process_scores(scores, context, n_new, eos, min_new, rep, ngram):
    """transformers' processor order: RepetitionPenalty, NoRepeatNGram, MinLength/MinNewTokens."""
    scores = scores.clone()
    if rep != 1.0 and context.shape[1] > 0:
        s = scores.gather(1, context)
        s = torch.where(s < 0, s * rep, s / rep)
        scores.scatter_(1, context, s)
    if ngram > 0 and context.shape[1] + 1 >= ngram:
        for i, row in enumerate(context.tolist()):
            tail = tuple(row[len(row) - (ngram - 1):]) if ngram > 1 else ()
            banned = {row[j + ngram - 1] for j in range(len(row) - ngram + 1) if tuple(row[j:j + ngram - 1]) == tail}
            if banned:
                scores[i, sorted(banned)] = -math.inf
    if eos is not None and n_new < min_new:
        scores[:, eos] = -math.inf
    return scores


@torch.no_grad()
def mirror_greedy(lm, prefix, max_new, eos, pad, min_new=0, rep=1.0, ngram=0):
    n = prefix.embeds.shape[0]
    gen = torch.zeros((n, 0), dtype=torch.long)
    alive = torch.ones(n, dtype=torch.bool)
    margins = []
    for t in range(max_new):
        logits = lm_last_logits(lm, prefix, gen)
        scores = process_scores(logits, torch.cat([prefix.context, gen], 1), t, eos, min_new, rep, ngram)
        top = scores.topk(2, dim=-1).values
        margins += (top[:, 0] - top[:, 1])[alive].tolist()
        nxt = scores.argmax(-1)
        nxt = torch.where(alive, nxt, torch.full_like(nxt, pad))
        gen = torch.cat([gen, nxt[:, None]], 1)
        if eos is not None:
            alive &= nxt != eos
        if not alive.any():
            break
    return gen, min(margins)


@torch.no_grad()
def mirror_beam(lm, prefix, num_beams, max_new, eos, pad, min_new=0, length_penalty=1.0, rep=1.0, ngram=0):
    """Beam search with transformers 4.57 semantics (early_stopping=False):

    - scores are log_softmax(logits) then the processors, accumulated per beam;
    - each step keeps the top 2*num_beams candidates over (beam, token);
    - a candidate among the first num_beams whose token is EOS, or any candidate once
      max_new tokens exist, is a finished hypothesis with score sum_logp / n^length_penalty
      (n = its new tokens, EOS included); the best num_beams finished are kept;
    - the next running beams are the best num_beams candidates that did not finish;
    - a batch item is done when num_beams hypotheses are finished and
      best_running_sum / n_so_far^length_penalty <= worst finished score (sticky);
    - output: best finished hypothesis, padded with `pad` to the longest returned row.
    """
    b = prefix.embeds.shape[0]
    pre = prefix.repeat(num_beams)
    k = 2 * num_beams
    seqs = [[[] for _ in range(num_beams)] for _ in range(b)]
    run = torch.full((b, num_beams), -1e9)
    run[:, 0] = 0.0
    finished = [[] for _ in range(b)]  # (score, tokens)
    open_ = [True] * b
    margins = []
    for t in range(max_new):
        gen = torch.tensor([s for row in seqs for s in row], dtype=torch.long).reshape(b * num_beams, t)
        logp = torch.log_softmax(lm_last_logits(lm, pre, gen), dim=-1)
        logp = process_scores(logp, torch.cat([pre.context, gen], 1), t, eos, min_new, rep, ngram)
        vocab = logp.shape[-1]
        acc = (logp.view(b, num_beams, vocab) + run[:, :, None]).view(b, -1)
        top_v, top_i = acc.topk(k + 1, dim=-1)
        new_seqs, new_run = [], torch.empty_like(run)
        for i in range(b):
            v, idx = top_v[i], top_i[i]  # k + 1 best, the last one only for margins
            cand = [(seqs[i][j // vocab] + [j % vocab]) for j in idx.tolist()]
            hit = [(eos is not None and c[-1] == eos) or t + 1 >= max_new for c in cand]
            if open_[i]:
                # decision margins: which of the first num_beams candidates finish ...
                if hit[num_beams - 1] or hit[num_beams]:
                    margins.append(v[num_beams - 1].item() - v[num_beams].item())
                # ... and which non-finished candidates run on
                live = [v[j].item() for j in range(k + 1) if not hit[j]]
                if len(live) > num_beams:
                    margins.append(live[num_beams - 1] - live[num_beams])
                for j in range(num_beams):
                    if hit[j]:
                        finished[i].append((v[j].item() / (t + 1) ** length_penalty, cand[j]))
                finished[i] = sorted(finished[i], key=lambda x: -x[0])
                if len(finished[i]) > num_beams:
                    margins.append(finished[i][num_beams - 1][0] - finished[i][num_beams][0])
                finished[i] = finished[i][:num_beams]
            # finished candidates are pushed down by 1e9, then the best num_beams are kept
            keep = sorted(range(k), key=lambda j: (hit[j], -v[j].item()))[:num_beams]
            new_seqs.append([cand[j] for j in keep])
            new_run[i] = torch.stack([v[j] - (1e9 if hit[j] else 0.0) for j in keep])
        seqs, run = new_seqs, new_run
        for i in range(b):
            if open_[i] and len(finished[i]) == num_beams and t + 1 < max_new:
                best_possible = run[i, 0].item() / (t + 1) ** length_penalty
                margins.append(abs(best_possible - finished[i][-1][0]))
                open_[i] = best_possible > finished[i][-1][0]
        if not any(open_):
            break
    best = [f[0] for f in finished]
    for f in finished:
        if len(f) > 1:
            margins.append(f[0][0] - f[1][0])
    width = max(len(toks) for _, toks in best)
    out = torch.full((b, width), pad, dtype=torch.long)
    for i, (_, toks) in enumerate(best):
        out[i, : len(toks)] = torch.tensor(toks)
    return out, torch.tensor([s for s, _ in best]), min(margins)


# --------------------------------------------------------------------------- the two layouts


class Runner:
    """Builds the inputs a user of the folder would build and calls generate() the way the
    layout requires in transformers 4.57.6."""

    def __init__(self, model, folder, spec, images_dir, name):
        self.model, self.spec, self.layout, self.name = model, spec, spec["layout"], name
        self.lm = model.language_model
        self.q = model.config.num_query_tokens
        self.eos = model.config.text_config.eos_token_id
        self.images = [Image.open(os.path.join(images_dir, n)) for n in image_names(name)]
        self.image_processor = BlipImageProcessor.from_pretrained(folder)  # slow, PIL
        if self.layout == "current":
            self.processor = Blip2Processor.from_pretrained(folder)
            assert self.processor.num_query_tokens == self.q
            # the references use the slow (PIL) image processor, as the retrieval fixtures do
            self.loaded_image_processor = type(self.processor.image_processor).__name__
            self.processor.image_processor = self.image_processor
            self.tokenizer = self.processor.tokenizer
        else:
            self.processor = None
            self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.tokenizer.padding_side = "left"
        assert type(self.tokenizer).__name__ == "GPT2TokenizerFast"
        self.pixel_values = self.image_processor(self.images, return_tensors="pt")["pixel_values"].float()
        with torch.no_grad():
            self.vis = model.vision_model(pixel_values=self.pixel_values).last_hidden_state
            self.qf = model.qformer(
                query_embeds=model.query_tokens.expand(N_IMAGES, -1, -1),
                encoder_hidden_states=self.vis,
                encoder_attention_mask=torch.ones(self.vis.shape[:-1], dtype=torch.long),
            ).last_hidden_state
            self.proj = model.language_projection(self.qf)
            assert torch.equal(self.proj, model.get_image_features(self.pixel_values))

    # ---- inputs
    def encode(self, image_idx, texts):
        """texts None = no prompt. Returns the generate() inputs and the mirror Prefix."""
        px = self.pixel_values[image_idx]
        b = len(image_idx)
        texts_or_empty = [""] * b if texts is None else texts
        if self.layout == "current":
            enc = self.processor(images=[self.images[i] for i in image_idx], text=texts_or_empty,
                                 padding="longest", return_tensors="pt")
            assert torch.equal(enc["pixel_values"].float(), px)
            ids, mask = enc["input_ids"].long(), enc["attention_mask"].long()
            embeds = self.lm.get_input_embeddings()(ids)
            image_rows = (ids == IMAGE_TOKEN_ID)
            assert image_rows[:, : self.q].all() and image_rows.sum() == b * self.q
            embeds = embeds.masked_scatter(image_rows[..., None].expand_as(embeds), self.proj[image_idx])
            prefix = Prefix(embeds, mask, ids)
            lm_mask = mask
        else:
            enc = self.tokenizer(texts_or_empty, padding="longest", return_tensors="pt")
            ids, mask = enc["input_ids"].long(), enc["attention_mask"].long()
            embeds = torch.cat([self.proj[image_idx], self.lm.get_input_embeddings()(ids)], dim=1)
            lm_mask = torch.cat([torch.ones(b, self.q, dtype=torch.long), mask], dim=1)
            # LAVIS / legacy: generate(inputs_embeds=...) only, so input_ids start empty.
            prefix = Prefix(embeds, lm_mask, torch.zeros((b, 0), dtype=torch.long))
        return {"image_idx": list(image_idx), "texts": texts, "pixel_values": px, "input_ids": ids,
                "attention_mask": mask, "lm_attention_mask": lm_mask, "prefix": prefix}

    # ---- generate
    @torch.no_grad()
    def generate(self, inp, text_context=False, **kw):
        kw = dict(kw, do_sample=False, return_dict_in_generate=True, output_scores=True)
        if kw.get("num_beams", 1) == 1:
            kw["output_logits"] = True
        if self.layout == "current":
            if inp["texts"] is None:
                # the documented no-prompt call: generate() builds [<image>]*Q + [BOS] itself
                out = self.model.generate(pixel_values=inp["pixel_values"], **kw)
            else:
                out = self.model.generate(pixel_values=inp["pixel_values"], input_ids=inp["input_ids"],
                                          attention_mask=inp["attention_mask"], **kw)
            n_in = inp["input_ids"].shape[1]
            assert torch.equal(out.sequences[:, :n_in], inp["input_ids"])
        else:
            extra = {"input_ids": inp["input_ids"]} if text_context else {}
            out = self.lm.generate(inputs_embeds=inp["prefix"].embeds, attention_mask=inp["lm_attention_mask"],
                                   **extra, **kw)
            n_in = inp["input_ids"].shape[1] if text_context else 0
            if text_context:
                assert torch.equal(out.sequences[:, :n_in], inp["input_ids"])
        return out, n_in

    @torch.no_grad()
    def first_step(self, inp):
        if self.layout == "current":
            out = self.model(pixel_values=inp["pixel_values"], input_ids=inp["input_ids"],
                             attention_mask=inp["attention_mask"])
            logits = out.logits[:, -1].float()
        else:
            logits = self.lm(inputs_embeds=inp["prefix"].embeds, attention_mask=inp["lm_attention_mask"]).logits[:, -1]
        # the same numbers through the mirror's own forward (positions for padding differ: unused)
        again = lm_last_logits(self.lm, inp["prefix"], torch.zeros((len(inp["image_idx"]), 0), dtype=torch.long))
        assert torch.allclose(logits, again, atol=1e-5), (logits - again).abs().max()
        return logits


def count_new(row, eos):
    """Number of new tokens actually generated (EOS included), before pad filling."""
    if eos is not None and eos in row:
        return row.index(eos) + 1, True
    return len(row), False


def settings_for(case):
    s = {k: v for k, v in case.items() if k in (
        "max_new_tokens", "min_new_tokens", "num_beams", "length_penalty", "repetition_penalty",
        "no_repeat_ngram_size")}
    s.setdefault("num_beams", 1)
    return s


def run_case(runner, case_name, inp, record, tensors, singles=None, text_context=False, **kw):
    """Run one generate() case, check it against the mirror, record ids/scores."""
    out, n_in = runner.generate(inp, text_context=text_context, **kw)
    seq = out.sequences.long()
    new = seq[:, n_in:]
    nb = kw.get("num_beams", 1)
    prefix = inp["prefix"]
    if text_context:
        prefix = Prefix(prefix.embeds, prefix.mask, inp["input_ids"])
    common = dict(eos=runner.eos, pad=PAD, min_new=kw.get("min_new_tokens", 0) or 0,
                  rep=kw.get("repetition_penalty", 1.0), ngram=kw.get("no_repeat_ngram_size", 0) or 0)
    if nb == 1:
        mine, margin = mirror_greedy(runner.lm, prefix, kw["max_new_tokens"], **common)
        scores = None
    else:
        mine, scores, margin = mirror_beam(runner.lm, prefix, nb, kw["max_new_tokens"],
                                           length_penalty=kw.get("length_penalty", 1.0), **common)
    if not torch.equal(mine, new):
        raise RuntimeError(f"{case_name}: mirror decoding differs from transformers\n{mine}\n{new}")
    if nb > 1:
        hf_scores = out.sequences_scores.float()
        if not torch.allclose(scores, hf_scores, atol=1e-5, rtol=0):
            raise RuntimeError(f"{case_name}: beam scores differ {scores} vs {hf_scores}")
    if nb == 1 and inp["texts"] is None:
        # output_logits[0] is exactly what decides the first new token
        first = runner.first_step(inp)
        assert torch.allclose(out.logits[0].float(), first, atol=1e-5), (out.logits[0] - first).abs().max()

    rows = new.tolist()
    counts = [count_new(r, runner.eos) for r in rows]
    entry = {
        "settings": settings_for(kw),
        "images": [image_names(runner.name)[i] for i in inp["image_idx"]],
        "image_idx": inp["image_idx"],
        "prompts": inp["texts"],
        "input_ids": inp["input_ids"].tolist(),
        "attention_mask": inp["attention_mask"].tolist(),
        "lm_attention_mask": inp["lm_attention_mask"].tolist(),
        "input_length_in_sequences": n_in,
        "sequences": seq.tolist(),
        "new_tokens": rows,
        "new_token_counts": [c for c, _ in counts],
        "finished_by_eos": [e for _, e in counts],
        "new_text": decode(runner.tokenizer, rows, counts),
        "decision_margin_min": margin,
    }
    if text_context:
        entry["penalty_context"] = "BOS + prompt ids passed as input_ids (transformers <=4.46 legacy call)"
    if nb > 1:
        entry["sequences_scores"] = out.sequences_scores.float().tolist()
    key = f"gen_{case_name}"
    tensors[key + "_sequences"] = seq
    tensors[key + "_new_tokens"] = new
    if nb > 1:
        tensors[key + "_sequences_scores"] = out.sequences_scores.float()
    entry["tensors"] = [k for k in tensors if k.startswith(key + "_")]

    if singles is not None:
        # batched == one image at a time?
        same = []
        for r, i in enumerate(inp["image_idx"]):
            one = runner.encode([i], None if inp["texts"] is None else [inp["texts"][r]])
            o1, n1 = runner.generate(one, text_context=text_context, **kw)
            new1 = o1.sequences[:, n1:].tolist()[0]
            c1 = count_new(new1, runner.eos)[0]
            ok = new1[:c1] == rows[r][: counts[r][0]]
            if nb > 1:
                ok = ok and abs(o1.sequences_scores.item() - out.sequences_scores[r].item()) < 1e-5
            same.append(ok)
            if singles:
                sub = f"{case_name}_img{i}"
                e1 = {"settings": settings_for(kw), "images": [entry["images"][r]], "image_idx": [i],
                      "prompts": one["texts"], "input_ids": one["input_ids"].tolist(),
                      "attention_mask": one["attention_mask"].tolist(),
                      "lm_attention_mask": one["lm_attention_mask"].tolist(),
                      "input_length_in_sequences": n1, "sequences": o1.sequences.tolist(),
                      "new_tokens": [new1], "new_token_counts": [c1],
                      "finished_by_eos": [count_new(new1, runner.eos)[1]]}
                tensors[f"gen_{sub}_sequences"] = o1.sequences.long()
                tensors[f"gen_{sub}_new_tokens"] = o1.sequences[:, n1:].long()
                if nb > 1:
                    e1["sequences_scores"] = o1.sequences_scores.float().tolist()
                    tensors[f"gen_{sub}_sequences_scores"] = o1.sequences_scores.float()
                e1["tensors"] = [k for k in tensors if k.startswith(f"gen_{sub}_")]
                record[sub] = e1
        entry["batched_equals_single"] = same
        if not all(same):
            print(f"  WARNING: {case_name}: transformers' batched result differs from one-at-a-time: {same}")
    record[case_name] = entry
    return entry


def decode(tokenizer, rows, counts):
    texts = []
    for r, (c, _) in zip(rows, counts):
        try:
            texts.append(tokenizer.decode(r[:c], skip_special_tokens=True))
        except Exception:  # ids beyond the tokenizer (padded vocab rows) have no text
            texts.append(None)
    return texts


# --------------------------------------------------------------------------- checks on a candidate model


def greedy_is_varied(rows, counts):
    ok = True
    for r, (c, _) in zip(rows, counts):
        toks = r[:c]
        if len(toks) >= 6 and len(set(toks)) < 3:
            ok = False
    return ok and len({tuple(r) for r in rows}) == len(rows)


@torch.no_grad()
def pick_eos(runner):
    """Choose a token the random model emits early in greedy no-prompt decoding of exactly one
    image (so that row stops while the others continue). Returns (eos, image, position)."""
    inp = runner.encode(list(range(N_IMAGES)), None)
    gen, _ = mirror_greedy(runner.lm, inp["prefix"], 12, eos=None, pad=PAD)
    rows = gen.tolist()
    for pos in (3, 4, 2, 5):
        for r in (1, 0, 2):
            tok = rows[r][pos]
            if tok < 4 or tok >= 50265 or tok in rows[r][:pos]:
                continue
            if any(tok in rows[o] for o in range(N_IMAGES) if o != r):
                continue
            return tok, r, pos, rows
    return None, None, None, rows


# --------------------------------------------------------------------------- references


def compute_blip2_reference(model, folder, spec, images_dir, name):
    runner = Runner(model, folder, spec, images_dir, name)
    q = runner.q
    tensors = {
        "pixel_values": runner.pixel_values,
        "vision_last_hidden_state": runner.vis,
        "qformer_last_hidden_state": runner.qf,
        "language_projection": runner.proj,
    }
    # exact-size images: preprocessing is only rescale + normalise
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    for img, px in zip(runner.images, runner.pixel_values):
        manual = (torch.from_numpy(np.asarray(img.convert("RGB"))).permute(2, 0, 1).double() / 255 - mean) / std
        assert torch.allclose(px.double(), manual, atol=1e-6)

    all3 = list(range(N_IMAGES))
    inputs = {
        "no_prompt": runner.encode(all3, None),
        "prompt": runner.encode(all3, [PROMPT] * N_IMAGES),
        "padded": runner.encode([0, 1], [QUESTION, PROMPT]),
    }
    first_steps = {}
    for key, inp in inputs.items():
        logits = runner.first_step(inp)
        tensors[f"first_step_logits_{key}"] = logits
        tensors[f"first_step_input_ids_{key}"] = inp["input_ids"]
        tensors[f"first_step_attention_mask_{key}"] = inp["attention_mask"]
        tensors[f"first_step_lm_attention_mask_{key}"] = inp["lm_attention_mask"]
        top = logits.topk(2, dim=-1)
        first_steps[key] = {
            "images": [image_names(name)[i] for i in inp["image_idx"]],
            "prompts": inp["texts"],
            "input_ids": inp["input_ids"].tolist(),
            "attention_mask": inp["attention_mask"].tolist(),
            "lm_attention_mask": inp["lm_attention_mask"].tolist(),
            "argmax": top.indices[:, 0].tolist(),
            "top1_top2_gap": (top.values[:, 0] - top.values[:, 1]).tolist(),
        }
    with torch.no_grad():
        p = inputs["no_prompt"]["prefix"]
        tensors["lm_last_hidden_state_no_prompt"] = runner.lm.model.decoder(
            inputs_embeds=p.embeds, attention_mask=inputs["no_prompt"]["lm_attention_mask"]).last_hidden_state

    gen = {}
    legacy = spec["layout"] == "legacy"
    run_case(runner, "greedy_no_prompt", inputs["no_prompt"], gen, tensors, singles=True, max_new_tokens=12)
    run_case(runner, "greedy_prompt_min5", inputs["prompt"], gen, tensors, singles=False,
             max_new_tokens=12, min_new_tokens=5)
    run_case(runner, "beam3_no_prompt", inputs["no_prompt"], gen, tensors, singles=False,
             num_beams=3, max_new_tokens=10, length_penalty=1.0)
    run_case(runner, "beam5_prompt_min4", inputs["prompt"], gen, tensors, singles=True,
             num_beams=5, max_new_tokens=10, min_new_tokens=4)
    run_case(runner, "greedy_rep1p5", inputs["no_prompt"], gen, tensors, singles=False,
             max_new_tokens=12, repetition_penalty=1.5)
    run_case(runner, "greedy_norepeat2", inputs["no_prompt"], gen, tensors, singles=False,
             max_new_tokens=12, no_repeat_ngram_size=2)
    # left-padded two-prompt batch; "singles" = each prompt alone, without padding
    run_case(runner, "padded_greedy", inputs["padded"], gen, tensors, singles=False, max_new_tokens=8)
    run_case(runner, "padded_beam3", inputs["padded"], gen, tensors, singles=False,
             num_beams=3, max_new_tokens=8)
    if legacy:
        run_case(runner, "beam5_lp2", inputs["no_prompt"], gen, tensors, singles=False,
                 num_beams=5, max_new_tokens=10, length_penalty=2.0)
        # image 0 would emit EOS as its 4th token: min_new_tokens must mask it
        run_case(runner, "greedy_no_prompt_min6", inputs["no_prompt"], gen, tensors, singles=False,
                 max_new_tokens=12, min_new_tokens=6)
        # The same penalty cases with BOS (+prompt) ids as generate()'s input_ids, as the
        # transformers <= 4.46 legacy concat path called it (LAVIS passes no input_ids).
        run_case(runner, "greedy_rep1p5_text_context", inputs["no_prompt"], gen, tensors, singles=False,
                 text_context=True, max_new_tokens=12, repetition_penalty=1.5)
        run_case(runner, "greedy_norepeat2_text_context", inputs["no_prompt"], gen, tensors, singles=False,
                 text_context=True, max_new_tokens=12, no_repeat_ngram_size=2)
    run_case(runner, "lavis_default", runner.encode(all3, [""] * N_IMAGES), gen, tensors, singles=False,
             num_beams=5, max_new_tokens=30, min_new_tokens=8, repetition_penalty=1.0, length_penalty=1.0)
    return runner, tensors, first_steps, gen


@torch.no_grad()
def hf_legacy_behaviour(model, runner):
    """What Blip2ForConditionalGeneration.generate itself does with a legacy config in 4.57.6,
    and that the legacy concat equals the current scatter numerically."""
    notes = {}
    px = runner.pixel_values
    try:
        model.generate(pixel_values=px, max_new_tokens=3, do_sample=False)
        notes["generate_without_input_ids"] = "runs"
    except Exception as e:
        notes["generate_without_input_ids"] = f"raises {type(e).__name__}: {str(e)[:160]}"
    ids = runner.tokenizer([PROMPT] * N_IMAGES, return_tensors="pt")["input_ids"]
    try:
        out = model.generate(pixel_values=px, input_ids=ids, max_new_tokens=6, do_sample=False)
        new = out[:, ids.shape[1]:]
        notes["generate_with_prompt_ids"] = (
            "runs; identical new tokens for all images (image ignored): "
            f"{bool((new == new[0]).all())}; new tokens {new.tolist()}")
    except Exception as e:
        notes["generate_with_prompt_ids"] = f"raises {type(e).__name__}: {str(e)[:160]}"
    # Placeholder trick: pretend id 50265 (an unused row of the 50272 vocab) is <image>.
    saved = model.config.image_token_index
    model.config.image_token_index = IMAGE_TOKEN_ID
    try:
        ph = torch.cat([torch.full((N_IMAGES, runner.q), IMAGE_TOKEN_ID), torch.full((N_IMAGES, 1), BOS)], 1)
        o1 = model.generate(pixel_values=px, input_ids=ph, max_new_tokens=12)[:, ph.shape[1]:]
        o2 = runner.lm.generate(inputs_embeds=runner.encode(list(range(N_IMAGES)), None)["prefix"].embeds,
                                attention_mask=torch.ones(N_IMAGES, runner.q + 1, dtype=torch.long),
                                max_new_tokens=12, do_sample=False)
        notes["scatter_equals_concat"] = bool(torch.equal(o1, o2))
        assert torch.equal(o1, o2)
    finally:
        model.config.image_token_index = saved
    return notes


def check_candidate(gen, spec):
    """Acceptance of a (seed, embedding std) candidate."""
    g = gen["greedy_no_prompt"]
    problems = []
    if not greedy_is_varied(g["new_tokens"], list(zip(g["new_token_counts"], g["finished_by_eos"]))):
        problems.append("greedy not varied")
    greedy_m = min(e["decision_margin_min"] for e in gen.values()
                   if "decision_margin_min" in e and e["settings"]["num_beams"] == 1)
    beam_m = min(e["decision_margin_min"] for e in gen.values()
                 if "decision_margin_min" in e and e["settings"]["num_beams"] > 1)
    if greedy_m <= GREEDY_MARGIN_MIN:
        problems.append(f"greedy margin {greedy_m}")
    if beam_m <= BEAM_MARGIN_MIN:
        problems.append(f"beam margin {beam_m}")
    if spec.get("pick_eos"):
        if not any(gen["greedy_no_prompt"]["finished_by_eos"]):
            problems.append("eos not emitted in greedy")
        beam_eos = [k for k, e in gen.items() if e["settings"]["num_beams"] > 1 and any(e["finished_by_eos"])]
        if not beam_eos:
            problems.append("no beam case ends with eos")
    return problems, greedy_m, beam_m


def sanity_report(tensors):
    for k, v in tensors.items():
        if v.dtype == torch.int64:
            print(f"    {k:52s} {str(list(v.shape)):18s} i64")
        else:
            print(f"    {k:52s} {str(list(v.shape)):18s} max|x| {v.abs().max().item():9.4f} std {v.float().std().item():.4f}")
    for k in ("vision_last_hidden_state", "qformer_last_hidden_state", "language_projection"):
        m = tensors[k].abs().max().item()
        assert 0.3 < m < 50, (k, m)


SEMANTICS = {
    "split": (
        "new_tokens = sequences[:, input_length_in_sequences:]. opt_current: Blip2ForConditionalGeneration."
        "generate passes the full input_ids ([<image>]*Q (+ left padding) + [BOS] + prompt; built as "
        "[<image>]*Q + [BOS] when no prompt is given) to the OPT generate, so the returned sequences start "
        "with exactly those ids (input_length = Q + padded text length). opt_legacy: the LM is called with "
        "inputs_embeds only (LAVIS), so sequences are the new tokens only (input_length 0); the "
        "*_text_context cases pass BOS+prompt ids as input_ids and return them first."),
    "padding_after_eos": (
        "greedy: a row that emitted EOS gets pad_token_id (1) for every later step; beam: the returned "
        "best hypothesis is right-padded with pad_token_id to the longest returned row. new_token_counts "
        "counts tokens up to and including the first EOS."),
    "lengths": (
        "max_new_tokens / min_new_tokens count generated tokens only, for both layouts (image rows, BOS "
        "and prompt never count): max_length = max_new_tokens + input_ids length, and "
        "MinNewTokensLengthLogitsProcessor skips the input_ids length. EOS is masked (-inf) while fewer "
        "than min_new_tokens tokens exist."),
    "greedy": "next = argmax(processed logits); processors act on raw float32 logits.",
    "beam": (
        "log_softmax(logits) then processors, added to the beam's running sum. Top 2*num_beams candidates "
        "over (beam, token). A candidate among the first num_beams that ends in EOS, or any candidate when "
        "max_new_tokens is reached, is a finished hypothesis scored sum_logprobs / n_new^length_penalty "
        "(n_new includes EOS); the best num_beams finished are kept. Next running beams: best num_beams "
        "non-finished candidates. early_stopping=False: an item stops once num_beams hypotheses are "
        "finished and best_running_sum / n_so_far^length_penalty <= worst kept finished score. "
        "sequences_scores = the returned hypothesis's score. First step: only beam 0 is live (others -1e9)."),
    "penalty_context": (
        "RepetitionPenalty and NoRepeatNGram look at generate()'s input_ids plus generated tokens. "
        "opt_current: that includes the Q <image> ids (50265), left-padding ids (1), BOS and the prompt "
        "(so with no_repeat_ngram_size 2 the bigrams (50265,50265) and (50265,2)/(50265,1) exist). "
        "opt_legacy (LAVIS call): generated tokens only; *_text_context cases: BOS+prompt ids too. "
        "Repetition penalty: logit<0 -> logit*p, else logit/p, once per distinct id."),
    "positions": (
        "OPT positions are cumsum(attention_mask)-1 over the whole LM input (image rows included), "
        "+2 offset into embed_positions; left padding does not shift the real tokens. With the "
        "processor, left padding sits BETWEEN the <image> ids and BOS: [<image>]*Q [pad]* [BOS] prompt; "
        "the legacy concat gives the same [image rows][pad]*[BOS] prompt order."),
    "vocab_rows": (
        "transformers does not mask any logits: the <image> id (50265) and the padded rows up to "
        "vocab_size take part in argmax / top-k like every other id."),
    "first_step_logits": (
        "LM logits (float32) at the last input position, i.e. what decides the first new token; "
        "equal to generate's output_logits[0]."),
}


def write_reference(folder, tensors, meta):
    int_like = lambda k: ("input_ids" in k or "attention_mask" in k or k.endswith("_sequences")  # noqa: E731
                          or k.endswith("_new_tokens"))
    out = {k: (v.to(torch.int64) if int_like(k) else v.float()).clone().contiguous() for k, v in tensors.items()}
    for k, v in out.items():
        assert v.dtype == (torch.int64 if int_like(k) else torch.float32), k
    meta["shapes"] = {k: list(v.shape) for k, v in out.items()}
    meta["dtypes"] = {k: ("I64" if v.dtype == torch.int64 else "F32") for k, v in out.items()}
    save_file(out, os.path.join(folder, "reference.safetensors"), metadata={"format": "pt"})
    write_json(os.path.join(folder, "reference.json"), meta, sort_keys=False)


@torch.no_grad()
def reload_check(folder, spec, tensors, meta):
    """Load the written folder back through transformers and reproduce a few outputs."""
    model = Blip2ForConditionalGeneration.from_pretrained(folder).eval()
    lm = model.language_model
    assert lm.lm_head.weight.data_ptr() == lm.get_input_embeddings().weight.data_ptr(), "lm_head not tied"
    assert model.config.image_token_index == spec["image_token_index"]
    assert lm.generation_config.eos_token_id == meta["eos_token_id"], lm.generation_config
    assert lm.generation_config.pad_token_id == PAD and lm.generation_config.bos_token_id == BOS
    px = tensors["pixel_values"]
    assert torch.equal(model.vision_model(pixel_values=px).last_hidden_state, tensors["vision_last_hidden_state"])
    assert torch.allclose(model.get_image_features(px), tensors["language_projection"], atol=1e-6)
    g = meta["generation"]["greedy_no_prompt"]
    if spec["layout"] == "current":
        out = model.generate(pixel_values=px, max_new_tokens=12, do_sample=False)
        assert out.tolist() == g["sequences"], (out.tolist(), g["sequences"])
        b = meta["generation"]["beam5_prompt_min4"]
        proc = Blip2Processor.from_pretrained(folder)
        proc.tokenizer.padding_side = "left"
        enc = proc(images=[Image.open(os.path.join(folder, "..", "images", n)) for n in b["images"]],
                   text=b["prompts"], return_tensors="pt")
        assert enc["input_ids"].tolist() == b["input_ids"]
        out = model.generate(**enc, num_beams=5, max_new_tokens=10, min_new_tokens=4, do_sample=False)
        assert out.tolist() == b["sequences"]
    else:
        emb = torch.cat([model.get_image_features(px), lm.get_input_embeddings()(torch.full((3, 1), BOS))], 1)
        out = lm.generate(inputs_embeds=emb, attention_mask=torch.ones(emb.shape[:2], dtype=torch.long),
                          max_new_tokens=12, do_sample=False)
        assert out.tolist() == g["sequences"]
        tok = AutoTokenizer.from_pretrained(folder)
        assert tok("a photo of")["input_ids"] == [2, 102, 1345, 9] and len(tok) == 50265


def make_blip2_config(name, spec, args, images_dir):
    folder = os.path.join(args.out, name)
    tried = []
    for seed in spec["seeds"]:
        for emb_std in spec["emb_stds"]:
            eos, eos_info = spec["text"]["eos_token_id"], None
            model = build_blip2(spec, seed, emb_std, eos)
            write_blip2_folder(folder, model, spec, args.shared_tokenizer)
            if spec.get("pick_eos"):
                runner = Runner(model, folder, spec, images_dir, name)
                tok, row, pos, dry = pick_eos(runner)
                if tok is None:
                    tried.append((seed, emb_std, "no eos candidate"))
                    continue
                eos = tok
                eos_info = {"eos_token_id": tok, "fires_in": f"greedy_no_prompt, image {row} "
                            f"({image_names(name)[row]}), as new token #{pos + 1} (1-based)",
                            "dry_run_greedy_without_eos": dry}
                model = build_blip2(spec, seed, emb_std, eos)  # same weights, new eos
                write_blip2_folder(folder, model, spec, args.shared_tokenizer)
            print(f"[{name}] seed {seed}, OPT word-embedding std {emb_std}, eos {eos}")
            runner, tensors, first_steps, gen = compute_blip2_reference(model, folder, spec, images_dir, name)
            problems, greedy_m, beam_m = check_candidate(gen, spec)
            if problems:
                print(f"  rejected: {problems}")
                tried.append((seed, emb_std, problems))
                continue
            break
        else:
            continue
        break
    else:
        raise RuntimeError(f"[{name}] no seed / std passed the checks: {tried}")

    notes = hf_legacy_behaviour(model, runner) if spec["layout"] == "legacy" else {}
    vocab = model.config.text_config.vocab_size
    high_ids = sorted({t for e in gen.values() for r in e["new_tokens"] for t in r if t >= IMAGE_TOKEN_ID})
    logits_high = tensors["first_step_logits_no_prompt"][:, IMAGE_TOKEN_ID:]
    meta = {
        "config_name": name,
        "generator": "tools/make_caption_fixtures.py",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "dtype": "float32",
        "device": "cpu",
        "layout": spec["layout"],
        "seed": seed,
        "opt_word_embedding_std": emb_std,
        "rejected_candidates": [[s, e, str(p)] for s, e, p in tried],
        "image_size": spec["vision"]["image_size"],
        "num_query_tokens": runner.q,
        "image_token_index": spec["image_token_index"],
        "vocab_size": vocab,
        "tokenizer_size": len(runner.tokenizer),
        "bos_token_id": BOS,
        "pad_token_id": PAD,
        "eos_token_id": runner.eos,
        "eos_choice": eos_info or {"eos_token_id": runner.eos, "note": "the real checkpoints' eos, '\\n'"},
        "attn_implementation": model.language_model.config._attn_implementation,
        "image_processor_loaded_by_Blip2Processor": getattr(runner, "loaded_image_processor", None),
        "lm_call": (
            "Blip2ForConditionalGeneration.generate(pixel_values, input_ids, attention_mask, **settings) "
            "with inputs from Blip2Processor(images, text, padding='longest') and tokenizer.padding_side='left'; "
            "no-prompt cases call generate(pixel_values, **settings) without input_ids"
            if spec["layout"] == "current" else
            "language_model.generate(inputs_embeds=cat(language_projection(qformer(vit(px))), "
            "embed_tokens(text_ids)), attention_mask=cat(ones(Q), text_mask), **settings) "
            "(LAVIS / legacy concat; text ids from the tokenizer with padding='longest', padding_side='left'; "
            "no prompt = text '' = [BOS])"),
        "generate_defaults": "do_sample=False, early_stopping=False, num_return_sequences=1, use_cache=True",
        "images_dir": "../images",
        "images": image_names(name),
        "prompts": {"prompt": PROMPT, "question": QUESTION},
        "prompt_ids_unpadded": {t: runner.tokenizer(t)["input_ids"] for t in ("", PROMPT, QUESTION)},
        "semantics": SEMANTICS,
        "first_step": first_steps,
        "generation": gen,
        "min_greedy_top1_top2_gap": greedy_m,
        "min_beam_candidate_gap": beam_m,
        "generated_ids_at_or_above_image_token": high_ids,
        "logits_at_or_above_image_token_are_finite": bool(torch.isfinite(logits_high).all()),
        "hf_4_57_legacy_behaviour": notes,
    }
    sanity_report(tensors)
    write_reference(folder, tensors, meta)
    reload_check(folder, spec, tensors, meta)
    print(f"  min greedy top1-top2 gap {greedy_m:.5f}; min beam candidate gap {beam_m:.6f}; "
          f"eos {runner.eos}; generated ids >= {IMAGE_TOKEN_ID}: {high_ids}")
    for k, e in gen.items():
        print(f"    {k:34s} new {e['new_tokens']}"
              + (f" scores {[round(s, 4) for s in e['sequences_scores']]}" if "sequences_scores" in e else "")
              + (f" eos {e['finished_by_eos']}" if any(e["finished_by_eos"]) else ""))
    return meta


# --------------------------------------------------------------------------- bare OPT with project_in/out


def make_opt_proj(args):
    name = "opt_proj_lm"
    folder = os.path.join(args.out, name)
    rows = OPT_PROJ["prompts"]
    width = max(len(r) for r in rows)
    ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    tried = []
    for seed in OPT_PROJ["seeds"]:
        for emb_std in OPT_PROJ["emb_stds"]:
            model = build_opt(seed, emb_std, NEWLINE_EOS % OPT_PROJ["text"]["vocab_size"])
            emb = model.get_input_embeddings()
            prefix = Prefix(emb(ids).detach(), mask, ids)
            dry, _ = mirror_greedy(model, prefix, 8, eos=None, pad=PAD)
            dry = dry.tolist()
            eos = next((t for pos in (3, 2, 4) for t in [dry[0][pos]]
                        if t > 3 and t not in dry[0][:pos] and t not in dry[1]), None)
            if eos is None:
                tried.append((seed, emb_std, "no eos candidate"))
                continue
            model = build_opt(seed, emb_std, eos)
            lm = model
            with torch.no_grad():
                out = lm(input_ids=ids, attention_mask=mask)
                hidden = lm.model.decoder(input_ids=ids, attention_mask=mask).last_hidden_state
            tensors = {"input_ids": ids, "attention_mask": mask, "logits": out.logits.float(),
                       "last_hidden_state": hidden}
            gen, margins = {}, []
            for case, kw in (("greedy", dict(max_new_tokens=8)),
                             ("beam3", dict(num_beams=3, max_new_tokens=8))):
                o = lm.generate(input_ids=ids, attention_mask=mask, do_sample=False, return_dict_in_generate=True,
                                output_scores=True, **kw)
                new = o.sequences[:, width:]
                nb = kw.get("num_beams", 1)
                if nb == 1:
                    mine, m = mirror_greedy(lm, prefix, 8, eos=eos, pad=PAD)
                else:
                    mine, sc, m = mirror_beam(lm, prefix, nb, 8, eos=eos, pad=PAD)
                    assert torch.allclose(sc, o.sequences_scores, atol=1e-5)
                assert torch.equal(mine, new), (case, mine, new)
                margins.append((nb, m))
                rows_new = new.tolist()
                counts = [count_new(r, eos) for r in rows_new]
                gen[case] = {"settings": settings_for(kw), "sequences": o.sequences.tolist(), "new_tokens": rows_new,
                             "input_length_in_sequences": width, "new_token_counts": [c for c, _ in counts],
                             "finished_by_eos": [e for _, e in counts], "decision_margin_min": m}
                tensors[f"gen_{case}_sequences"] = o.sequences
                tensors[f"gen_{case}_new_tokens"] = new
                if nb > 1:
                    gen[case]["sequences_scores"] = o.sequences_scores.tolist()
                    tensors[f"gen_{case}_sequences_scores"] = o.sequences_scores
            greedy_m = min(m for nb, m in margins if nb == 1)
            beam_m = min(m for nb, m in margins if nb > 1)
            problems = []
            if greedy_m <= GREEDY_MARGIN_MIN or beam_m <= BEAM_MARGIN_MIN:
                problems.append(f"margins {greedy_m} {beam_m}")
            if not any(gen["greedy"]["finished_by_eos"]):
                problems.append("eos not emitted")
            if problems:
                tried.append((seed, emb_std, problems))
                continue
            break
        else:
            continue
        break
    else:
        raise RuntimeError(f"[{name}] no seed / std passed: {tried}")

    clean_dir(folder)
    model.save_pretrained(folder, safe_serialization=True)
    shapes, dtypes, files = read_safetensors_layout(folder)
    t = OPT_PROJ["text"]
    assert files == ["model.safetensors"] and "lm_head.weight" not in shapes
    assert shapes["model.decoder.project_in.weight"] == (t["hidden_size"], t["word_embed_proj_dim"])
    assert shapes["model.decoder.project_out.weight"] == (t["word_embed_proj_dim"], t["hidden_size"])
    assert shapes["model.decoder.embed_tokens.weight"] == (t["vocab_size"], t["word_embed_proj_dim"])
    reloaded = OPTForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids, attention_mask=mask).logits, tensors["logits"], atol=1e-6)
    meta = {
        "config_name": name,
        "generator": "tools/make_caption_fixtures.py",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "dtype": "float32",
        "purpose": (
            "OPTForCausalLM with word_embed_proj_dim (16) != hidden_size (32): embed_tokens and the tied "
            "lm_head are 16 wide, project_in (16->32) runs after the embedding lookup and before adding "
            "positions, project_out (32->16) after final_layer_norm. BLIP-2 cannot use such an OPT: "
            "language_projection outputs hidden_size-wide rows but OPT expects inputs_embeds "
            "word_embed_proj_dim wide (legacy concat fails on the width; the image-token masked_scatter "
            "silently fills the 16-wide rows with the first Q*16 projected values). No real BLIP-2 "
            "checkpoint has project_in. Keys follow the facebook/opt-* hub layout (model.decoder.*, "
            "lm_head tied and not stored). No tokenizer: inputs are token ids."),
        "seed": seed,
        "opt_word_embedding_std": emb_std,
        "rejected_candidates": [[s, e, str(p)] for s, e, p in tried],
        "vocab_size": t["vocab_size"],
        "bos_token_id": BOS,
        "pad_token_id": PAD,
        "eos_token_id": eos,
        "eos_choice": "a token the random model emits in greedy decoding of row 0 (dry run without eos)",
        "input_ids": ids.tolist(),
        "attention_mask": mask.tolist(),
        "lm_call": "OPTForCausalLM.generate(input_ids, attention_mask, do_sample=False, **settings); "
                   "sequences = input_ids + new tokens; positions cumsum(mask)-1",
        "semantics": {k: SEMANTICS[k] for k in ("padding_after_eos", "greedy", "beam", "positions")},
        "generation": gen,
        "min_greedy_top1_top2_gap": greedy_m,
        "min_beam_candidate_gap": beam_m,
    }
    write_reference(folder, tensors, meta)
    print(f"[{name}] seed {seed}, std {emb_std}, eos {eos}; {len(shapes)} tensors; margins {greedy_m:.5f} / {beam_m:.6f}")
    for k, e in gen.items():
        print(f"    {k:10s} new {e['new_tokens']} eos {e['finished_by_eos']}")
    return meta


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--shared-tokenizer", default=DEFAULT_TOKENIZER)
    ap.add_argument("--only", choices=sorted(CONFIGS) + ["opt_proj_lm"])
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=UserWarning)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")

    os.makedirs(args.out, exist_ok=True)
    images_dir = os.path.join(args.out, "images")
    clean_dir(images_dir)
    write_images(images_dir)
    for name, spec in CONFIGS.items():
        if args.only in (None, name):
            make_blip2_config(name, spec, args, images_dir)
    if args.only in (None, "opt_proj_lm"):
        make_opt_proj(args)

    # safetensors files are created 0600; make everything ordinary, readable files.
    for d, _, fs in os.walk(args.out):
        for f in fs:
            os.chmod(os.path.join(d, f), 0o644)
    print("folder sizes:")
    for d in sorted(os.listdir(args.out)):
        p = os.path.join(args.out, d)
        print(f"  {d:14s} {folder_size(p) / 1e6:.2f} MB  {sorted(os.listdir(p))}")


if __name__ == "__main__":
    main()
