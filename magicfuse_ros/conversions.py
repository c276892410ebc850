"""sensor_msgs/Image and CompressedImage <-> numpy, without cv_bridge.

Works on anything shaped like the messages (rclpy messages, `rosbags` messages,
simple namespaces): reading only touches `height`, `width`, `encoding`,
`is_bigendian`, `step`, `data` (or `format`, `data` for compressed images), and
writing returns the field values as a dict, so that the node (rclpy) and the bag
tools (rosbags) build their own message objects from one conversion.

Array conventions: colour images are (H, W, 3) uint8 RGB, grey images (H, W)
uint8, float maps (H, W) float32. Malformed messages raise `ValueError` with a
message saying what is wrong; nothing here logs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# encoding -> (channels, numpy dtype of one channel)
_INPUT_LAYOUTS: dict[str, tuple[int, type]] = {
    "rgb8": (3, np.uint8),
    "bgr8": (3, np.uint8),
    "rgba8": (4, np.uint8),
    "bgra8": (4, np.uint8),
    "mono8": (1, np.uint8),
    "mono16": (1, np.uint16),
}
INPUT_ENCODINGS: tuple[str, ...] = tuple(_INPUT_LAYOUTS)

# encoding -> (channels, dtype) for what we publish.
_OUTPUT_LAYOUTS: dict[str, tuple[int, type]] = {
    "rgb8": (3, np.uint8),
    "bgr8": (3, np.uint8),
    "mono8": (1, np.uint8),
    "32FC1": (1, np.float32),
}
OUTPUT_ENCODINGS: tuple[str, ...] = tuple(_OUTPUT_LAYOUTS)
# What `image_to_array` can read back when asked: the inputs plus our float output.
_READABLE_LAYOUTS = {**_INPUT_LAYOUTS, "32FC1": (1, np.float32)}
READABLE_ENCODINGS: tuple[str, ...] = tuple(_READABLE_LAYOUTS)


@dataclass(frozen=True)
class ImageLayout:
    """What a validated Image message holds: its size and how to read its buffer."""

    height: int
    width: int
    encoding: str
    channels: int
    dtype: np.dtype  # with the message's byte order
    step: int

    @property
    def pixels(self) -> int:
        return self.height * self.width


def _as_bytes(data) -> np.ndarray:
    """View a message buffer (bytes, array.array('B'), numpy uint8 array) as flat uint8, no copy."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def _data_length(data) -> int:
    return int(data.nbytes) if isinstance(data, np.ndarray) else len(data)


def check_image(msg, max_pixels: int | None = None, encodings: tuple[str, ...] = INPUT_ENCODINGS) -> ImageLayout:
    """Validate an Image message's geometry against its buffer, without copying it.

    Raises ValueError on: an encoding not in `encodings`, zero or negative size, more
    than `max_pixels` pixels, `step` shorter than a row, or a buffer whose length is
    not `step * height`.
    """
    encoding = str(msg.encoding)
    if encoding not in encodings or encoding not in _READABLE_LAYOUTS:
        raise ValueError(f"unsupported encoding {encoding!r} (supported: {', '.join(encodings)})")
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ValueError(f"empty image: {width}x{height}")
    if max_pixels is not None and height * width > max_pixels:
        raise ValueError(f"image {width}x{height} has {height * width} pixels, above the limit of {max_pixels}")
    channels, base = _READABLE_LAYOUTS[encoding]
    dtype = np.dtype(base).newbyteorder(">" if msg.is_bigendian else "<")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ValueError(f"step {step} is shorter than one {encoding} row of {width} pixels ({row_bytes} bytes)")
    if step % dtype.itemsize:
        raise ValueError(f"step {step} is not a multiple of the {dtype.itemsize}-byte channel size of {encoding}")
    length = _data_length(msg.data)
    if length != step * height:
        raise ValueError(f"data has {length} bytes, expected step * height = {step} * {height} = {step * height}")
    return ImageLayout(height, width, encoding, channels, dtype, step)


def image_to_array(msg, max_pixels: int | None = None, encodings: tuple[str, ...] = INPUT_ENCODINGS) -> tuple[np.ndarray, str]:
    """Read an Image message into its native array, honouring `step` padding and byte order.

    Returns (array, encoding): (H, W, C) or (H, W) with dtype uint8/uint16 (float32
    for 32FC1) in the machine's byte order; a fresh copy, independent of the message.
    """
    layout = check_image(msg, max_pixels, encodings)
    return read_checked(msg, layout), layout.encoding


def read_checked(msg, layout: ImageLayout) -> np.ndarray:
    """The array of an Image message that `check_image` returned `layout` for (not checked again).

    (H, W, C) or (H, W), machine byte order, a fresh copy independent of the message.
    """
    rows = _as_bytes(msg.data).reshape(layout.height, layout.step)
    row_bytes = layout.width * layout.channels * layout.dtype.itemsize
    values = rows[:, :row_bytes].copy().view(layout.dtype)
    values = values.reshape(layout.height, layout.width, layout.channels).astype(layout.dtype.newbyteorder("="))
    return values[:, :, 0] if layout.channels == 1 else values


