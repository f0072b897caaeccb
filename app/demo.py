"""A small demo video, made with PyAV's own encoder so `make run` needs nothing else."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

DEMO_NAME = "demo.mp4"


def make_demo_video(path: Path, *, seconds: int = 10, fps: int = 25, width: int = 640, height: int = 360) -> Path:
    """An H.264 clip with B-frames and a 2 s GOP whose frames show their own number and time, so
    anyone can see that the frame served is the frame asked for."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial.mp4")
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"g": str(2 * fps), "bf": "2", "preset": "veryfast", "crf": "23"}
        stream.time_base = Fraction(1, fps)
        ramp = np.linspace(0, 255, width, dtype=np.uint8)
        for index in range(seconds * fps):
            hue = (index * 3) % 256
            pixels = np.zeros((height, width, 3), dtype=np.uint8)
            pixels[..., 0] = ramp
            pixels[..., 1] = hue
            pixels[..., 2] = 255 - ramp
            image = Image.fromarray(pixels)
            draw = ImageDraw.Draw(image)
            draw.rectangle((20, 20, 420, 120), fill=(0, 0, 0))
            draw.text((40, 40), f"frame {index}", fill=(255, 255, 255), font_size=36)
            draw.text((40, 80), f"t = {Fraction(index, fps)} s = {index / fps:.2f} s", fill=(255, 255, 0), font_size=24)
            frame = av.VideoFrame.from_image(image)
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    tmp.replace(path)
    return path


def ensure_demo_media(root: Path) -> Path:
    target = root / DEMO_NAME
    if not target.exists():
        make_demo_video(target)
    return target
