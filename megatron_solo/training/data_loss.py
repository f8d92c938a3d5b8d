"""What the packer dropped from the data a run has reached, for the rate line and tensorboard.

The dataset plans (and so drops samples in) whole epochs; an epoch's drops count from the step the
run enters it. Drops beyond ``DataConfig.max_drop_share`` were refused at start-up (epoch 0).
"""

from __future__ import annotations


class DataLossTally:
    """Dropped samples and tokens, summed over the datasets and the epochs the loader has reached."""

    def __init__(self, dataset) -> None:
        """``dataset``: the PackedDataset the training loader reads."""
        self.dataset = dataset
        self.epochs = 0  # epochs counted so far: 0 .. epochs-1
        self.samples = 0
        self.tokens = 0

    def update(self, consumed_packs: int) -> bool:
        """Count the epochs reached by ``consumed_packs`` packs (and the next one starting there); True when new."""
        epoch, _ = self.dataset.locate(consumed_packs)
        grew = False
        while self.epochs <= epoch:
            report = self.dataset.overflow_report(self.epochs)
            self.samples += sum(r["samples_dropped"] for r in report.values())
            self.tokens += sum(r["tokens_dropped"] for r in report.values())
            self.epochs += 1
            grew = True
        return grew
