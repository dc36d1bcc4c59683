"""CIFAR-10 and CIFAR-100 from the official python archives, with He et al. 2015 §4.2's recipe.

The archive is fetched from its official URL into the cache dir, verified by MD5 (a partial or corrupt file is
detected and fetched again; a download goes to a temporary file and is renamed only once its checksum is right),
and its pickled batches are parsed here, so reslab needs no torchvision. Images stay uint8 on the device; each
batch is normalised per channel with the training statistics and, for training, augmented as He et al. do
(pad 4, random 32x32 crop, horizontal flip) in one batched operation.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from reslab.atomic import fsync_dir, fsync_file
from reslab.data.cache import resolve_data_dir
from reslab.data.tensors import Split, Splits, pad_crop_flip


class DataError(RuntimeError):
    """A dataset that cannot be had: the message says which file to place where."""


@dataclass(frozen=True)
class Archive:
    url: str
    filename: str
    md5: str
    train_members: tuple[str, ...]
    test_members: tuple[str, ...]
    label_key: bytes
    num_classes: int


ARCHIVES: dict[str, Archive] = {
    "cifar10": Archive(
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)),
        ("cifar-10-batches-py/test_batch",),
        b"labels",
        10,
    ),
    "cifar100": Archive(
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        ("cifar-100-python/train",),
        ("cifar-100-python/test",),
        b"fine_labels",
        100,
    ),
}


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(archive: Archive, directory: Path, timeout: float = 60.0) -> Path:
    """The verified archive in `directory`, downloading it if missing or corrupt. The download goes to a temporary
    file, fsynced and renamed into place only once its MD5 matches, so the cache never holds a partial or corrupt
    archive, even after a machine crash."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / archive.filename
    _remove_stale_parts(directory, archive.filename)
    found_corrupt = ""
    if path.exists():
        got = md5sum(path)
        if got == archive.md5:
            return path
        path.unlink(missing_ok=True)  # partial or corrupt (another process may have removed it already)
        found_corrupt = f"the file at {path} had md5 {got}, not {archive.md5}, and was removed; "
    tmp = directory / f".{archive.filename}.{os.getpid()}.part"
    try:
        try:
            with urllib.request.urlopen(archive.url, timeout=timeout) as response, open(tmp, "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
                fsync_file(out)  # on disk before the rename, so a machine crash cannot leave an empty archive
        except Exception as exc:  # URLError, OSError, timeouts, http.client.IncompleteRead mid-stream, ...
            reason = getattr(exc, "reason", None) or f"{type(exc).__name__}: {exc}"
            raise DataError(
                f"{found_corrupt}cannot download {archive.url} ({reason}); download it by hand and place it at {path} "
                f"(md5 {archive.md5}), or point --data-dir / RESLAB_DATA_DIR at a folder that holds it"
            ) from None
        got = md5sum(tmp)
        if got != archive.md5:
            raise DataError(
                f"checksum mismatch for {archive.url}: md5 {got}, expected {archive.md5}; nothing was kept, "
                f"try again or place a good copy at {path}"
            )
        os.replace(tmp, path)
        fsync_dir(directory)
    finally:
        tmp.unlink(missing_ok=True)  # whatever happened, no partial file stays behind
    return path


def _remove_stale_parts(directory: Path, filename: str) -> None:
    """Temporary downloads left by processes that were killed mid-download (the pid is in the name)."""
    for part in directory.glob(f".{filename}.*.part"):
        pid = part.name.removeprefix(f".{filename}.").removesuffix(".part")
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            part.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, as another user's process
    return True


def parse(path: Path, archive: Archive) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) as uint8 NCHW images and int64 labels, read from the tarball."""

    def read(members: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        with tarfile.open(path, "r:gz") as tar:
            for name in members:
                fh = tar.extractfile(name)
                if fh is None:
                    raise DataError(f"{path} has no member {name}: not an official CIFAR archive")
                batch = pickle.load(fh, encoding="bytes")
                xs.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
                ys.append(np.asarray(batch[archive.label_key], dtype=np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    x_train, y_train = read(archive.train_members)
    x_test, y_test = read(archive.test_members)
    return x_train, y_train, x_test, y_test


class Normalize:
    """uint8 images -> float, per-channel standardised; with a generator, He et al.'s pad-crop-flip too."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, augment: bool) -> None:
        self.mean = mean.view(1, -1, 1, 1)
        self.std = std.view(1, -1, 1, 1)
        self.augment = augment

    def __call__(self, images: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        mean, std = self.mean.to(images.device), self.std.to(images.device)
        x = (images.float() / 255.0 - mean) / std
        if self.augment and gen is not None:
            x = pad_crop_flip(x, gen)
        return x


def load_cifar(
    name: str = "cifar10",
    val_size: int = 0,
    augment: bool = True,
    split_seed: int = 0,
    data_dir: str | Path | None = None,
) -> Splits:
    """CIFAR-10/100: 50k train (or 50k - val_size train and val_size val, e.g. He's 45k/5k), 10k test."""
    if name not in ARCHIVES:
        raise DataError(f"unknown CIFAR dataset {name!r}; valid: {', '.join(ARCHIVES)}")
    archive = ARCHIVES[name]
    path = fetch(archive, resolve_data_dir(data_dir))
    x_train, y_train, x_test, y_test = parse(path, archive)
    if not 0 <= val_size < len(y_train):
        raise DataError(f"val_size must be in [0, {len(y_train)}), got {val_size}")
    val = None
    if val_size:
        order = np.random.default_rng(split_seed).permutation(len(y_train))
        val_idx, train_idx = order[:val_size], order[val_size:]
        val = Split(torch.from_numpy(x_train[val_idx]), torch.from_numpy(y_train[val_idx]))
        x_train, y_train = x_train[train_idx], y_train[train_idx]
    pixels = torch.from_numpy(x_train).float().div_(255.0)
    mean, std = pixels.mean(dim=(0, 2, 3)), pixels.std(dim=(0, 2, 3))
    return Splits(
        name=name,
        train=Split(torch.from_numpy(x_train), torch.from_numpy(y_train)),
        test=Split(torch.from_numpy(x_test), torch.from_numpy(y_test)),
        val=val,
        input_shape=(3, 32, 32),
        num_classes=archive.num_classes,
        train_transform=Normalize(mean, std, augment),
        eval_transform=Normalize(mean, std, False),
    )
