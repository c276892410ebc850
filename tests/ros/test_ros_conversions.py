"""sensor_msgs/Image and CompressedImage <-> numpy (magicfuse_ros.conversions), with real message classes."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sensor_msgs.msg", reason="ROS 2 message packages (requirements-ros.txt) not installed")
cv2 = pytest.importorskip("cv2")

from sensor_msgs.msg import CompressedImage, Image  # noqa: E402

from magicfuse_ros import conversions  # noqa: E402

RNG = np.random.default_rng(7)
RGB = RNG.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
GREY16 = RNG.integers(0, 65536, size=(5, 7), dtype=np.uint16)


def image_msg(payload: np.ndarray, encoding: str, *, pad: int = 0, bigendian: bool = False) -> Image:
    """Build an Image whose rows carry `pad` junk bytes after the pixels."""
    h, w = payload.shape[:2]
    dtype = payload.dtype.newbyteorder(">" if bigendian else "<")
    rows = np.ascontiguousarray(payload.astype(dtype)).reshape(h, -1).view(np.uint8)
    junk = np.full((h, pad), 0xAB, dtype=np.uint8)
    data = np.concatenate([rows, junk], axis=1)
    return Image(height=h, width=w, encoding=encoding, is_bigendian=int(bigendian), step=data.shape[1],
                 data=data.tobytes())


@pytest.mark.parametrize("pad", [0, 3, 17])
@pytest.mark.parametrize("encoding,payload", [
    ("rgb8", RGB),
    ("bgr8", RGB[:, :, ::-1]),
    ("rgba8", np.dstack([RGB, np.full(RGB.shape[:2], 9, np.uint8)])),
    ("bgra8", np.dstack([RGB[:, :, ::-1], np.full(RGB.shape[:2], 9, np.uint8)])),
])
def test_colour_encodings_with_padded_rows_read_as_rgb(encoding, payload, pad):
    assert np.array_equal(conversions.image_to_rgb(image_msg(payload, encoding, pad=pad)), RGB)


@pytest.mark.parametrize("pad", [0, 5])
def test_mono8_is_replicated_to_three_channels(pad):
    grey = RGB[:, :, 0]
    rgb = conversions.image_to_rgb(image_msg(grey, "mono8", pad=pad))
    assert rgb.shape == (5, 7, 3) and all(np.array_equal(rgb[:, :, c], grey) for c in range(3))


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("pad", [0, 2, 6])
def test_mono16_honours_byte_order_and_padding(bigendian, pad):
    array, encoding = conversions.image_to_array(image_msg(GREY16, "mono16", pad=pad, bigendian=bigendian))
    assert encoding == "mono16" and array.dtype == np.uint16
    assert np.array_equal(array, GREY16)


def test_mono16_scales_the_full_range_to_8_bits():
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    rgb = conversions.image_to_rgb(image_msg(values, "mono16", bigendian=True))
    assert rgb[0, :, 0].tolist() == [0, 1, 128, 255]


@pytest.mark.parametrize("mutate,needle", [
    (lambda m: setattr(m, "data", m.data[:-1]), "expected step * height"),
    (lambda m: setattr(m, "step", 7 * 3 - 1), "shorter than one rgb8 row"),
    (lambda m: (setattr(m, "width", 0), setattr(m, "height", 0), setattr(m, "step", 0), setattr(m, "data", b"")), "empty"),
    (lambda m: setattr(m, "encoding", "yuv422"), "unsupported encoding 'yuv422'"),
    (lambda m: setattr(m, "encoding", ""), "unsupported encoding ''"),
    (lambda m: (setattr(m, "width", 100000), setattr(m, "height", 100000)), "above the limit"),
    (lambda m: (setattr(m, "height", 3),), "expected step * height"),
])
def test_malformed_messages_raise_value_error_saying_why(mutate, needle):
    msg = image_msg(RGB, "rgb8")
    mutate(msg)
    with pytest.raises(ValueError, match=needle.replace("*", r"\*")):
        conversions.image_to_rgb(msg, max_pixels=10_000)


def test_mono16_step_must_be_a_multiple_of_two_bytes():
    msg = image_msg(GREY16, "mono16", pad=1)
    with pytest.raises(ValueError, match="multiple"):
        conversions.image_to_rgb(msg)


def test_pixel_limit_is_inclusive():
    assert conversions.image_to_rgb(image_msg(RGB, "rgb8"), max_pixels=35).shape == (5, 7, 3)
    with pytest.raises(ValueError, match="above the limit of 34"):
        conversions.image_to_rgb(image_msg(RGB, "rgb8"), max_pixels=34)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_image_fields_round_trip_colour(encoding):
    msg = Image(**conversions.image_fields(RGB, encoding))
    assert (msg.encoding, msg.step, msg.is_bigendian) == (encoding, 7 * 3, 0)
    assert np.array_equal(conversions.image_to_rgb(msg), RGB)


def test_image_fields_mono8_and_float():
    grey = RGB[:, :, 1]
    msg = Image(**conversions.image_fields(grey, "mono8"))
    assert msg.step == 7 and np.array_equal(conversions.image_to_array(msg)[0], grey)
    weight = RNG.random((5, 7), dtype=np.float32)
    msg = Image(**conversions.image_fields(weight, "32FC1"))
    assert msg.step == 7 * 4
    back, _ = conversions.image_to_array(msg, encodings=conversions.READABLE_ENCODINGS)
    assert np.array_equal(back, weight)


def test_image_fields_rejects_non_finite_floats_and_wrong_shapes():
    with pytest.raises(ValueError, match="NaN"):
        conversions.image_fields(np.full((2, 2), np.nan, np.float32), "32FC1")
    with pytest.raises(ValueError, match="shape"):
        conversions.image_fields(RGB[:, :, 0], "rgb8")
    with pytest.raises(ValueError, match="uint8"):
        conversions.image_fields(RGB.astype(np.float32), "rgb8")


def test_32fc1_is_not_an_accepted_input():
    msg = Image(**conversions.image_fields(np.zeros((2, 2), np.float32), "32FC1"))
    with pytest.raises(ValueError, match="unsupported encoding '32FC1'"):
        conversions.image_to_rgb(msg)


@pytest.mark.parametrize("ext", [".png", ".bmp"])
def test_lossless_compressed_images_decode_to_rgb(ext):
    ok, encoded = cv2.imencode(ext, RGB[:, :, ::-1])
    assert ok
    msg = CompressedImage(format=ext[1:], data=encoded.tobytes())
    assert np.array_equal(conversions.compressed_to_rgb(msg), RGB)


def test_compressed_jpeg_grey_and_16_bit_png():
    ok, jpeg = cv2.imencode(".jpg", np.full((8, 8, 3), 120, np.uint8))
    assert ok
    rgb = conversions.compressed_to_rgb(CompressedImage(format="jpeg", data=jpeg.tobytes()))
    assert rgb.shape == (8, 8, 3) and abs(int(rgb.mean()) - 120) <= 2
    ok, png16 = cv2.imencode(".png", GREY16)
    assert ok
    rgb = conversions.compressed_to_rgb(CompressedImage(format="png", data=png16.tobytes()))
    assert np.array_equal(rgb[:, :, 0], conversions.to_rgb8(GREY16, "mono16")[:, :, 0])


@pytest.mark.parametrize("data,needle", [(b"", "no data"), (b"not an image at all", "cannot decode")])
def test_bad_compressed_images_raise_value_error(data, needle):
    with pytest.raises(ValueError, match=needle):
        conversions.compressed_to_rgb(CompressedImage(format="jpeg", data=data))


def test_compressed_pixel_limit():
    ok, png = cv2.imencode(".png", RGB)
    with pytest.raises(ValueError, match="above the limit"):
        conversions.compressed_to_rgb(CompressedImage(format="png", data=png.tobytes()), max_pixels=10)


def _camera_info(width, height):
    from sensor_msgs.msg import CameraInfo

    info = CameraInfo(width=width, height=height, distortion_model="plumb_bob")
    info.k = [400.0, 0.0, 320.0, 0.0, 410.0, 240.0, 0.0, 0.0, 1.0]
    info.p = [400.0, 0.0, 320.0, 5.0, 0.0, 410.0, 240.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    info.d = [0.1, -0.2, 0.0, 0.0, 0.01]
    return info


def test_camera_info_of_an_output_at_the_camera_size_is_copied():
    info = _camera_info(640, 480)
    fields = conversions.camera_info_fields(info, 640, 480)
    assert (fields["width"], fields["height"]) == (640, 480)
    assert fields["k"] == list(info.k) and fields["p"] == list(info.p) and fields["d"] == list(info.d)
    assert fields["distortion_model"] == "plumb_bob"


def test_camera_info_intrinsics_scale_with_the_output_size():
    fields = conversions.camera_info_fields(_camera_info(640, 480), 320, 120)  # x / 2, y / 4
    assert (fields["width"], fields["height"]) == (320, 120)
    assert fields["k"] == [200.0, 0.0, 160.0, 0.0, 102.5, 60.0, 0.0, 0.0, 1.0]
    assert fields["p"][:8] == [200.0, 0.0, 160.0, 2.5, 0.0, 102.5, 60.0, 0.0]
