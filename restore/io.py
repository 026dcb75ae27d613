"""Reading and writing images with validation and clear errors.

Every image that enters the package goes through :func:`to_tensor`: the result is a float32 tensor of shape
(1, C, H, W), C in {1, 3}, values in [0, 1]. Files are written atomically (temporary name, then rename), so an
interrupted run never leaves a truncated output behind.
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

MIN_SIDE = 8  # below this no prior or solver here means anything
MAX_PIXELS = 4096 * 4096  # per image by default; $RESTORE_MAX_MEGAPIXELS (the CLI's --max-megapixels) changes it
LIMIT_ENV = "RESTORE_MAX_MEGAPIXELS"
SUBTRACTIVE_MODES = ("CMYK", "YCbCr", "LAB", "HSV")  # Pillow modes whose channels are not RGB(A): converted on reading
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageError(ValueError):
    """An input that is not a usable image; the message names the problem and, when known, the file."""


def _where(source) -> str:
    return f" ({source})" if source else ""


def _array_to_unit_float(arr: np.ndarray, source=None, observation: bool = False) -> np.ndarray:
    """Integer images are scaled by their dtype's range; float images must already lie in [0, 1].

    An ``observation`` (a noisy measurement held in memory) may stray outside [0, 1] by noise: [-2, 3] is accepted
    (5 sigma of noise at std 0.4; [-1, 2] refused a dark crop at std 50/255) and kept as is, since clipping would
    bias the likelihood."""
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        if arr.dtype.itemsize > 2:
            raise ImageError(f"unsupported integer image type {arr.dtype}{_where(source)}: use 8 or 16 bits per channel")
        return arr.astype(np.float32) / float(np.iinfo(arr.dtype).max)
    if np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise ImageError(f"image contains {bad} NaN or infinite values{_where(source)}")
        lo, hi = float(arr.min()), float(arr.max())
        if observation and lo >= -2 and hi <= 3:
            return arr
        if lo < -1e-3 or hi > 1 + 1e-3:
            allowed = "[-2, 3] for a noisy observation" if observation else "[0, 1]"
            raise ImageError(f"float image values must lie in {allowed}; got range [{lo:.3g}, {hi:.3g}]{_where(source)}")
        return np.clip(arr, 0.0, 1.0)
    raise ImageError(f"unsupported image data type {arr.dtype}{_where(source)}")


def _hwc(arr: np.ndarray, source=None) -> np.ndarray:
    """Bring an array to (H, W, C) with C in {1, 3}; RGBA loses alpha with a warning."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    elif arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[2] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # (C, H, W) array
    if arr.ndim != 3:
        raise ImageError(f"expected a 2-D grey or 3-D colour image; got an array of shape {arr.shape}{_where(source)}")
    c = arr.shape[2]
    if c == 4:
        warnings.warn(f"RGBA image{_where(source)}: the alpha channel is dropped", stacklevel=3)
        arr = arr[:, :, :3]
    elif c == 2:
        warnings.warn(f"grey+alpha image{_where(source)}: the alpha channel is dropped", stacklevel=3)
        arr = arr[:, :, :1]
    elif c not in (1, 3):
        raise ImageError(f"images must have 1, 3 or 4 channels; got {c}{_where(source)}")
    return arr


def pixel_limit() -> int:
    """Pixels allowed per image: ``$RESTORE_MAX_MEGAPIXELS`` (megapixels, > 0) when set, else ``MAX_PIXELS``
    (16.8 megapixels). Above it an image is refused rather than left running for hours by mistake: large images are
    solved in tiles, so memory allows more, but time grows with the pixels (docs/tasks.md)."""
    value = os.environ.get(LIMIT_ENV)
    if value is None or not value.strip():
        return MAX_PIXELS
    try:
        megapixels = float(value)
    except ValueError:
        megapixels = float("nan")
    if not megapixels > 0 or megapixels == float("inf"):
        raise ValueError(f"${LIMIT_ENV} must be a positive number of megapixels; got {value!r}")
    return int(megapixels * 1e6)


