"""What the terminal shows of a training run: a progress bar with the loss (one line per epoch when stderr is
not a terminal). Every line of the trainer's output goes to ``<out>/train.log``; errors are shown too."""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import IO

from tqdm import tqdm

_STEP = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+) \((\d+)%\)\]")
_LOSS = re.compile(r"\bLoss: [-+0-9.eEnaif]+ \(([-+0-9.eEnaif]+)\)")
_ALARM = re.compile(r"Traceback|Error|ERROR|error:|Killed|CUDA out of memory")
LOG_FILE = "train.log"


class TrainProgress:
    """A callable ``echo`` for :func:`training.train.run_train` (use as a context manager)."""

    def __init__(self, out_dir: str | Path, epochs: int, stream: IO[str] = sys.stderr) -> None:
        self.log = open(Path(out_dir) / LOG_FILE, "a", encoding="utf-8")
        self.stream, self.epochs, self.epoch, self.loss = stream, epochs, -1, None
        self.tty = stream.isatty()
        self.bar = tqdm(total=epochs * 100, desc="train", unit="%", file=stream, disable=not self.tty,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| epoch {postfix}")

    def __call__(self, line: str) -> None:
        self.log.write(line)
        step, loss = _STEP.search(line), _LOSS.search(line)
        if loss:
            self.loss = loss.group(1)
        if step:
            self._step(int(step.group(1)), int(step.group(4)))
        elif _ALARM.search(line):
            self.bar.write(line.rstrip("\n"), file=self.stream)

    def _step(self, epoch: int, pct: int) -> None:
        if epoch != self.epoch and self.epoch >= 0 and not self.tty:
            self.stream.write(f"train: epoch {self.epoch + 1}/{self.epochs} done, loss {self.loss}\n")
        self.epoch = epoch
        self.bar.n = min(self.bar.total, epoch * 100 + pct)
        self.bar.set_postfix_str(f"{epoch + 1}/{self.epochs}, loss {self.loss}", refresh=True)

    def __enter__(self) -> "TrainProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.epoch >= 0 and not self.tty:
            self.stream.write(f"train: epoch {self.epoch + 1}/{self.epochs} done, loss {self.loss}\n")
        self.bar.close()
        self.log.close()
