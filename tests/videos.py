"""Helper for the tests that need real video files: encode frames with PyAV."""

from __future__ import annotations

import av
import numpy as np
import pytest


def encode(path, codec: str, frames: np.ndarray, fps: int = 30) -> str:
    """Write `frames` with PyAV; skips the test when the codec is missing from the av wheel."""
    try:
        av.codec.Codec(codec, "w")
    except Exception:
        pytest.skip(f"the installed PyAV has no {codec} encoder")
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.bit_rate = 4_000_000  # near-lossless, so decoded frames can be matched to the source
        if codec == "libx264":
            stream.options = {"crf": "10"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)
