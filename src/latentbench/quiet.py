"""Third-party console noise that says nothing to a user of this harness, silenced in one place.

Each entry names a message that is either a false alarm here or advice for another product:

- Lightning's advertisement for LitLogger, its note that validation runs at each epoch's end (the
  default), and its "restoring states" lines when the best checkpoint is tested;
- Lightning's warning that modules are in eval mode at the start of training: the frozen first
  stage and text tower of ``model=ldm`` are, on purpose;
- a PyTorch deprecation warning raised inside Lightning's own code (``LeafSpec``).
"""

from __future__ import annotations

import logging
import warnings

LIGHTNING_INFO = (
    "Tip: For seamless cloud logging",
    "was configured so validation will run at the end of the training epoch",
    "Restoring states from the checkpoint path",
    "Loaded model weights from the checkpoint",
    "Trainer already configured with model summary callbacks",
)
WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\)",
    r"Found \d+ module\(s\) in eval mode at the start of training",
)


class DropMessages(logging.Filter):
    """A logging filter that drops records whose message contains one of ``fragments``."""

    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def silence_third_party_noise() -> None:
    """Install the filters (idempotent): Lightning's info lines and the listed warnings."""
    logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if not any(isinstance(f, DropMessages) for f in logger.filters):
        logger.addFilter(DropMessages(LIGHTNING_INFO))
    for pattern in WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
