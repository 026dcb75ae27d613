
import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from restore import io
from restore.io import ImageError


def test_png_round_trip_8_and_16_bit(tmp_path, clean_rgb):
    for bits, tol in ((8, 0.5 / 255 + 1e-6), (16, 0.5 / 65535 + 1e-6)):
        p = io.write_image(tmp_path / f"x{bits}.png", clean_rgb, bit_depth=bits)
        back = io.read_image(p)
        assert back.shape == clean_rgb.shape and back.dtype == torch.float32
        assert float((back - clean_rgb).abs().max()) <= tol
        import cv2  # Pillow (imageio) would report 16-bit colour PNGs as 8-bit
        assert cv2.imread(str(p), cv2.IMREAD_UNCHANGED).dtype == (np.uint8 if bits == 8 else np.uint16)


def test_grey_and_16bit_files(tmp_path):
    arr = (np.arange(64 * 32).reshape(32, 64) * 30).astype(np.uint16)
    iio.imwrite(tmp_path / "g16.png", arr)
    t = io.read_image(tmp_path / "g16.png")
    assert t.shape == (1, 1, 32, 64)
    assert float(t.max()) == pytest.approx(arr.max() / 65535, abs=1e-6)


def test_rgba_drops_alpha_with_warning(tmp_path):
    rgba = np.zeros((16, 16, 4), np.uint8); rgba[..., 0] = 200; rgba[..., 3] = 10
    iio.imwrite(tmp_path / "a.png", rgba)
    with pytest.warns(UserWarning, match="alpha channel is dropped"):
        t = io.read_image(tmp_path / "a.png")
    assert t.shape == (1, 3, 16, 16) and float(t[0, 0, 0, 0]) == pytest.approx(200 / 255)


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"this is not an image at all", "cannot read"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "cannot read"),  # truncated PNG
])
def test_unreadable_files(tmp_path, content, message):
    f = tmp_path / "bad.png"
    f.write_bytes(content)
    with pytest.raises(ImageError, match=message) as e:
        io.read_image(f)
    if content:  # one line naming the file and what it should be, without imageio's plugin install hints
        assert "bad.png" in str(e.value) and "not a PNG, JPEG" in str(e.value)
        assert "pip install" not in str(e.value) and "\n" not in str(e.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such image file"):
        io.read_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="is a folder"):
        io.read_image(tmp_path)


def test_sizes():
    with pytest.raises(ImageError, match="too small"):
        io.to_tensor(np.zeros((1, 1), np.uint8))
    with pytest.raises(ImageError, match="too small"):
        io.to_tensor(np.zeros((1, 500), np.uint8))
    with pytest.raises(ImageError, match="megapixels is over the limit"):
        io.to_tensor(np.zeros((100, 100), np.uint8), max_pixels=5000)


def test_the_pixel_limit_follows_the_environment(monkeypatch):
    monkeypatch.setenv(io.LIMIT_ENV, "")
    assert io.pixel_limit() == io.MAX_PIXELS == 4096 * 4096
    monkeypatch.setenv(io.LIMIT_ENV, "0.005")
    assert io.pixel_limit() == 5000
    with pytest.raises(ImageError, match=r"100x100 = 0.01 megapixels is over the limit of 0.005 megapixels.*"
                                         r"--max-megapixels, \$RESTORE_MAX_MEGAPIXELS"):
        io.to_tensor(np.zeros((100, 100), np.uint8))
    assert io.to_tensor(np.zeros((50, 100), np.uint8)).shape == (1, 1, 50, 100)
    monkeypatch.setenv(io.LIMIT_ENV, "40")
    assert io.to_tensor(np.zeros((100, 100), np.uint8)).shape == (1, 1, 100, 100)
    for bad in ("lots", "0", "-3", "inf", "nan"):
        monkeypatch.setenv(io.LIMIT_ENV, bad)
        with pytest.raises(ValueError, match="RESTORE_MAX_MEGAPIXELS must be a positive number"):
            io.pixel_limit()


def test_arrays_tensors_pil():
    arr = np.random.default_rng(0).random((20, 30, 3)).astype(np.float32)
    a = io.to_tensor(arr)
    assert a.shape == (1, 3, 20, 30)
    assert torch.equal(io.to_tensor(np.moveaxis(arr, -1, 0)), a)  # (C, H, W) arrays too
    assert torch.equal(io.to_tensor(a), a) and torch.equal(io.to_tensor(a[0]), a)
    pil = Image.fromarray((arr * 255).astype(np.uint8))
    assert float((io.to_tensor(pil) - a).abs().max()) < 1 / 255 + 1e-6
    assert io.to_tensor(np.zeros((10, 12), np.uint8)).shape == (1, 1, 10, 12)


