#!/usr/bin/env python3
"""Makes the phone- and camera-format samples in fixtures/formats/ and their reference decodes.

Samples are encoded with free tools from one synthetic photo-like picture (gradients, a sharp
red block, noise: chroma edges and fine texture are where decoders differ):
  * HEIC and AVIF with pillow-heif (libheif + x265) and Pillow's own AVIF plugin (libavif),
    8- and 10-bit, with EXIF, an alpha channel, a Display P3 ICC profile, and a rotation;
  * JPEG XL with libjxl's cjxl (Debian libjxl-tools), lossy 8-bit and lossless 16-bit;
  * camera RAW structures (DNG, NEF, CR2, ARW) written field by field, checked with exiftool.
References are what Python users get: Pillow (+ pillow-heif) `Image.open(f).convert("RGB")`
for HEIC and AVIF; for JPEG XL, which Pillow does not read, libjxl's reference decoder djxl
(8 bits per sample). tests/integration/formats.rs decodes every sample and compares.

  python3 -m venv /tmp/pyref && /tmp/pyref/bin/pip install pillow pillow-heif numpy
  apt-get install libjxl-tools libavif-bin libimage-exiftool-perl
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
icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
icc[24:36] = struct.pack(">6H", 2026, 1, 1, 0, 0, 0)  # the header's creation time: reproducible
icc = bytes(icc)
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

# Camera RAW files: TIFF structures laid out as the cameras' formats are (DNG 1.4, Nikon NEF,
# Canon CR2, Sony ARW), holding a CFA mosaic, a small RGB thumbnail and a full-size JPEG
# preview. They are synthetic (no camera here), written field by field below and checked with
# exiftool, which must recognise each format and find the same preview.
SHORT, LONG, ASCII, BYTE = 3, 4, 2, 1


def tiff_file(ifd0, little=True, cr2=False):
    """Serialises a tree of IFDs: each {"entries": [...], "next": ifd|None}; an entry is
    (tag, type, values), (tag, "blob", bytes) for an offset to data or (tag, "ifds", [ifd, ...])
    for offsets to other IFDs."""
    e = "<" if little else ">"
    order, blobs = [], []

    def visit(ifd):
        order.append(ifd)
        for entry in ifd["entries"]:
            if entry[1] == "ifds":
                for child in entry[2]:
                    visit(child)
        if ifd.get("next") is not None:
            visit(ifd["next"])

    visit(ifd0)
    header = 16 if cr2 else 8
    offsets, at = {}, header
    for ifd in order:
        offsets[id(ifd)] = at
        at += 2 + 12 * len(ifd["entries"]) + 4
    blob_at = {}

    def place(data):
        nonlocal at
        if at % 2:
            at += 1
        blob_at[len(blobs)] = at
        blobs.append((at, data))
        at += len(data)
        return blob_at[len(blobs) - 1]

    encoded = {}
    for ifd in order:
        rows = []
        for tag, kind, value in sorted(ifd["entries"], key=lambda x: x[0]):
            if kind == "blob":
                rows.append((tag, LONG, 1, struct.pack(e + "I", place(value))))
                continue
            if kind == "ifds":
                offs = [offsets[id(c)] for c in value]
                data = struct.pack(e + "I" * len(offs), *offs)
                rows.append((tag, LONG, len(offs), data if len(data) <= 4 else struct.pack(e + "I", place(data))))
                continue
            if kind == ASCII:
                data = value.encode() + b"\0"
                count = len(data)
            elif kind == BYTE:
                data, count = bytes(value), len(value)
            else:
                fmt = "H" if kind == SHORT else "I"
                data, count = struct.pack(e + fmt * len(value), *value), len(value)
            if len(data) > 4:
                data = struct.pack(e + "I", place(data))
            rows.append((tag, kind, count, data))
        encoded[id(ifd)] = rows
    out = bytearray(at)
    out[0:4] = b"II*\0" if little else b"MM\0*"
    out[4:8] = struct.pack(e + "I", offsets[id(order[0])])
    if cr2:
        out[8:12] = b"CR\x02\0"
        out[12:16] = struct.pack(e + "I", offsets[id(order[-1])])
    for ifd in order:
        pos = offsets[id(ifd)]
        rows = encoded[id(ifd)]
        out[pos:pos + 2] = struct.pack(e + "H", len(rows))
        for i, (tag, kind, count, data) in enumerate(rows):
            p = pos + 2 + 12 * i
            out[p:p + 8] = struct.pack(e + "HHI", tag, kind, count)
            out[p + 8:p + 12] = data.ljust(4, b"\0")
        nxt = ifd.get("next")
        out[pos + 2 + 12 * len(rows):pos + 6 + 12 * len(rows)] = struct.pack(e + "I", offsets[id(nxt)] if nxt is not None else 0)
    for pos, data in blobs:
        out[pos:pos + len(data)] = data
    return bytes(out)


def jpeg_bytes(arr, quality=90):
    import io
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def exif_ifd(when, offset=None):
    entries = [(0x9003, ASCII, when)]
    if offset:
        entries.append((0x9011, ASCII, offset))
    return {"entries": entries}


thumb = np.ascontiguousarray(base[::5, ::5][:24, :32])
mosaic = bytes(W * H * 2)


def rgb_strip_ifd(arr, extra=()):
    h, w = arr.shape[:2]
    return [(0x0100, LONG, [w]), (0x0101, LONG, [h]), (0x0102, SHORT, [8, 8, 8]), (0x0103, SHORT, [1]),
            (0x0106, SHORT, [2]), (0x0111, "blob", arr.tobytes()), (0x0115, SHORT, [3]),
            (0x0116, LONG, [h]), (0x0117, LONG, [arr.size]), *extra]


def cfa_ifd():
    return {"entries": [(0x00FE, LONG, [0]), (0x0100, LONG, [W]), (0x0101, LONG, [H]), (0x0102, SHORT, [16]),
                        (0x0103, SHORT, [1]), (0x0106, SHORT, [32803]), (0x0111, "blob", mosaic),
                        (0x0115, SHORT, [1]), (0x0116, LONG, [H]), (0x0117, LONG, [len(mosaic)]),
                        (0x828D, SHORT, [2, 2]), (0x828E, BYTE, [0, 1, 1, 2])]}


preview = jpeg_bytes(base)
raws = {}
# DNG: preview in a SubIFD as a one-strip JPEG-compressed YCbCr image; orientation 6.
raws["camera.dng"] = (tiff_file({"entries": rgb_strip_ifd(thumb, [
    (0x00FE, LONG, [1]), (0x010F, ASCII, "QuarryCam"), (0x0110, ASCII, "RAW 1"), (0x0112, SHORT, [6]),
    (0xC612, BYTE, [1, 4, 0, 0]), (0x8769, "ifds", [exif_ifd("2022:08:15 07:45:00", "+09:00")]),
    (0x014A, "ifds", [cfa_ifd(), {"entries": [
        (0x00FE, LONG, [1]), (0x0100, LONG, [W]), (0x0101, LONG, [H]), (0x0102, SHORT, [8, 8, 8]),
        (0x0103, SHORT, [7]), (0x0106, SHORT, [6]), (0x0111, "blob", preview), (0x0115, SHORT, [3]),
        (0x0116, LONG, [H]), (0x0117, LONG, [len(preview)])]}])])}), 6,
    dict(captured_at="2022-08-15T07:45:00+09:00", camera_make="QuarryCam", camera_model="RAW 1"))
# NEF: big-endian; preview through JPEGInterchangeFormat in the first SubIFD.
raws["camera.nef"] = (tiff_file({"entries": rgb_strip_ifd(thumb, [
    (0x00FE, LONG, [1]), (0x010F, ASCII, "NIKON CORPORATION"), (0x0110, ASCII, "NIKON D-QUARRY"),
    (0x0112, SHORT, [1]), (0x8769, "ifds", [exif_ifd("2020:02:29 12:00:00")]),
    (0x014A, "ifds", [{"entries": [(0x00FE, LONG, [1]), (0x0201, "blob", preview), (0x0202, LONG, [len(preview)])]},
                      cfa_ifd()])])}, little=False), 1,
    dict(captured_at="2020-02-29T12:00:00", camera_make="NIKON CORPORATION", camera_model="NIKON D-QUARRY"))
# CR2: the "CR" marker; IFD0 a full-size JPEG strip (orientation 8), IFD1 a small JPEG
# thumbnail, IFD2 an RGB strip, IFD3 the sensor data as lossless JPEG (SOF3), never a preview.
small = jpeg_bytes(np.ascontiguousarray(base[::4, ::4]))
lossless = b"\xff\xd8\xff\xc3\x00\x0b\x0c\x00\x78\x00\xa0\x01\x01\x11\x00" + bytes(64) + b"\xff\xd9"
ifd3 = {"entries": [(0x0103, SHORT, [6]), (0x0111, "blob", lossless), (0x0117, LONG, [len(lossless)])]}
ifd2 = {"entries": rgb_strip_ifd(thumb), "next": ifd3}
ifd1 = {"entries": [(0x0103, SHORT, [6]), (0x0201, "blob", small), (0x0202, LONG, [len(small)])], "next": ifd2}
raws["camera.cr2"] = (tiff_file({"entries": [
    (0x0100, LONG, [W]), (0x0101, LONG, [H]), (0x0103, SHORT, [6]), (0x010F, ASCII, "Canon"),
    (0x0110, ASCII, "Canon EOS QUARRY"), (0x0111, "blob", preview), (0x0112, SHORT, [8]),
    (0x0117, LONG, [len(preview)]), (0x8769, "ifds", [exif_ifd("2019:12:31 23:59:59", "-03:00")])],
    "next": ifd1}, cr2=True), 8,
    dict(captured_at="2019-12-31T23:59:59-03:00", camera_make="Canon", camera_model="Canon EOS QUARRY"))
# ARW: the preview through JPEGInterchangeFormat in IFD0; orientation 3.
raws["camera.arw"] = (tiff_file({"entries": [
    (0x00FE, LONG, [1]), (0x010F, ASCII, "SONY"), (0x0110, ASCII, "ILCE-QUARRY"), (0x0112, SHORT, [3]),
    (0x0201, "blob", preview), (0x0202, LONG, [len(preview)]),
    (0x8769, "ifds", [exif_ifd("2023:03:03 03:03:03")]), (0x014A, "ifds", [cfa_ifd()])]}), 3,
    dict(captured_at="2023-03-03T03:03:03", camera_make="SONY", camera_model="ILCE-QUARRY"))
# A DNG with the mosaic only: refused with a reason, never indexed as its thumbnail.
(out / "no-preview.dng").write_bytes(tiff_file({"entries": rgb_strip_ifd(thumb, [
    (0x00FE, LONG, [1]), (0xC612, BYTE, [1, 4, 0, 0]), (0x014A, "ifds", [cfa_ifd()])])}))

transpose = {1: None, 3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_270, 8: Image.Transpose.ROTATE_90}
for name, (data, orientation, facts) in raws.items():
    (out / name).write_bytes(data)
    # exiftool (an independent TIFF/RAW reader) must see the format and a preview of this size.
    info = json.loads(subprocess.run(["exiftool", "-j", "-FileType", "-PreviewImage", "-JpgFromRaw",
                                      "-b", str(out / name)], capture_output=True, check=True).stdout)[0]
    found = [v for k, v in info.items() if k in ("PreviewImage", "JpgFromRaw")]
    assert found, f"exiftool finds no preview in {name}: {info}"
    import base64
    assert any(base64.b64decode(v.split(":", 1)[1]) == preview for v in found if v.startswith("base64:")), \
        f"exiftool's preview of {name} is not the embedded one"
    img = Image.open(__import__("io").BytesIO(preview)).convert("RGB")
    if transpose[orientation]:
        img = img.transpose(transpose[orientation])
    img.save(out / (name + ".ref.png"))
    samples[name] = dict(width=img.size[0], height=img.size[1], orientation=orientation, **facts,
                         reference=f"Pillow {Image.__version__} decoding the embedded preview JPEG, "
                                   f"turned by the RAW's orientation; exiftool file type {info['FileType']}")

# Reference decodes.
for name in [n for n in samples if not n.startswith("camera.")]:
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
