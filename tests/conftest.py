import warnings

import numpy as np
import pytest
import skimage.data
import torch

warnings.filterwarnings("ignore", message=".*torch.jit.script.*")


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Quantised copies are cached under $RESTORE_CACHE: tests use their own folder, never the user's."""
    import os

    old = os.environ.get("RESTORE_CACHE")
    os.environ["RESTORE_CACHE"] = str(tmp_path_factory.mktemp("restore-cache"))
    yield
    if old is None:
        os.environ.pop("RESTORE_CACHE", None)
    else:
        os.environ["RESTORE_CACHE"] = old


def _tensor(arr: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(arr.astype(np.float32) / 255.0)
    return (t[None] if t.ndim == 2 else t.permute(2, 0, 1))[None].contiguous()


@pytest.fixture(scope="session")
def clean_rgb() -> torch.Tensor:
    """(1, 3, 48, 48) natural colour crop (astronaut's face) in [0, 1]."""
    return _tensor(skimage.data.astronaut()[60:156:2, 180:276:2])


@pytest.fixture(scope="session")
def clean_grey() -> torch.Tensor:
    """(1, 1, 48, 48) natural grey crop (cameraman) in [0, 1]."""
    return _tensor(skimage.data.camera()[80:176:2, 200:296:2])


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


def make_image_folder(folder, n: int, h: int, w: int):
    """``n`` random colour PNGs of h x w in ``folder`` (a stand-in training set for the training scripts' tests)."""
    import imageio.v3 as iio

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        iio.imwrite(folder / f"{i}.png", (rng.random((h, w, 3)) * 255).astype(np.uint8))
    return folder
