"""Datasets as device tensors: the batch iterator, the offline datasets and the CIFAR download/checksum/parse path
(on small archives built here in the official format, since CIFAR cannot be downloaded on these machines)."""

from __future__ import annotations

import dataclasses
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from reslab.data import DATASETS, DataError, DeviceBatches, Split, load_dataset, pad_crop_flip
from reslab.data import cifar as cifar_mod
from reslab.data.cifar import load_cifar, md5sum
from tests.helpers import record_durability

# -- the batch iterator -----------------------------------------------------------------------------------------------


def _split(n: int = 103) -> Split:
    return Split(torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n))


def test_shuffled_epoch_serves_every_example_once_in_a_new_order() -> None:
    batches = DeviceBatches(_split(), 10, shuffle=True, seed=3)
    epochs = [torch.cat([y for _, y in batches]) for _ in range(2)]
    for ys in epochs:
        assert sorted(ys.tolist()) == list(range(103))
    assert not torch.equal(epochs[0], epochs[1])
    assert len(batches) == 11


def test_same_seed_same_order_and_iter_alone_does_not_advance() -> None:
    a = DeviceBatches(_split(), 16, shuffle=True, seed=1)
    b = DeviceBatches(_split(), 16, shuffle=True, seed=1)
    iter(a)  # inspected but not consumed, as Lightning does
    assert torch.equal(torch.cat([y for _, y in a]), torch.cat([y for _, y in b]))


def test_drop_last_and_inputs_match_labels() -> None:
    batches = DeviceBatches(_split(), 10, shuffle=True, drop_last=True)
    sizes = [len(y) for _, y in batches]
    assert sizes == [10] * 10 and len(batches) == 10
    for x, y in batches:
        assert torch.equal(x[:, 0].long(), y)


def test_rank_shards_are_disjoint_and_equal_sized() -> None:
    shards = [
        torch.cat([y for _, y in DeviceBatches(_split(100), 8, shuffle=True, rank=r, world_size=2)]) for r in (0, 1)
    ]
    assert len(shards[0]) == len(shards[1]) == 50
    assert not set(shards[0].tolist()) & set(shards[1].tolist())


def test_pad_crop_flip_is_a_crop_of_the_padded_image_and_deterministic() -> None:
    images = torch.rand(6, 3, 8, 8)
    out = pad_crop_flip(images, torch.Generator().manual_seed(0), pad=2)
    again = pad_crop_flip(images, torch.Generator().manual_seed(0), pad=2)
    assert out.shape == images.shape and torch.equal(out, again)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(6):
        candidates = [
            c
            for dy in range(5)
            for dx in range(5)
            for c in (padded[i, :, dy : dy + 8, dx : dx + 8], padded[i, :, dy : dy + 8, dx : dx + 8].flip(-1))
        ]
        assert any(torch.equal(out[i], c) for c in candidates)


# -- offline datasets -------------------------------------------------------------------------------------------------


def test_mnist1d_defaults_and_cache(tmp_path: Path) -> None:
    splits = DATASETS["mnist1d"].loader(data_dir=tmp_path)
    assert splits.input_shape == (1, 40) and splits.num_classes == 10
    assert len(splits.train) == 4000 and len(splits.test) == 1000 and splits.val is None
    assert splits.train.x.dtype == torch.float32 and splits.train.x.shape == (4000, 1, 40)
    cached = list(tmp_path.glob("mnist1d-*.npz"))
    assert len(cached) == 1
    again = DATASETS["mnist1d"].loader(data_dir=tmp_path)
    assert torch.equal(again.train.x, splits.train.x)


def test_digits_fixed_split() -> None:
    a, b = load_dataset("digits"), DATASETS["digits"].loader()
    assert a.input_shape == (1, 8, 8) and len(a.train) == 1437 and len(a.test) == 360
    assert torch.equal(a.train.y, b.train.y)
    assert abs(float(a.train.x.mean())) < 1e-5


