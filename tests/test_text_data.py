"""The character-level `text` dataset: the default text and a file's, split by position, identified by SHA-256 and
size, its vocabulary, training windows drawn at random (seeded) with their next-character targets, evaluation windows
that tile the held-out part, bad files refused in one line before anything runs, and a small causal transformer
probed and trained through the real fit path."""

from __future__ import annotations

import hashlib
import math
import platform
from pathlib import Path

import pytest
import torch

from reslab.cli import main
from reslab.data.catalog import DATASET_INFO
from reslab.data.registry import load_dataset
from reslab.data.tensors import DeviceBatches, Windows
from reslab.data.text import load_text, read_corpus
from reslab.models import NetSpec
from reslab.train.config import DataConfig, TrackingConfig, TrainConfig
from tests.helpers import refused

#: A text whose held-out part has characters its training part lacks (the accents, the kana) and a 3-byte one.
SAMPLE = "the cat sat on the mat. " * 12 + "é日本 — ça va? the end.\n"


def pydoc_text() -> str:
    from pydoc_data.topics import topics

    return "".join(topics[key] for key in sorted(topics))


def decode(ids: torch.Tensor, vocab: str) -> str:
    return "".join(vocab[i] for i in ids.tolist())


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    path = tmp_path / "sample.txt"
    path.write_text(SAMPLE, encoding="utf-8")
    return path


# -- the text, its identity and its vocabulary ----------------------------------------------------------------------


def test_the_default_text_is_the_pydoc_topics_in_key_order() -> None:
    text = pydoc_text()
    splits = load_text()
    details = splits.details
    assert details["sha256"] == hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert details["chars"] == len(text) and details["train_chars"] + details["test_chars"] == len(text)
    assert details["source"] == f"pydoc_data.topics (Python {platform.python_version()})"
    vocab = "".join(sorted(set(text)))
    assert details["vocab_size"] == len(vocab) == splits.num_classes
    assert splits.input_shape == (64,) and splits.val is None and splits.train_steps == 100
    assert DATASET_INFO["text"].shape({}) == ((64,), len(vocab))  # the catalog knows it without torch
    assert decode(splits.train.tokens[:200], vocab) == text[:200]


def test_a_file_is_split_by_position_and_its_vocabulary_is_the_whole_texts(sample: Path) -> None:
    splits = load_text(path=str(sample), seq_len=8, test_fraction=0.25)
    vocab = read_corpus(str(sample)).vocab
    assert vocab == "".join(sorted(set(SAMPLE))) and splits.num_classes == len(vocab)
    cut = round(len(SAMPLE) * 0.75)
    assert decode(splits.train.tokens, vocab) == SAMPLE[:cut]
    assert decode(splits.test.tokens, vocab) == SAMPLE[cut:]
    assert set("é日本ç") <= set(SAMPLE[cut:]) and not set("é日本ç") & set(SAMPLE[:cut])  # only held out
    assert splits.train.tokens.dtype == torch.int64 and splits.train.tokens.dim() == 1
    assert splits.details["sha256"] == hashlib.sha256(sample.read_bytes()).hexdigest()  # what sha256sum prints
    assert (splits.details["chars"], splits.details["source"]) == (len(SAMPLE), str(sample))


@pytest.mark.parametrize("options", [{}, {"seq_len": 16, "test_fraction": 0.3}], ids=["defaults", "options"])
def test_the_catalog_counts_windows_as_the_loader_serves_them(options: dict) -> None:
    """Training examples are the distinct training windows, test examples the windows that tile the held-out part;
    an epoch is steps_per_epoch steps whatever the batch size."""
    splits = load_dataset("text", options)
    assert DATASET_INFO["text"].sizes(options) == (len(splits.train), 0, len(splits.test))
    seq_len = options.get("seq_len", 64)
    assert len(splits.train) == len(splits.train.tokens) - seq_len
    assert len(splits.test) == (len(splits.test.tokens) - 1) // seq_len
    assert DATASET_INFO["text"].train_steps(options, batch_size=7) == 100
    assert DATASET_INFO["mnist1d"].train_steps({}, batch_size=128) == 32  # one pass: ceil(4000 / 128)


