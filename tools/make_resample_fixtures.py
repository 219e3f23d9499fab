"""Reference outputs of Pillow's bicubic resize for `indexer/src/resample.rs`.

quarry resizes images for BLIP-2 the way the model's preprocessing does,
`image.resize((S, S), Image.BICUBIC)`, and claims to match Pillow byte for byte. This script
records what the installed Pillow really produces for a few hundred shapes (landscape, portrait,
up- and downscaling, mixed, extreme aspect ratios, sides of 1 to 3 pixels, the boundaries of
Pillow's pass-order rule, one photo-sized image to 224x224), so the Rust test
`indexer/tests/pil_resample.rs` can compare against it without Python.

The input pixels are not stored: both sides generate them from a per-case seed with
SplitMix64 (see `pixels`). Outputs are stored back to back in `outputs.bin`; `cases.json`
says where each one starts and, for every case, which pass order Pillow was seen to use
(found by comparing with two single-axis resizes chained both ways) and how far the other
order would be off, so the fixture shows that the order matters where it says so.

Development only (needs Pillow and numpy; /work/venv or tools/.venv). Deterministic: a rerun
with the same Pillow gives byte-identical files.

    .venv/bin/python tools/make_resample_fixtures.py [--out fixtures/resample]
    .venv/bin/python tools/make_resample_fixtures.py --check-rule   # ~45 000 shapes, 2-4 min

`--check-rule` writes nothing: it checks the pass-order rule ported in resample.rs
(vertical first iff dh > 0 and dh > 2 dw, with dh/dw = source minus target height/width)
against the installed Pillow on every shape in a grid and exits non-zero on a mismatch.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

MASK64 = (1 << 64) - 1


def pixels(width: int, height: int, seed: int, kind: str) -> bytes:
    """Row-major RGB bytes: the little-endian bytes of SplitMix64(seed) outputs, in order.

    kind "noise" keeps the bytes; "binary" maps each to 0 (< 128) or 255, which drives the
    bicubic overshoot into the clipping on every edge.
    """
    n = width * height * 3
    state = seed & MASK64
    out = bytearray()
    while len(out) < n:
        state = (state + 0x9E3779B97F4A7C15) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        z ^= z >> 31
        out += z.to_bytes(8, "little")
    data = bytes(out[:n])
    if kind == "binary":
        data = bytes(255 if b >= 128 else 0 for b in data)
    elif kind != "noise":
        raise ValueError(kind)
    return data


def resize(im: Image.Image, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(im.resize(size, Image.BICUBIC), dtype=np.int16)


def observed_order(im: Image.Image, size: tuple[int, int]) -> tuple[str, int]:
    """The pass order Pillow used for this resize, and how far the other order would be off.

    A resize that changes one side runs exactly one pass, so chaining two of them gives what
    each order produces; "either" when both give Pillow's bytes (one pass, or no visible effect).
    """
    (iw, ih), (ow, oh) = im.size, size
    ref = resize(im, size)
    h_first = resize(Image.fromarray(resize(im, (ow, ih)).astype(np.uint8), "RGB"), size)
    v_first = resize(Image.fromarray(resize(im, (iw, oh)).astype(np.uint8), "RGB"), size)
    dh = int(np.abs(ref - h_first).max())
    dv = int(np.abs(ref - v_first).max())
    if dh == 0 and dv == 0:
        return "either", 0
    if dh == 0:
        return "horizontal_first", dv
    if dv == 0:
        return "vertical_first", dh
    raise SystemExit(f"{im.size} -> {size}: Pillow matches neither pass order")


def rule(iw: int, ih: int, ow: int, oh: int) -> str:
    """The rule resample.rs implements."""
    dh, dw = ih - oh, iw - ow
    return "vertical_first" if dh > 0 and dh > 2 * dw else "horizontal_first"


def check_rule() -> None:
    checked = mismatches = 0
    index = 0
    for ow, oh in [(56, 56), (20, 40), (40, 20), (7, 9), (3, 3), (1, 5), (5, 1)]:
        for iw in range(1, ow * 3 + 3):
            for ih in range(1, oh * 3 + 3):
                index += 1
                im = Image.frombytes("RGB", (iw, ih), pixels(iw, ih, 0xC0FFEE + index, "noise"))
                seen, _ = observed_order(im, (ow, oh))
                if seen == "either":
                    continue
                checked += 1
                if seen != rule(iw, ih, ow, oh):
                    mismatches += 1
                    print(f"mismatch {iw}x{ih} -> {ow}x{oh}: Pillow {seen}, rule {rule(iw, ih, ow, oh)}")
    print(f"Pillow {PIL.__version__}: {index} shapes, {checked} with a visible order, {mismatches} mismatches")
    if mismatches:
        raise SystemExit(1)


def case_shapes() -> list[tuple[str, int, int, int, int, str]]:
    """(name, in_w, in_h, out_w, out_h, kind) for every case, in a fixed order."""
    cases = []

    def add(name, iw, ih, ow, oh, kind="noise"):
        cases.append((name, iw, ih, ow, oh, kind))

    # Shapes found to differ from a horizontal-first-only port, and their neighbours that did not.
    for iw, ih in [(81, 114), (76, 118), (52, 122), (31, 73), (84, 112), (67, 72), (118, 124)]:
        add("reported", iw, ih, 56, 56)
    # The pass-order rule's boundaries (vertical first iff dh > 0 and dh > 2 dw).
    for iw, ih, ow, oh in [
        (34, 48, 20, 20),  # dh = 28 = 2 dw: horizontal first
        (34, 49, 20, 20),  # dh = 29 > 2 dw: vertical first
        (70, 85, 56, 56),  # the same at the BLIP-2-style square target
        (21, 22, 20, 20),
        (21, 23, 20, 20),
        (10, 21, 20, 20),  # width grows, height shrinks by 1
        (10, 20, 20, 20),  # height kept: one pass
        (20, 60, 20, 20),  # width kept: one pass
        (60, 20, 20, 20),
        (20, 20, 20, 20),  # same size: a copy
        (50, 44, 40, 24),
        (50, 45, 40, 24),
        (24, 61, 40, 24),
        (130, 100, 30, 41),
    ]:
        add("rule_boundary", iw, ih, ow, oh)
    # Extreme aspect ratios.
    for iw, ih, ow, oh in [
        (1, 300, 5, 5),
        (300, 1, 5, 5),
        (2, 400, 3, 17),
        (400, 2, 17, 3),
        (3, 1000, 10, 10),
        (1000, 3, 10, 10),
        (7, 900, 56, 56),
        (900, 7, 56, 56),
        (1, 97, 1, 1),
        (97, 61, 1, 1),
        (61, 97, 1, 1),
        (16, 500, 16, 20),
    ]:
        add("extreme", iw, ih, ow, oh)
    # Upscaling, and one axis up while the other goes down.
    for iw, ih, ow, oh in [
        (3, 4, 32, 30),
        (5, 2, 40, 9),
        (9, 9, 31, 37),
        (2, 2, 48, 48),
        (20, 90, 45, 30),
        (90, 20, 30, 45),
    ]:
        add("upscale_mixed", iw, ih, ow, oh)
    # Every side from 1 to 3 pixels, both ways.
    for iw in (1, 2, 3):
        for ih in (1, 2, 3):
            for ow in (1, 2, 3):
                for oh in (1, 2, 3):
                    add("tiny", iw, ih, ow, oh)
    # Clipping-heavy versions of some of the above.
    for iw, ih, ow, oh in [(81, 114, 56, 56), (84, 112, 56, 56), (3, 4, 32, 30), (400, 2, 17, 3)]:
        add("binary", iw, ih, ow, oh, "binary")
    # Photo-sized portrait to the BLIP-2 input size (vertical first) and a landscape one.
    add("photo", 333, 500, 224, 224)
    add("photo", 640, 427, 56, 56)
    add("photo", 427, 640, 56, 56)
    # Random shapes: sides log-uniform, input area capped to keep generation quick.
    rng = random.Random(20261128)

    def side(lo, hi):
        return int(round(np.exp(rng.uniform(np.log(lo), np.log(hi)))))

    while sum(1 for c in cases if c[0] == "random") < 200:
        iw, ih = side(1, 420), side(1, 420)
        if iw * ih > 40_000:
            continue
        ow, oh = side(1, 28), side(1, 28)
        add("random", iw, ih, ow, oh, rng.choice(["noise", "noise", "noise", "binary"]))
    return cases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "fixtures" / "resample"))
    ap.add_argument("--check-rule", action="store_true", help="check the pass-order rule on a grid, write nothing")
    args = ap.parse_args()
    if args.check_rule:
        check_rule()
        return
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    blob = bytearray()
    records = []
    for index, (name, iw, ih, ow, oh, kind) in enumerate(case_shapes()):
        seed = 0x5EED_0000 + index
        im = Image.frombytes("RGB", (iw, ih), pixels(iw, ih, seed, kind))
        ref = resize(im, (ow, oh))
        order, other = observed_order(im, (ow, oh))
        data = ref.astype(np.uint8).tobytes()
        assert len(data) == ow * oh * 3
        records.append(
            {
                "name": name,
                "in": [iw, ih],
                "out": [ow, oh],
                "kind": kind,
                "seed": seed,
                "offset": len(blob),
                "pil_order": order,
                "other_order_max_diff": other,
            }
        )
        blob += data

    manifest = {
        "about": "Pillow Image.resize(out, Image.BICUBIC) of RGB inputs generated from seed; see "
        "tools/make_resample_fixtures.py",
        "pillow_version": PIL.__version__,
        "generator": "splitmix64 little-endian bytes, row-major RGB; kind binary maps b -> 255 if b >= 128 else 0",
        "cases": records,
    }
    (out_dir / "outputs.bin").write_bytes(bytes(blob))
    # One case per line: small, and diffs of a regeneration stay readable.
    cases_json = ",\n  ".join(json.dumps(r, separators=(",", ":")) for r in records)
    head = json.dumps({k: v for k, v in manifest.items() if k != "cases"}, indent=1)[:-2]
    (out_dir / "cases.json").write_text(f'{head},\n "cases": [\n  {cases_json}\n ]\n}}\n')
    counts = {}
    for r in records:
        counts[r["pil_order"]] = counts.get(r["pil_order"], 0) + 1
    worst = max(r["other_order_max_diff"] for r in records)
    print(
        f"Pillow {PIL.__version__}: {len(records)} cases, {len(blob)} output bytes, orders {counts}, "
        f"largest other-order difference {worst}"
    )


if __name__ == "__main__":
    main()