def test_synthetic_any_shape_and_deterministic() -> None:
    a = load_dataset("synthetic", {"shape": [3, 8, 8], "num_classes": 4, "train_size": 64, "test_size": 32})
    b = DATASETS["synthetic"].loader(shape=(3, 8, 8), num_classes=4, train_size=64, test_size=32)
    assert a.train.x.shape == (64, 3, 8, 8) and a.input_shape == (3, 8, 8)
    assert torch.equal(a.train.y, b.train.y) and set(a.train.y.tolist()) <= {0, 1, 2, 3}


def test_unknown_dataset_or_option_is_refused() -> None:
    with pytest.raises(ValueError, match="valid: mnist1d, cifar10"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match=r"unknown option.*valid: num_samples"):
        load_dataset("mnist1d", {"size": 3})


# -- CIFAR, on archives in the official format ------------------------------------------------------------------------


def _batch(n: int, label_key: bytes, rng: np.random.Generator, classes: int) -> bytes:
    data = {
        b"batch_label": b"testing",
        label_key: rng.integers(0, classes, n).tolist(),
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img{i}.png".encode() for i in range(n)],
    }
    return pickle.dumps(data, protocol=2)


def make_archive(path: Path, name: str = "cifar10", per_batch: int = 12) -> Path:
    rng = np.random.default_rng(0)
    archive = cifar_mod.ARCHIVES[name]
    with tarfile.open(path, "w:gz") as tar:
        for member in (*archive.train_members, *archive.test_members):
            payload = _batch(per_batch, archive.label_key, rng, archive.num_classes)
            info = tarfile.TarInfo(member)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


@pytest.fixture
def served_cifar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """cifar10 and cifar100 archives 'served' from file:// URLs with their real MD5s; returns the cache dir."""
    served = tmp_path / "served"
    served.mkdir()
    for name in ("cifar10", "cifar100"):
        original = cifar_mod.ARCHIVES[name]
        path = make_archive(served / original.filename, name)
        patched = dataclasses.replace(original, url=path.as_uri(), md5=md5sum(path))
        monkeypatch.setitem(cifar_mod.ARCHIVES, name, patched)
    return tmp_path / "cache"


@pytest.mark.parametrize(("name", "classes", "n_train"), [("cifar10", 10, 60), ("cifar100", 100, 12)])
def test_cifar_download_verify_parse(served_cifar: Path, name: str, classes: int, n_train: int) -> None:
    splits = load_cifar(name, data_dir=served_cifar)
    assert (served_cifar / cifar_mod.ARCHIVES[name].filename).exists()
    assert not list(served_cifar.glob(".*part"))
    assert splits.input_shape == (3, 32, 32) and splits.num_classes == classes
    assert splits.train.x.dtype == torch.uint8 and splits.train.x.shape == (n_train, 3, 32, 32)
    assert len(splits.test) == 12
    x = splits.eval_transform(splits.train.x, None)
    assert x.dtype == torch.float32
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3, rtol=0)


def test_cifar_parse_keeps_the_pixels_and_labels(served_cifar: Path) -> None:
    archive = cifar_mod.ARCHIVES["cifar10"]
    with tarfile.open(Path(archive.url.removeprefix("file://")), "r:gz") as tar:
        first = pickle.load(tar.extractfile(archive.train_members[0]), encoding="bytes")
    splits = load_cifar("cifar10", data_dir=served_cifar)
    assert splits.train.y[:12].tolist() == first[b"labels"]
    assert torch.equal(splits.train.x[0].flatten(), torch.from_numpy(first[b"data"][0]))


