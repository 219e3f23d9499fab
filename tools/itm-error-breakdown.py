#!/usr/bin/env python3
"""Where ITM re-ranking loses to ITC on synthetic scenes, by what the wrong pick gets wrong.

    python3 tools/itm-error-breakdown.py SYNTH_DIR [--model DIR] [--captions 150] [--top 5]

SYNTH_DIR is a `quarry synth --out` folder (its annotations.json carries each scene's facts).
For a seeded sample of its captions, the script takes ITC's top candidates (`quarry
embed-image` / `embed-text`, max over the 32 query vectors), scores each with `quarry match`
(ITM logit + ITC, LAVIS's re-ranking score) and counts, for each method's wrong top-1, whether
that image has the caption's colours, its shapes and its kind of scene (one object, a pair,
a count). `quarry eval` gives the recall; this says *why* one method ranks worse than the other.

Needs numpy; uses the quarry binary in target/release unless QUARRY is set.
"""

import argparse
import collections
import json
import os
import random
import subprocess
import sys

import numpy as np

QUARRY = os.environ.get("QUARRY", "target/release/quarry")


def quarry(args):
    return subprocess.run([QUARRY, *args], check=True, capture_output=True, text=True).stdout


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("synth_dir")
    p.add_argument("--model", help="retrieval model folder (default: the built-in demo model)")
    p.add_argument("--captions", type=int, default=150, help="captions sampled (seed 0)")
    p.add_argument("--top", type=int, default=5, help="ITC candidates re-ranked per caption")
    a = p.parse_args()
    model = ["--model", a.model] if a.model else []

    scenes = json.load(open(os.path.join(a.synth_dir, "annotations.json")))
    paths = [os.path.join(a.synth_dir, s["image"]) for s in scenes]
    captions = [(i, c) for i, s in enumerate(scenes) for c in s["caption"]]

    rows = [json.loads(l) for l in quarry(["embed-image", "--json", *model, *paths]).splitlines()]
    by_path = {os.path.normpath(r["path"]): np.array(r["query_embeds"]) for r in rows}
    images = np.stack([by_path[os.path.normpath(p)] for p in paths])  # [N, Q, D]

    random.seed(0)
    sample = random.sample(captions, min(a.captions, len(captions)))
    texts = [c for _, c in sample]
    text_rows = [json.loads(l) for l in quarry(["embed-text", "--json", *model, *texts]).splitlines()]
    text_vecs = np.array([r["embed"] for r in text_rows])  # [T, D]
    itc = np.einsum("nqd,td->tnq", images, text_vecs).max(-1)  # [T, N]

    def facts(i):
        s = scenes[i]["scene"]
        return (
            sorted({o["color"] for o in s["objects"]}),
            sorted({o["shape"] for o in s["objects"]}),
            s["kind"],
        )

    def what_differs(own, pick):
        f, g = facts(own), facts(pick)
        names = ("colours", "shapes", "kind")
        return ", ".join(("same " if x == y else "other ") + n for x, y, n in zip(f, g, names))

    wrong = {"ITC": collections.Counter(), "ITM + ITC": collections.Counter()}
    right = collections.Counter()
    for t, (own, text) in enumerate(sample):
        top = np.argsort(-itc[t])[: a.top]
        scored = []
        for j in top:
            m = json.loads(quarry(["match", "--json", *model, "--image", paths[j], "--text", text]))
            scored.append((m["itm_logit"] + float(itc[t, j]), int(j)))
        picks = {"ITC": int(top[0]), "ITM + ITC": max(scored)[1]}
        for method, pick in picks.items():
            # A caption true of several scenes (identical strings) counts as right on any.
            if text in scenes[pick]["caption"]:
                right[method] += 1
            else:
                wrong[method][what_differs(own, pick)] += 1

    n = len(sample)
    print(f"{n} captions of {a.synth_dir}, top-{a.top} ITC candidates re-ranked")
    for method in wrong:
        print(f"\n{method}: top-1 right {right[method]}/{n}; wrong picks by what they get wrong:")
        for k, v in wrong[method].most_common():
            print(f"  {v:4d}  {k}")


if __name__ == "__main__":
    sys.exit(main())