# -- training windows ---------------------------------------------------------------------------------------------


def test_windows_targets_are_the_inputs_shifted_by_one() -> None:
    windows = Windows(torch.arange(20), 4)
    assert len(windows) == 16 and windows.x.shape == windows.y.shape == (16, 4)
    for start in range(16):
        assert windows.x[start].tolist() == list(range(start, start + 4))
        assert windows.y[start].tolist() == list(range(start + 1, start + 5))
    tiles = Windows(torch.arange(20), 4, stride=4)
    assert tiles.x.flatten().tolist() == list(range(16)) and tiles.y.flatten().tolist() == list(range(1, 17))
    with pytest.raises(ValueError, match="hold no window"):
        Windows(torch.arange(4), 4)


def test_training_batches_are_random_windows_drawn_from_the_seed(sample: Path) -> None:
    splits = load_text(path=str(sample), seq_len=8, steps_per_epoch=5, test_fraction=0.25)
    text = SAMPLE[: round(len(SAMPLE) * 0.75)]
    vocab = read_corpus(str(sample)).vocab

    def epoch(batches: DeviceBatches) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(batches)

    a, b = splits.train_batches(6, seed=1), splits.train_batches(6, seed=1)
    first = epoch(a)
    assert len(a) == len(first) == 5 and all(x.shape == y.shape == (6, 8) for x, y in first)
    for x, y in first:
        assert x.dtype == y.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])  # targets: the inputs shifted by one
        for row_x, row_y in zip(x, y, strict=True):  # each a window of the training text and its next characters
            window = decode(row_x, vocab) + decode(row_y[-1:], vocab)
            assert window in text
    assert all(torch.equal(p[0], q[0]) for p, q in zip(first, epoch(b), strict=True))  # same seed, same windows
    second = epoch(a)
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(first, second, strict=True))  # a new draw each epoch
    other = epoch(splits.train_batches(6, seed=2))
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(first, other, strict=True))


def test_data_parallel_ranks_draw_their_own_windows() -> None:
    windows = Windows(torch.arange(500), 5)
    ranks = [list(DeviceBatches(windows, 4, seed=0, steps_per_epoch=3, rank=r, world_size=2)) for r in (0, 1)]
    assert [len(r) for r in ranks] == [3, 3]
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(*ranks, strict=True))


def test_evaluation_tiles_the_held_out_part_once_in_order() -> None:
    from reslab.data.datamodule import TensorDataModule

    splits = load_text(seq_len=32)
    dm = TensorDataModule(splits, 16, eval_batch_size=100)
    (loader,) = dm.val_dataloader()
    assert dm.eval_names == ["test"]
    xs, ys = zip(*loader, strict=True)
    x, y = torch.cat(xs), torch.cat(ys)
    tokens = splits.test.tokens
    n = (len(tokens) - 1) // 32
    assert x.shape == (n, 32) and torch.equal(x.flatten(), tokens[: n * 32])
    assert torch.equal(y.flatten(), tokens[1 : n * 32 + 1])
    assert len(tokens) - n * 32 - 1 < 32  # what is left over is shorter than a window
    again = torch.cat([b[0] for b in dm.val_dataloader()[0]])
    assert torch.equal(x, again)  # deterministic


# -- bad input: one line, exit 2, before anything runs ---------------------------------------------------------------


