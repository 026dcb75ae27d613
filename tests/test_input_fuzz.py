"""Property tests of input parsing: any bytes, array or spec gives a valid tensor or a clear error, never a crash."""

import io as pyio

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from restore import io
from restore.io import ImageError
from restore.tasks import TaskError, parse

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _valid(t):
    assert t.ndim == 4 and t.shape[0] == 1 and t.shape[1] in (1, 3) and t.dtype == torch.float32
    assert bool(torch.isfinite(t).all()) and float(t.min()) >= 0 and float(t.max()) <= 1


@SETTINGS
@given(data=st.binary(max_size=2000), suffix=st.sampled_from([".png", ".jpg", ".tif", ".bmp", ".webp"]))
def test_random_bytes(tmp_path, data, suffix):
    f = tmp_path / f"x{suffix}"
    f.write_bytes(data)
    try:
        _valid(io.read_image(f))
    except ImageError as e:
        assert str(e)


def _encoded(fmt: str, h: int, w: int, c: int) -> bytes:
    from PIL import Image

    arr = np.random.default_rng(h * w).integers(0, 255, (h, w, c) if c > 1 else (h, w), dtype=np.uint8)
    buf = pyio.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


@SETTINGS
@given(fmt=st.sampled_from(["PNG", "JPEG"]), h=st.integers(1, 40), w=st.integers(1, 40), c=st.sampled_from([1, 3]),
       cut=st.floats(0.05, 1.0))
def test_truncated_and_odd_sized_files(tmp_path, fmt, h, w, c, cut):
    data = _encoded(fmt, h, w, c)
    f = tmp_path / ("x.png" if fmt == "PNG" else "x.jpg")
    f.write_bytes(data[: max(1, int(len(data) * cut))])
    try:
        t = io.read_image(f)
        _valid(t)
        assert t.shape[-2:] == (h, w)
    except ImageError as e:
        assert "x." in str(e)  # names the file


@SETTINGS
@given(arr=arrays(dtype=st.sampled_from([np.uint8, np.uint16, np.float32, np.float64, np.int32, np.bool_]),
                  shape=st.tuples(st.integers(1, 20), st.integers(1, 20)) | st.tuples(st.integers(1, 20),
                                                                                     st.integers(1, 20),
                                                                                     st.integers(1, 5))))
def test_arbitrary_arrays(arr):
    try:
        _valid(io.to_tensor(arr))
    except ImageError as e:
        assert str(e)


@SETTINGS
@given(spec=st.text(alphabet="denoisbluraptgcm:=,.0123456789xk-_ ", max_size=40))
def test_random_task_specs(spec):
    try:
        t = parse(spec)
        assert parse(str(t)) == t
    except TaskError as e:
        assert str(e)


@SETTINGS
@given(h=st.integers(8, 40), w=st.integers(8, 40), factor=st.sampled_from([2, 3, 4]))
def test_sr_odd_sizes(h, w, factor):
    t = parse(f"sr:bicubic:factor={factor}")
    x = torch.rand(1, 3, h, w)
    if h % factor or w % factor:
        with pytest.raises(TaskError, match="not divisible"):
            t.simulate(x)
    elif min(h, w) <= 2 * factor:  # the bicubic filter reaches 2 * factor pixels
        with pytest.raises(TaskError, match="too small"):
            t.simulate(x)
    else:
        y, _ = t.simulate(x)
        assert y.shape == (1, 3, h // factor, w // factor)


@SETTINGS
@given(mh=st.integers(1, 30), mw=st.integers(1, 30))
def test_mask_of_wrong_shape(tmp_path, mh, mw):
    io.write_image(tmp_path / "m.png", torch.ones(1, 1, mh, mw))
    t = parse(f"inpaint:mask:path={tmp_path / 'm.png'}")
    try:
        m = t.mask((1, 3, 16, 16))
        assert (mh, mw) == (16, 16) and m.shape == (1, 1, 16, 16)
    except (TaskError, ImageError) as e:
        assert "16x16" in str(e) or "too small" in str(e)