def check_size(h: int, w: int, source=None, max_pixels: int | None = None):
    """Refuse an image under ``MIN_SIDE`` pixels a side or over ``max_pixels`` (default: ``pixel_limit()``)."""
    max_pixels = pixel_limit() if max_pixels is None else max_pixels
    if min(h, w) < MIN_SIDE:
        raise ImageError(f"image of {w}x{h} pixels is too small{_where(source)}: each side needs at least {MIN_SIDE}")
    if h * w > max_pixels:
        raise ImageError(f"image of {w}x{h} = {h * w / 1e6:.3g} megapixels is over the limit of {max_pixels / 1e6:.3g} "
                         f"megapixels{_where(source)}; downscale or crop it first, or raise the limit "
                         f"(--max-megapixels, ${LIMIT_ENV}): it is solved in tiles, so time grows with the pixels")


def read_image(path: str | os.PathLike, max_pixels: int | None = None) -> torch.Tensor:
    """Read an image file into a (1, C, H, W) float32 tensor in [0, 1].

    8- and 16-bit PNG/TIFF/JPEG, grey or colour; alpha is dropped with a warning, CMYK converted to RGB. An EXIF
    orientation tag (phone and camera JPEGs) is applied, so the image comes upright as photo viewers and the web app
    show it.
    Raises :class:`ImageError` (or FileNotFoundError) naming the file and the problem.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such image file: {path}")
    if path.is_dir():
        raise ImageError(f"{path} is a folder, not an image file")
    if path.stat().st_size == 0:
        raise ImageError(f"empty file: {path}")
    arr = _read_subtractive(path)
    arr = _read_16bit_capable(path) if arr is None else arr
    if arr is None:
        try:
            arr = iio.imread(path)
        except Exception as exc:  # imageio raises many types for undecodable data
            # imageio's own message ends in plugin install hints that do not help here: keep its first line
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ImageError(f"cannot read {path} as an image: damaged, or not a PNG, JPEG, TIFF, BMP, WebP or GIF "
                             f"file ({reason})") from None
    if arr.ndim == 4:  # animated GIF / multi-page TIFF: first frame
        warnings.warn(f"{path} holds {arr.shape[0]} frames; using the first", stacklevel=2)
        arr = arr[0]
    return to_tensor(upright(arr, exif_orientation(path)), source=path, max_pixels=max_pixels)


def _read_subtractive(path: Path) -> np.ndarray | None:
    """A CMYK (print) or other non-RGB colour file converted to RGB by Pillow (its fourth channel is ink, not alpha:
    read as RGBA it gave wrong colours), with a warning; None for any other file."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode not in SUBTRACTIVE_MODES:
                return None
            mode, rgb = im.mode, np.asarray(im.convert("RGB"))
    except Exception:  # not for Pillow: the readers below say what is wrong
        return None
    warnings.warn(f"{mode} image ({path}): converted to RGB without colour management", stacklevel=3)
    return rgb


