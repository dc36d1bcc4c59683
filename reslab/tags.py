"""The names of the MLflow tags and metrics reslab writes and reads, in one place.

They are part of the tracking contract: stored runs carry them and users' own MLflow queries filter on them, so a
name here never changes, only its use. Import-free on purpose, so the report and the CLI can use them without
MLflow or torch. The attributes the sweep's queue keeps on its Optuna trials are not tags: they live in
`reslab.sweep.queue` (some share a name with a tag here because they record the same thing).
"""

from __future__ import annotations

from typing import Final


class Tag:
    """MLflow tag names (a namespace, never instantiated)."""

    # MLflow's own: how the UI nests a sweep's child runs under its parent.
    PARENT_RUN: Final = "mlflow.parentRunId"

    # Provenance, on every run (and the git commit and config file on a sweep's parent).
    GIT_COMMIT: Final = "reslab.git_commit"
    DEVICE: Final = "reslab.device"
    VERSION_PREFIX: Final = "reslab.version."  # + package name: reslab.version.torch
    CONFIG: Final = "reslab.config"
    BACKEND_PREFIX: Final = "reslab.backend."  # + setting: reslab.backend.cudnn.benchmark (numerics of the run)
    COMPILE: Final = "reslab.compile"  # the torch.compile mode the step ran with, or `off`
    COMPILE_FALLBACK: Final = "reslab.compile_fallback"  # why compilation was given up (the run went on eagerly)
    CHANNELS_LAST: Final = "reslab.channels_last"

    # How a run ended, beyond MLflow's status.
    FAILURE: Final = "reslab.failure"  # why a run is FAILED or KILLED
    DIVERGED: Final = "reslab.diverged"  # why the loss became NaN: the run is FINISHED and still a result
    SUPERSEDED: Final = "reslab.superseded"  # its worker lost the lease: KILLED, and no attempt at all

    # A sweep's parent run.
    SWEEP: Final = "reslab.sweep"  # the sweep's name (on its children too)
    ROLE: Final = "reslab.role"  # `sweep`, or `superseded` once another queue incarnation took the name over
    SWEEP_ID: Final = "reslab.sweep_id"  # the queue incarnation the parent belongs to
    SUPERSEDED_BY: Final = "reslab.superseded_by"  # the incarnation that replaced it
    CELLS_DONE: Final = "reslab.cells_done"
    CELLS_FAILED: Final = "reslab.cells_failed"

    # A sweep's child run: which work item, which try.
    CELL: Final = "reslab.cell"
    ARM: Final = "reslab.arm"  # the recipe settings of the sweep's arm the cell belongs to, as its key writes them
    SLOT: Final = "reslab.slot"
    TRIAL: Final = "reslab.trial"
    ATTEMPT: Final = "reslab.attempt"
    TUNE_TRIAL: Final = "reslab.tune_trial"
    TUNE_METRIC: Final = "reslab.tune_metric"


class Metric:
    """MLflow metric names every training run logs per epoch (a namespace, never instantiated).

    Errors are fractions of predictions in [0, 1]; losses are mean cross-entropies in nats. A sequence model (the
    `text` dataset: a prediction at every position) logs its losses in bits per character as well (`*_bpc`, loss /
    ln 2), and its errors are the share of next characters mispredicted; other runs have no `*_bpc`."""

    #: Losses in bits per character, logged by sequence models only.
    BITS: Final = ("train_bpc", "test_bpc")
    #: The final values a sweep's queue keeps on a completed cell and the report tabulates.
    RESULTS: Final = ("train_error", "test_error", "val_error", "train_loss", "test_loss", "val_loss", *BITS)
    #: Every per-epoch metric the report reads back as a history.
    EPOCH: Final = ("train_error", "train_loss", "val_error", "val_loss", "test_error", "test_loss", *BITS, "lr",
                    "epoch_time_s", "train_images_per_s")  # fmt: skip
