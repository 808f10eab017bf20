"""Console output piped or redirected (a log file, CI, Slurm): plain text, tables at full width."""

from __future__ import annotations

from rich.table import Table

from dlrun.report.console import make_console


def test_a_piped_table_is_plain_text_never_cut(capsys):
    table = Table(title="5-fold cross-validation")
    names = [f"val/a_rather_long_metric_name_{index}" for index in range(8)]
    for name in ["fold", *names]:
        table.add_column(name)
    table.add_row("1", *(f"{285_512_345.1234 + index:,.4f}" for index in range(8)))
    make_console().print(table)  # stdout is not a terminal under pytest
    out = capsys.readouterr().out
    assert "…" not in out and "\x1b[" not in out  # nothing cut short, no colour codes
    assert all(f"{285_512_345.1234 + index:,.4f}" in out for index in range(8))
    assert max(len(line) for line in out.splitlines()) > 200  # wider than any terminal default