def train_on(path: object, *options: str) -> list[str]:
    return ["train", "--family", "transformer", "--dataset", "text", "--data-option", f"path={path}",
            *(a for o in options for a in ("--data-option", o)), "--no-tracking", "--epochs", "1"]  # fmt: skip


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file; name a readable UTF-8 text file"),
        (b"", "the file is empty"),
        (b"caf\xe9 au lait\n" * 20, "not UTF-8 text (byte 0xe9 at line 1, column 4): save it as UTF-8"),
        (b"ab" * 20, "its training part (the first 36 characters) is shorter than one window and its targets "
                     "(seq_len + 1 = 65 characters)"),
        (b"ab" * 300, "its held-out part (the last 60 characters) is shorter than one window"),
        (b"a" * 1000, "a single distinct character"),
    ],
    ids=["missing", "empty", "not-utf8", "short-train", "short-held-out", "one-character"],
)  # fmt: skip
def test_a_text_file_that_cannot_make_the_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, content: bytes | None,
    message: str,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    import reslab.train.run

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("training started on a bad text")

    monkeypatch.setattr(reslab.train.run, "run_one", forbidden)
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    refused(train_on("corpus.txt"), capsys, "dataset 'text': path=corpus.txt: ", message)


def test_a_folder_is_not_a_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refused(train_on(tmp_path), capsys, f"path={tmp_path}: a folder, not a file")


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("seq_len=0", "seq_len must be a positive whole number"),
        ("steps_per_epoch=-3", "steps_per_epoch must be a positive whole number"),
        ("test_fraction=1", "test_fraction must be a number between 0 and 1"),
        ("seq_len=300000", "its held-out part (the last 46497 characters) is shorter than one window"),
    ],
)
def test_text_options_out_of_range(option: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    refused(["train", "--family", "transformer", "--dataset", "text", "--data-option", option, "--no-tracking"], capsys,
            message)  # fmt: skip


def test_a_sweep_over_a_bad_text_is_refused_with_its_config_path(tmp_path: Path) -> None:
    from reslab.sweep.config import ConfigError, load_config

    config = {"name": "t", "dataset": {"name": "text", "options": {"path": str(tmp_path / "gone.txt")}},
              "grid": {"family": "mlp", "depths": [4]}}  # fmt: skip
    with pytest.raises(ConfigError, match=r"dataset: dataset 'text': path=.*gone\.txt: no such file"):
        load_config(config)


def test_a_file_changed_on_disk_is_read_again(sample: Path) -> None:
    before = read_corpus(str(sample)).sha256
    sample.write_text(SAMPLE + "more\n", encoding="utf-8")
    assert read_corpus(str(sample)).sha256 == hashlib.sha256((SAMPLE + "more\n").encode()).hexdigest() != before


# -- a small causal transformer, probed and trained through the real fit path ----------------------------------------

#: One pre-norm block of width 16, two heads, a context of 16 characters: a language model that trains in seconds.
SMALL = NetSpec("transformer", "preact", 1, 16, heads=2, context=16)


def test_the_signal_probe_measures_a_language_model_from_its_embeddings() -> None:
    """Token ids are not continuous inputs: the probe at initialisation takes the batch as ids, and measures the
    input C-map at the embeddings and the Jacobian of the last position's logits with respect to them."""
    from reslab.models import build_net
    from reslab.probe.measure import probe_at_init, probe_batch
    from reslab.train.objective import training_loss

    splits = load_text(seq_len=16)
    torch.manual_seed(0)
    net = build_net(SMALL, splits.input_shape, splits.num_classes)
    probe = probe_at_init(net, splits, batch=8, seed=3)
    x, y = probe_batch(splits.train.x, splits.train.y, 8, 3)
    assert x.dtype == torch.int64 and x.shape == (8, 16)
    assert probe.loss == pytest.approx(training_loss(net.train()(x), y).item())
    assert probe.jacobian_examples == 8 and len(probe.jacobian_sv) == splits.num_classes  # vocabulary < 16 x 16
    assert 0 < probe.cmap_input < 1 and probe.anomalies == []
    assert len(probe.blocks) == 2 and all(b.weight_grad > 0 for b in probe.blocks)  # attention, then the MLP


TEXT = DataConfig(name="text", options={"seq_len": 16, "steps_per_epoch": 6})
ADAMW = TrainConfig(epochs=2, batch_size=8, optimizer="adamw", lr=3e-3, warmup_epochs=0, threads=1,
                    weight_decay=0.0, telemetry_every=3)  # fmt: skip


def test_a_language_model_epoch_reports_errors_and_bits_per_character() -> None:
    from reslab.train.run import run_one

    result = run_one(SMALL, TEXT, ADAMW, None)
    assert len(result.history) == 2
    for epoch in result.history:
        for split in ("train", "test"):
            assert epoch[f"{split}_bpc"] == pytest.approx(epoch[f"{split}_loss"] / math.log(2))
            assert 0 <= epoch[f"{split}_error"] <= 1
        assert not any(k.startswith("val_") for k in epoch)
        assert epoch["train_images_per_s"] == pytest.approx(6 * 8 / epoch["epoch_time_s"])  # windows, not characters
    vocab = DATASET_INFO["text"].shape(TEXT.options)[1]
    assert result.history[0]["train_bpc"] < math.log2(vocab) + 0.5  # near uniform at first, and learning
    assert result.history[-1]["test_bpc"] < result.history[0]["test_bpc"]
    assert result.to_json()["test_bpc"] == result.metrics["test_bpc"]
    again = run_one(SMALL, TEXT, ADAMW, None)  # the same windows, the same training
    same = [k for k in result.metrics if k not in ("epoch_time_s", "train_images_per_s")]
    assert {k: again.metrics[k] for k in same} == pytest.approx({k: result.metrics[k] for k in same}, abs=1e-6)


def test_reslab_train_on_text_prints_bits_per_character(capsys) -> None:
    code = main(["train", "--family", "transformer", "--depth", "1", "--width", "16", "--heads", "2", "--context",
                 "16", "--dataset", "text", "--data-option",
                 "seq_len=16", "--data-option", "steps_per_epoch=4", "--epochs", "2", "--batch-size", "8",
                 "--optimizer", "adamw", "--lr", "0.003", "--warmup-epochs", "0", "--threads", "1", "--no-tracking"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert [line.split()[:2] for line in out[:2]] == [["epoch", "1/2"], ["epoch", "2/2"]]
    assert all("train_bpc" in line and "test_bpc" in line for line in out)


@pytest.mark.slow
def test_a_language_model_run_is_recorded_in_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real fit path end to end: the probe at initialisation, AdamW, per-epoch bits per character in a sqlite
    MLflow store, and the text's SHA-256 and size as params."""
    from mlflow.tracking import MlflowClient

    from reslab.train.run import run_one

    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_one(SMALL, TEXT, ADAMW.model_copy(update={"epochs": 3}),
                     TrackingConfig(uri=store, experiment="text", system_metrics=False))  # fmt: skip
    client = MlflowClient(store)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["dataset"] == "text"
    text = pydoc_text()
    params = run.data.params
    assert params["data.sha256"] == hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert params["data.chars"] == str(len(text)) and params["data.vocab_size"] == str(len(set(text)))
    assert params["data.seq_len"] == "16" and params["data.steps_per_epoch"] == "6" and params["data.path"] == "None"
    assert params["train.optimizer"] == "adamw" and params["train.betas"] == "[0.9, 0.999]"
    for key in ("train_bpc", "test_bpc", "train_loss", "test_loss", "train_error", "test_error"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(result.run_id, key))
        assert [step for step, _ in history] == [1, 2, 3], key
    bpc = client.get_metric_history(result.run_id, "test_bpc")
    loss = {m.step: m.value for m in client.get_metric_history(result.run_id, "test_loss")}
    assert all(m.value == pytest.approx(loss[m.step] / math.log(2)) for m in bpc)
    assert {"probe/cmap_last", "probe/log10_jacobian_cond"} <= set(run.data.metrics)  # the probe at initialisation
