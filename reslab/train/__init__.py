"""Training: the recipe (`TrainConfig`), the LightningModule, gradient telemetry and `run_one`.

`reslab.train.run` imports Lightning lazily, so configs can be validated without paying for it.
"""

from reslab.train.config import DataConfig, TrackingConfig, TrainConfig

__all__ = ["DataConfig", "TrackingConfig", "TrainConfig"]