def test_cifar_checksum_mismatch_is_refused_and_nothing_is_cached(
    served_cifar: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = dataclasses.replace(cifar_mod.ARCHIVES["cifar10"], md5="0" * 32)
    monkeypatch.setitem(cifar_mod.ARCHIVES, "cifar10", bad)
    with pytest.raises(DataError, match=r"checksum mismatch.*nothing was kept"):
        load_cifar("cifar10", data_dir=served_cifar)
    assert not any(served_cifar.iterdir())


@pytest.mark.parametrize("corruption", ["garbage", "empty", "truncated"])
def test_cifar_corrupt_cached_file_is_fetched_again(served_cifar: Path, corruption: str) -> None:
    served_cifar.mkdir(parents=True)
    target = served_cifar / cifar_mod.ARCHIVES["cifar10"].filename
    good = Path(cifar_mod.ARCHIVES["cifar10"].url.removeprefix("file://")).read_bytes()
    target.write_bytes({"garbage": b"partial download", "empty": b"", "truncated": good[: len(good) // 2]}[corruption])
    splits = load_cifar("cifar10", data_dir=served_cifar)
    assert len(splits.train) == 60
    assert md5sum(target) == cifar_mod.ARCHIVES["cifar10"].md5


def test_cifar_download_is_fsynced_before_the_rename(served_cifar: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events = record_durability(monkeypatch)
    load_cifar("cifar10", data_dir=served_cifar)
    assert events == ["fsync file", "replace", "fsync dir"]


def test_cifar_offline_error_names_the_file_and_where(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = dataclasses.replace(cifar_mod.ARCHIVES["cifar10"], url=(tmp_path / "nowhere.tar.gz").as_uri())
    monkeypatch.setitem(cifar_mod.ARCHIVES, "cifar10", missing)
    with pytest.raises(DataError) as exc:
        load_cifar("cifar10", data_dir=tmp_path / "cache")
    message = str(exc.value)
    assert str(tmp_path / "cache" / "cifar-10-python.tar.gz") in message
    assert missing.md5 in message and "by hand" in message


def test_cifar_stream_cut_mid_download_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import http.client

    class CutStream(io.BytesIO):
        def read(self, *args: object) -> bytes:
            raise http.client.IncompleteRead(b"abc", 100)

        def __enter__(self) -> CutStream:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr(cifar_mod.urllib.request, "urlopen", lambda *a, **k: CutStream())
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"IncompleteRead.*by hand"):
        load_cifar("cifar10", data_dir=cache)
    assert not any(cache.iterdir())


def test_cifar_stale_partial_downloads_are_removed(served_cifar: Path) -> None:
    served_cifar.mkdir(parents=True)
    name = cifar_mod.ARCHIVES["cifar10"].filename
    dead = served_cifar / f".{name}.999999999.part"  # no such pid
    dead.write_bytes(b"half")
    load_cifar("cifar10", data_dir=served_cifar)
    assert not dead.exists()


def test_cifar_bad_file_placed_by_hand_is_named_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = dataclasses.replace(cifar_mod.ARCHIVES["cifar10"], url=(tmp_path / "nowhere.tar.gz").as_uri())
    monkeypatch.setitem(cifar_mod.ARCHIVES, "cifar10", missing)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / missing.filename).write_bytes(b"not the archive")
    with pytest.raises(DataError, match=r"had md5 .*not .*was removed; cannot download"):
        load_cifar("cifar10", data_dir=cache)
    assert not any(cache.iterdir())


def test_cifar_val_split_and_augmentation(served_cifar: Path) -> None:
    splits = load_cifar("cifar10", val_size=10, data_dir=served_cifar)
    assert len(splits.train) == 50 and len(splits.val) == 10
    again = load_cifar("cifar10", val_size=10, data_dir=served_cifar)
    assert torch.equal(splits.val.y, again.val.y)  # seeded split
    batches = DeviceBatches(splits.train, 16, shuffle=True, seed=0, transform=splits.train_transform)
    same = DeviceBatches(splits.train, 16, shuffle=True, seed=0, transform=splits.train_transform)
    first, first_again = next(iter(batches)), next(iter(same))
    assert first[0].shape == (16, 3, 32, 32) and first[0].dtype == torch.float32
    assert torch.equal(first[0], first_again[0])  # augmentation is seeded
    plain = splits.eval_transform(splits.train.x.index_select(0, torch.arange(16)), None)
    assert not torch.equal(first[0], plain)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_the_catalogs_options_are_the_loaders(name: str) -> None:
    """The torch-free catalog states each dataset's options so configs are checked without importing loaders; they
    must stay the loader's own keyword defaults."""
    import inspect

    from reslab.data.catalog import DATASET_INFO

    params = inspect.signature(DATASETS[name].loader).parameters
    assert DATASET_INFO[name].options() == {k: p.default for k, p in params.items() if k not in ("name", "data_dir")}
