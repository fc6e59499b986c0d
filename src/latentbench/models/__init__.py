"""One LightningModule per file; shared training logic lives in :mod:`latentbench.models.base`."""
