"""The `jmed` command line: a click group; each command builds a config and calls one function.

Heavy modules (torch, peft, mlflow, great_expectations) are imported inside the commands, so
`jmed --help` stays fast.
"""
from __future__ import annotations

import sys

import click

import jmed


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


def filter_options(f):
    """The data filters every step accepts (DESIGN.md §3)."""
    opts = [
        click.option("--text-only/--no-text-only", default=None, help="Keep only questions without figures."),
        click.option("--five-choices/--no-five-choices", default=None, help="Keep only 5-choice questions."),
        click.option("--scored-only/--no-scored-only", default=None, help="Drop questions worth 0 points."),
        click.option("--years", default="", help="Comma-separated exam years to keep, e.g. 2018,2019."),
        click.option("--blocks", default="", help="Comma-separated blocks to keep, e.g. B,E."),
        click.option("--ids", default="", help="Comma-separated question ids to keep."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def build_filter(text_only=None, five_choices=None, scored_only=None, years="", blocks="", ids=""):
    from jmed.config import DataFilter

    return DataFilter(
        text_only=bool(text_only), five_choices=bool(five_choices), scored_only=bool(scored_only),
        years=tuple(int(y) for y in _csv(years)), blocks=_csv(blocks), ids=_csv(ids),
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(jmed.__version__, prog_name="jmed")
def main():
    """jmed: adapt open LLMs to Japanese medicine — validate, train, evaluate, promote, serve."""


# ---- validate (issue 2) -------------------------------------------------------------------------

# ---- score (issue 4) ----------------------------------------------------------------------------

# ---- train (issue 3) ----------------------------------------------------------------------------

# ---- evaluate (issue 4) -------------------------------------------------------------------------

# ---- promote / serve / predict (issue 5) --------------------------------------------------------

# ---- pipeline / study / compare / reproduce (issue 6) -------------------------------------------


if __name__ == "__main__":
    sys.exit(main())
