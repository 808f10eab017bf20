"""Language models: a generated text for evaluation, and a prefix continued for prediction."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from rich.table import Table
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from dlrun.atomic import atomic_write
from dlrun.data.card import DataCard
from dlrun.tasks import LanguageModel, Task
from dlrun.tools.outputs.base import OutputOptions, TaskOutputs

log = logging.getLogger("dlrun")


class LanguageModelOutputs(TaskOutputs):
    def __init__(self, card: DataCard, options: OutputOptions = OutputOptions()) -> None:
        super().__init__(card, options)
        self.text = ""

    def generate(self, model: nn.Module, prefix: str, length: int) -> str:
        """`prefix` continued greedily by `length` tokens (as each epoch's sample is)."""
        tokens = self.card.vocabulary["tokens"]
        separator = self.card.vocabulary["separator"]
        index = {token: i for i, token in enumerate(tokens)}
        pieces = list(prefix) if separator == "" else prefix.split()
        unknown = sorted({piece for piece in pieces if piece not in index})
        if unknown:
            log.warning("the prefix holds %d token(s) the model does not know (read as <unk>): %s",
                        len(unknown), " ".join(repr(piece) for piece in unknown[:10]))
        ids = [index.get(piece, 0) for piece in pieces]
        return LanguageModel(tokens, separator, ids, carry_state=False, sample_length=length).generate(model)

    def finish(self, folder: Path, writer: SummaryWriter, model: nn.Module, task: Task) -> dict[str, Any]:
        prefix = self.options.prefix if self.options.prefix is not None else self.card.vocabulary["sample_prefix"]
        self.text = self.generate(model, prefix, self.options.length)
        atomic_write(folder / "generated.txt", lambda partial: partial.write_text(self.text + "\n"))
        writer.add_text("eval/generated", self.text)
        return {"generated": {"prefix": prefix, "length": self.options.length, "text": self.text}}

    def tables(self) -> list[Table]:
        table = Table(title="generated text", show_header=False)
        table.add_column("text")
        table.add_row(self.text)
        return [table] if self.text else []
