#!/usr/bin/env python3
"""Makes the phone- and camera-format samples in fixtures/formats/ and their reference decodes.

Samples are encoded with free tools from one synthetic photo-like picture (gradients, a sharp
red block, noise: chroma edges and fine texture are where decoders differ):
  * HEIC and AVIF with pillow-heif (libheif + x265) and Pillow's own AVIF plugin (libavif),
    8- and 10-bit, with EXIF, an alpha channel, a Display P3 ICC profile, and a rotation;
  * JPEG XL with libjxl's cjxl (Debian libjxl-tools), lossy 8-bit and lossless 16-bit.
References are what Python users get: Pillow (+ pillow-heif) `Image.open(f).convert("RGB")`
for HEIC and AVIF; for JPEG XL, which Pillow does not read, libjxl's reference decoder djxl
(8 bits per sample). tests/integration/formats.rs decodes every sample and compares.

  python3 -m venv /tmp/pyref && /tmp/pyref/bin/pip install pillow pillow-heif numpy
  apt-get install libjxl-tools
  /tmp/pyref/bin/python tools/make-format-samples.py fixtures/formats
"""
import json
import struct
import zlib
import pathlib
import subprocess
import sys

import numpy as np
import pillow_heif
from PIL import Image, ImageCms, features

pillow_heif.register_heif_opener()
out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "fixtures/formats")
out.mkdir(parents=True, exist_ok=True)


def picture(w, h, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], -1).astype(np.int64)
    img[h // 4 : h // 2, w // 4 : w // 2] = [200, 30, 40]
    img[h // 2 :, 2 * w // 3 :] = [20, 180, 60]
    return np.clip(img + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)


def exif(when, offset):
    e = Image.Exif()
    e[0x010F] = "QuarryCam"  # Make
    e[0x0110] = "Model 7"  # Model
    ifd = e.get_ifd(0x8769)
    ifd[0x9003] = when  # DateTimeOriginal
    ifd[0x9011] = offset  # OffsetTimeOriginal
    return e.tobytes()


W, H = 160, 120
base = picture(W, H)
samples = {}

# HEIC, 8-bit 4:2:0 with EXIF (what an iPhone writes, minus the grid tiling).
Image.fromarray(base).save(out / "photo.heic", quality=80, exif=exif("2023:06:01 10:20:30", "+02:00"))
samples["photo.heic"] = dict(width=W, height=H, captured_at="2023-06-01T10:20:30+02:00",
                             camera_make="QuarryCam", camera_model="Model 7")
# HEIC, 10-bit (iPhone HDR photos are 10-bit).
h10 = pillow_heif.from_bytes(mode="RGB;16", size=(W, H), data=(base.astype(np.uint16) * 257).tobytes())
h10.save(out / "photo-10bit.heic", quality=80)
samples["photo-10bit.heic"] = dict(width=W, height=H)
# HEIC with alpha (dropped, not composited) and an embedded ICC profile (values kept as stored).
rgba = np.dstack([base, np.tile(np.arange(W, dtype=np.uint8), (H, 1))])
icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
Image.fromarray(rgba, "RGBA").save(out / "alpha-icc.heic", quality=80, icc_profile=icc)
samples["alpha-icc.heic"] = dict(width=W, height=H)
# HEIC whose EXIF says orientation 6: pillow-heif stores it as a rotation property (irot),
# which readers apply; the image is displayed portrait.
rot = Image.Exif()
rot[0x0112] = 6
Image.fromarray(base).save(out / "rotated.heic", quality=80, exif=rot.tobytes())
samples["rotated.heic"] = dict(width=H, height=W)

# AVIF, 8-bit with EXIF (Pillow's plugin, libavif) and 10-bit.
Image.fromarray(base).save(out / "photo.avif", quality=80, exif=exif("2024:12:24 18:00:00", "+01:00"))
samples["photo.avif"] = dict(width=W, height=H, captured_at="2024-12-24T18:00:00+01:00",
                             camera_make="QuarryCam", camera_model="Model 7")

# JPEG XL: lossy 8-bit (VarDCT, XYB) and lossless 16-bit (modular).
Image.fromarray(base).save(out / "src8.png")
subprocess.run(["cjxl", str(out / "src8.png"), str(out / "photo.jxl"), "-d", "1.0", "--quiet"], check=True)
samples["photo.jxl"] = dict(width=W, height=H)
deep = (base.astype(np.uint16) * 257 + np.random.default_rng(1).integers(0, 256, base.shape)).astype(">u2")



def png16(path, arr):
    """Pillow cannot write 16-bit RGB PNGs; this writes one by hand."""
    raw = b"".join(b"\0" + row.tobytes() for row in arr)
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", arr.shape[1], arr.shape[0], 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


png16(out / "src16.png", deep)
subprocess.run(["cjxl", str(out / "src16.png"), str(out / "lossless-16bit.jxl"), "-d", "0", "--quiet"], check=True)
samples["lossless-16bit.jxl"] = dict(width=W, height=H)
# AVIF, 10-bit, from the same 16-bit picture with libavif's avifenc (Debian libavif-bin).
subprocess.run(["avifenc", "-d", "10", "--min", "8", "--max", "16", str(out / "src16.png"), str(out / "photo-10bit.avif")],
               check=True, capture_output=True)
samples["photo-10bit.avif"] = dict(width=W, height=H)
(out / "src8.png").unlink()
(out / "src16.png").unlink()

# Reference decodes.
for name in list(samples):
    f = out / name
    ref = out / (name + ".ref.png")
    if name.endswith(".jxl"):
        # djxl 0.7 writes PNGs at the source depth whatever --bits_per_sample says, and Pillow
        # misreads 16-bit RGB PNGs; PPM at the source depth is read here and rounded to 8 bits
        # (v / 257 to nearest: the 8-bit level closest to the decoded value).
        ppm = out / (name + ".ppm")
        subprocess.run(["djxl", str(f), str(ppm), "--quiet"], check=True, capture_output=True)
        data = ppm.read_bytes()
        ppm.unlink()
        _, w, h, maxval = (int(v) if v.isdigit() else v for v in data.split(maxsplit=4)[:4])
        dtype = ">u2" if maxval > 255 else np.uint8
        body = data[len(data) - w * h * 3 * np.dtype(dtype).itemsize:]
        levels = np.frombuffer(body, dtype).reshape(h, w, 3).astype(np.float64)
        rgb8 = np.clip(np.floor(levels * 255.0 / maxval + 0.5), 0, 255).astype(np.uint8)
        Image.fromarray(rgb8).save(ref)
        samples[name]["reference"] = "djxl 0.7 (libjxl) at the source depth, rounded to 8 bits"
    else:
        img = Image.open(f)
        img.convert("RGB").save(ref)
        samples[name]["reference"] = (
            f"Pillow {Image.__version__} + pillow-heif {pillow_heif.__version__} "
            f"(libheif {pillow_heif.libheif_info()['libheif']}), Image.open(f).convert('RGB')"
            if name.endswith(".heic") else
            f"Pillow {Image.__version__} (libavif {features.version('avif')}), Image.open(f).convert('RGB')")
    w, h = Image.open(ref).size
    samples[name]["width"], samples[name]["height"] = w, h

(out / "samples.json").write_text(json.dumps(samples, indent=2) + "\n")
print(json.dumps(samples, indent=2))