@pytest.mark.parametrize("bad, message", [
    (np.full((10, 10), np.nan, np.float32), "NaN or infinite"),
    (np.full((10, 10), np.inf, np.float64), "NaN or infinite"),
    (np.full((10, 10), 3.0, np.float32), r"must lie in \[0, 1\]"),
    (np.zeros((10, 10, 5), np.uint8), "1, 3 or 4 channels"),
    (np.zeros((2, 10, 10, 3), np.uint8), "2-D grey or 3-D colour"),
    (np.zeros((10, 10), np.int64), "8 or 16 bits"),
    (np.zeros((10, 10), np.complex64), "unsupported image data type"),
    ("not-a-file.png", "no such image file"),
    ({"a": 1}, "cannot use an object of type dict"),
    (torch.zeros(2, 3, 10, 10), "batch of 2"),
])
def test_bad_arrays(bad, message):
    with pytest.raises((ImageError, FileNotFoundError), match=message):
        io.to_tensor(bad)


def test_observation_may_exceed_range_by_noise():
    y = np.random.default_rng(0).normal(0.5, 0.3, (16, 16)).astype(np.float32)
    with pytest.raises(ImageError):
        io.to_tensor(y)
    t = io.to_tensor(y, observation=True)
    assert float(t.min()) < 0 or float(t.max()) > 1  # kept, not clipped
    with pytest.raises(ImageError, match=r"\[-2, 3\] for a noisy observation"):
        io.to_tensor(y * 10, observation=True)


def test_writes_are_atomic(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    io.write_image(target, torch.rand(1, 3, 8, 8))
    before = target.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(io.iio, "imwrite", boom)
    with pytest.raises(RuntimeError):
        io.write_image(target, torch.rand(1, 3, 8, 8))
    assert target.read_bytes() == before  # old file intact
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # no partial file left


@pytest.mark.parametrize("orientation", range(1, 9))
def test_upright_matches_pillows_exif_transpose(orientation):
    from PIL import ImageOps

    a = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    tagged = Image.fromarray(a)
    tagged.getexif()[0x0112] = orientation
    assert np.array_equal(io.upright(a, orientation), np.asarray(ImageOps.exif_transpose(tagged)))


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_files_with_an_exif_orientation_come_upright(tmp_path, suffix):
    # a phone photo held upright is stored landscape with orientation 6: restore must see it as the viewer shows it
    a = np.zeros((40, 60, 3), np.uint8)
    a[:10] = (255, 0, 0)  # a red band along the stored top edge
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6
    path = tmp_path / f"phone{suffix}"
    im.save(path, exif=exif.tobytes(), **({"quality": 95} if suffix == ".jpg" else {}))
    x = io.read_image(path)
    assert x.shape == (1, 3, 60, 40)  # turned 90 degrees clockwise: the band is now the right-hand column
    assert x[0, 0, :, -10:].mean() > 0.9 and x[0, 0, :, :10].mean() < 0.1
    assert io.exif_orientation(path) == 6
    tagged = Image.open(path)
    assert io.to_tensor(tagged).shape == (1, 3, 60, 40)  # a PIL image the caller opened: the same
    untagged = tmp_path / f"plain{suffix}"
    Image.fromarray(a).save(untagged)
    assert io.read_image(untagged).shape == (1, 3, 40, 60) and io.exif_orientation(untagged) == 1


@pytest.mark.parametrize("suffix", [".jpg", ".tif"])
def test_cmyk_files_are_converted_not_read_as_rgba(tmp_path, suffix):
    a = np.zeros((20, 30, 3), np.uint8)
    a[..., 0], a[..., 1] = 200, 50
    path = tmp_path / f"print{suffix}"
    Image.fromarray(a).convert("CMYK").save(path)
    with pytest.warns(UserWarning, match="CMYK image .* converted to RGB"):
        x = io.read_image(path)
    assert x.shape == (1, 3, 20, 30)
    assert (x[0, :, 5, 5] * 255 - torch.tensor([200.0, 50.0, 0.0])).abs().max() < 6  # not the ink read as RGB
    with pytest.warns(UserWarning, match="CMYK image: converted to RGB"), Image.open(path) as im:
        assert torch.allclose(io.to_tensor(im), x)  # a PIL image the caller opened: the same


def _profile() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.mark.parametrize("bits,channels", [(8, 3), (16, 3), (8, 1), (16, 1)])
def test_an_icc_profile_is_embedded_and_read_back(tmp_path, bits, channels):
    x = torch.rand(1, channels, 12, 10, generator=torch.Generator().manual_seed(0))
    path = io.write_image(tmp_path / "x.png", x, bits, icc_profile=_profile())
    assert io.icc_profile(path) == _profile() and io.profile_channels(_profile()) == 3
    with Image.open(path) as im:
        im.load()  # the chunk is valid: Pillow decodes the whole file, CRCs checked
    back = io.read_image(path)
    assert float((back - x).abs().max()) <= 0.5 / (255 if bits == 8 else 65535) + 1e-6  # pixels untouched
    assert io.icc_profile(io.write_image(tmp_path / "plain.png", x, bits)) is None
    with pytest.raises(ValueError, match="PNG outputs only"):
        io.write_image(tmp_path / "x.tif", x, bits, icc_profile=_profile())
    with pytest.raises(ValueError, match="not a PNG"):
        io.with_icc_profile(b"GIF89a" + b"\0" * 40, _profile())