def to_rgb8(array: np.ndarray, encoding: str) -> np.ndarray:
    """Convert a native image array of `encoding` to (H, W, 3) uint8 RGB.

    Explicit rules: BGR(A) channels are swapped, alpha is dropped, grey is
    replicated; mono16 is scaled linearly from the full 16-bit range
    (v * 255 / 65535, rounded), the same rule as the project's image reader.
    """
    if encoding == "rgb8":
        rgb = array
    elif encoding == "bgr8":
        rgb = array[:, :, ::-1]
    elif encoding == "rgba8":
        rgb = array[:, :, :3]
    elif encoding == "bgra8":
        rgb = array[:, :, 2::-1]
    elif encoding in ("mono8", "mono16"):
        grey = array if encoding == "mono8" else ((array.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        rgb = np.repeat(grey[:, :, None], 3, axis=2)
    else:
        raise ValueError(f"unsupported encoding {encoding!r} (supported: {', '.join(INPUT_ENCODINGS)})")
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def image_to_rgb(msg, max_pixels: int | None = None) -> np.ndarray:
    """Image message -> (H, W, 3) uint8 RGB. Raises ValueError on a malformed message."""
    return to_rgb8(*image_to_array(msg, max_pixels))


def compressed_to_rgb(msg, max_pixels: int | None = None) -> np.ndarray:
    """CompressedImage message (JPEG, PNG, ... as OpenCV reads them) -> (H, W, 3) uint8 RGB.

    Raises ValueError when the bytes do not decode or the image exceeds `max_pixels`
    (checked from the header before the full decode where OpenCV allows it).
    """
    import cv2

    data = _as_bytes(msg.data)
    if data.size == 0:
        raise ValueError("compressed image has no data")
    decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise ValueError(f"cannot decode compressed image (format {str(getattr(msg, 'format', ''))!r}, {data.size} bytes)")
    if max_pixels is not None and decoded.shape[0] * decoded.shape[1] > max_pixels:
        raise ValueError(f"image {decoded.shape[1]}x{decoded.shape[0]} is above the limit of {max_pixels} pixels")
    if decoded.dtype == np.uint16:
        if decoded.ndim == 3:  # 16-bit colour PNG: bring to 8 bits first
            decoded = ((decoded.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        else:
            return to_rgb8(decoded, "mono16")
    if decoded.dtype != np.uint8:
        raise ValueError(f"unsupported compressed pixel type {decoded.dtype}")
    if decoded.ndim == 2:
        return to_rgb8(decoded, "mono8")
    if decoded.shape[2] == 4:
        return to_rgb8(decoded, "bgra8")
    if decoded.shape[2] == 3:
        return to_rgb8(decoded, "bgr8")
    if decoded.shape[2] == 1:
        return to_rgb8(decoded[:, :, 0], "mono8")
    raise ValueError(f"unsupported compressed image with {decoded.shape[2]} channels")


def image_fields(array: np.ndarray, encoding: str) -> dict:
    """Fields of an Image message holding `array` (everything but the header).

    `array`: (H, W, 3) uint8 RGB for rgb8/bgr8 (swapped here for bgr8),
    (H, W) uint8 for mono8, (H, W) float32 for 32FC1 (must be finite).
    Rows are packed (step = width * channels * bytes) and little-endian.
    """
    if encoding not in _OUTPUT_LAYOUTS:
        raise ValueError(f"cannot publish encoding {encoding!r} (supported: {', '.join(OUTPUT_ENCODINGS)})")
    channels, dtype = _OUTPUT_LAYOUTS[encoding]
    array = np.asarray(array)
    expected_ndim = 3 if channels == 3 else 2
    if array.ndim != expected_ndim or (channels == 3 and array.shape[2] != 3):
        raise ValueError(f"{encoding} needs an array of shape {'(H, W, 3)' if channels == 3 else '(H, W)'}, got {array.shape}")
    if array.dtype != dtype:
        raise ValueError(f"{encoding} needs {np.dtype(dtype).name} data, got {array.dtype}")
    if encoding == "bgr8":
        array = array[:, :, ::-1]
    if dtype == np.float32 and not np.isfinite(array).all():
        raise ValueError("float image contains NaN or infinity")
    array = np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<"))
    height, width = array.shape[:2]
    return {
        "height": height,
        "width": width,
        "encoding": encoding,
        "is_bigendian": 0,
        "step": width * channels * np.dtype(dtype).itemsize,
        "data": array.tobytes(),
    }


def camera_info_fields(info, width: int, height: int) -> dict:
    """Fields of a CameraInfo for an image of `width` x `height` made from a camera described by `info`.

    `info` is anything shaped like sensor_msgs/CameraInfo. Intrinsics (k, p) and the
    region of interest are scaled by width / info.width and height / info.height, so
    they stay right when an output has another size than the camera's; the same size
    (or an `info` without a size) copies them unchanged. Distortion (d), rectification
    (r), binning and the distortion model are copied. The header is the caller's.
    """
    sx = width / info.width if int(info.width) > 0 else 1.0
    sy = height / info.height if int(info.height) > 0 else 1.0
    k = [float(v) for v in info.k]
    p = [float(v) for v in info.p]
    if (sx, sy) != (1.0, 1.0):
        k = [k[0] * sx, k[1] * sx, k[2] * sx, k[3] * sy, k[4] * sy, k[5] * sy, k[6], k[7], k[8]]
        p = [p[0] * sx, p[1] * sx, p[2] * sx, p[3] * sx, p[4] * sy, p[5] * sy, p[6] * sy, p[7] * sy, *p[8:12]]
    roi = info.roi
    return {
        "height": int(height),
        "width": int(width),
        "distortion_model": str(info.distortion_model),
        "d": [float(v) for v in info.d],
        "k": k,
        "r": [float(v) for v in info.r],
        "p": p,
        "binning_x": int(info.binning_x),
        "binning_y": int(info.binning_y),
        "roi": {"x_offset": round(roi.x_offset * sx), "y_offset": round(roi.y_offset * sy),
                "height": round(roi.height * sy), "width": round(roi.width * sx), "do_rectify": bool(roi.do_rectify)},
    }