def exif_orientation(path: Path) -> int:
    """The EXIF orientation tag of an image file (1 to 8; 1, upright, when absent or unreadable). Reads the header
    only."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            value = int(im.getexif().get(0x0112, 1))
    except Exception:  # no EXIF, or a format Pillow does not open (OpenCV read it): nothing to turn
        return 1
    return value if 1 <= value <= 8 else 1


def upright(arr: np.ndarray, orientation: int) -> np.ndarray:
    """``arr`` (H, W[, C]) as it is meant to be seen under EXIF ``orientation`` (the transforms of Pillow's
    ``ImageOps.exif_transpose``): 2 mirrored, 3 turned 180 degrees, 4 flipped, 5 transposed, 6 turned 90 degrees
    clockwise, 7 transversed, 8 turned 90 degrees counter-clockwise."""
    ops = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
           8: lambda a: np.rot90(a, 1)}
    return np.ascontiguousarray(ops[orientation](arr))


def _png_header(head: bytes) -> bool:
    """Whether ``head`` (a file's first bytes) is a PNG signature followed by its IHDR chunk."""
    return head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"


def source_bit_depth(path: str | os.PathLike) -> int:
    """Bits per channel an image file stores: 16 for a 16-bit PNG or TIFF, else 8 (the outputs' default depth
    follows it, so a 16-bit scan is not rounded to 8 bits on the way out). Reads the header only (the PNG's IHDR,
    the TIFF's BitsPerSample), not the pixels, which ``read_image`` has decoded already."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".png":
            with open(path, "rb") as f:
                head = f.read(25)
            bits = head[24] if _png_header(head) else 8
        elif path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                bits = tif.pages[0].bitspersample
        else:
            bits = 8
    except Exception:  # an unreadable header: read_image has already said what is wrong with the file
        return 8
    return 16 if bits == 16 else 8


def _read_16bit_capable(path: Path) -> np.ndarray | None:
    """PNG/TIFF through OpenCV, which keeps 16-bit colour (Pillow reduces it to 8 bits); None if it cannot."""
    if path.suffix.lower() not in (".png", ".tif", ".tiff"):
        return None
    import cv2

    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        return None
    if arr.ndim == 3 and arr.shape[2] in (3, 4):  # OpenCV's BGR(A) -> RGB(A)
        arr = arr[:, :, [2, 1, 0, 3][:arr.shape[2]]]
    return arr


def to_tensor(image, source=None, max_pixels: int | None = None, observation: bool = False) -> torch.Tensor:
    """Convert a path, numpy array, PIL image or tensor to a validated (1, C, H, W) float32 tensor in [0, 1].

    Arrays may be (H, W), (H, W, C) or (C, H, W); tensors (C, H, W) or (1, C, H, W). Integer data is scaled
    by its range (uint8 by 255, uint16 by 65535); float data must already be in [0, 1] ([-2, 3] for an
    ``observation``, whose noise may leave the range).
    """
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, max_pixels=max_pixels)
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim == 4:
            if t.shape[0] != 1:
                raise ImageError(f"expected a single image (batch size 1); got a batch of {t.shape[0]}")
            t = t[0]
        if t.ndim == 2:
            t = t[None]
        if t.ndim != 3 or t.shape[0] not in (1, 3, 4):
            raise ImageError(f"expected a tensor of shape (C, H, W) or (1, C, H, W) with C in 1, 3, 4; "
                             f"got {tuple(image.shape)}")
        arr = t.permute(1, 2, 0).numpy()
    else:
        try:
            from PIL import Image, ImageOps
            if isinstance(image, Image.Image):
                image = ImageOps.exif_transpose(image)  # upright, as read_image gives a file (no-op without the tag)
                if image.mode in SUBTRACTIVE_MODES:  # ink, not RGBA: as read_image converts a file
                    warnings.warn(f"{image.mode} image: converted to RGB without colour management", stacklevel=2)
                    image = image.convert("RGB")
                image = np.asarray(image.convert("RGBA") if image.mode in ("P", "LA", "PA") else image)
        except ImportError:  # pragma: no cover - PIL comes with imageio
            pass
        if not isinstance(image, np.ndarray):
            raise ImageError(f"cannot use an object of type {type(image).__name__} as an image: pass a file path, "
                             "a numpy array, a PIL image or a torch tensor")
        arr = image
    arr = _array_to_unit_float(_hwc(np.asarray(arr), source), source, observation)
    check_size(arr.shape[0], arr.shape[1], source, max_pixels)
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].float()


def to_numpy_image(x: torch.Tensor) -> np.ndarray:
    """(1, C, H, W) or (C, H, W) tensor -> (H, W) or (H, W, 3) float array in [0, 1]."""
    if x.ndim == 4:
        x = x[0]
    arr = x.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    return arr[:, :, 0] if arr.shape[2] == 1 else arr


def _atomic(path: Path, write):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def icc_profile(source) -> bytes | None:
    """The ICC colour profile (e.g. Display P3 in a phone's photos) of an image file or of a PIL image, or None (also
    for arrays and tensors, which carry none)."""
    from PIL import Image

    if isinstance(source, Image.Image):
        profile = source.info.get("icc_profile")
    elif isinstance(source, (str, os.PathLike)):
        try:
            with Image.open(source) as im:
                profile = im.info.get("icc_profile")
        except Exception:  # a file Pillow cannot open has no profile we could keep
            return None
    else:
        return None
    return bytes(profile) if profile else None


def profile_channels(profile: bytes) -> int | None:
    """Colour channels an ICC profile describes, from its header's data colour space: 3 for RGB, 1 for grey, None
    for any other (CMYK, Lab, ...), which a restored RGB or grey image must not carry."""
    return {b"RGB ": 3, b"GRAY": 1}.get(bytes(profile[16:20]))


def with_icc_profile(png: bytes, profile: bytes) -> bytes:
    """PNG file bytes with ``profile`` embedded (an iCCP chunk right after IHDR, as the PNG spec places it), so a
    colour-managed viewer shows the pixels in the input's colour space rather than assuming sRGB."""
    if not _png_header(png):
        raise ValueError("not a PNG file")
    data = b"ICC profile\x00\x00" + zlib.compress(profile)  # name, NUL, compression method 0 (zlib)
    chunk = struct.pack(">I", len(data)) + b"iCCP" + data + struct.pack(">I", zlib.crc32(b"iCCP" + data))
    end_of_ihdr = 8 + 4 + 4 + 13 + 4
    return png[:end_of_ihdr] + chunk + png[end_of_ihdr:]


def write_image(path: str | os.PathLike, x: torch.Tensor | np.ndarray, bit_depth: int = 8,
                icc_profile: bytes | None = None) -> Path:
    """Write an image in [0, 1] as PNG/TIFF (8 or 16 bits per channel) atomically, with ``icc_profile`` embedded
    when given (PNG only: what restore writes). Returns the path."""
    path = Path(path)
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16; got {bit_depth}")
    if icc_profile and path.suffix.lower() != ".png":
        raise ValueError(f"an ICC profile is embedded in PNG outputs only; got {path.suffix!r}")
    arr = to_numpy_image(x) if isinstance(x, torch.Tensor) else np.clip(np.asarray(x, dtype=np.float32), 0, 1)
    if bit_depth == 16 and path.suffix.lower() in (".jpg", ".jpeg"):
        raise ValueError("JPEG cannot hold 16-bit images: use .png or .tiff")
    scale, dtype = (255.0, np.uint8) if bit_depth == 8 else (65535.0, np.uint16)
    data = np.round(arr * scale).astype(dtype)
    ext = path.suffix
    if bit_depth == 16 and data.ndim == 3 and ext.lower() == ".png":  # Pillow cannot write 16-bit colour PNG
        import cv2

        def write(tmp):
            if not cv2.imwrite(str(tmp) + ext, np.ascontiguousarray(data[:, :, ::-1])):
                raise OSError(f"cannot write {path}")
            os.replace(str(tmp) + ext, tmp)
    else:
        def write(tmp):
            iio.imwrite(tmp, data, extension=ext)

    def write_with_profile(tmp):
        write(tmp)
        if icc_profile:
            tmp.write_bytes(with_icc_profile(tmp.read_bytes(), icc_profile))
    _atomic(path, write_with_profile)
    return path


def write_array(path: str | os.PathLike, arr: np.ndarray) -> Path:
    """Write a float array as .npy or float32 .tiff atomically."""
    path = Path(path)
    arr = np.asarray(arr, dtype=np.float32)
    if path.suffix == ".npy":
        def save_npy(tmp):
            with open(tmp, "wb") as f:
                np.save(f, arr)
        _atomic(path, save_npy)
    elif path.suffix in (".tif", ".tiff"):
        import tifffile
        photometric = "rgb" if arr.ndim == 3 and arr.shape[2] == 3 else "minisblack"
        _atomic(path, lambda tmp: tifffile.imwrite(tmp, arr, photometric=photometric))
    else:
        raise ValueError(f"arrays are written as .npy or .tiff; got {path.suffix!r}")
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    _atomic(path, lambda tmp: tmp.write_text(text))
    return path
