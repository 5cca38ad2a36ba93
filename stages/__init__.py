"""Thin DVC stage entry points: one typer sub-command per stage (see `python -m stages --help`).

Stage modules import torch, FAISS, torchmetrics and the library inside their command, not at the top:
listing the stages (`--help`) then loads none of them, and each stage loads only what it runs.
"""

import logging
from pathlib import Path

from pipeline.core.errors import quiet_write_failure_reports  # first: pipeline/__init__.py sets OMP_WAIT_POLICY

quiet_write_failure_reports()  # before typer captures sys.excepthook

import typer  # noqa: E402

from pipeline.core.atomic import remove_stale_temps_under  # noqa: E402
from pipeline.paths import OUTPUT_ROOTS  # noqa: E402

app = typer.Typer(
    help="CNN-token image GPT on CIFAR-10. Each sub-command is one DVC stage (see dvc.yaml).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

PARAMS_OPTION = typer.Option(Path("params.yaml"), "--params", help="params file to read")


@app.callback()
def _group() -> None:
    """Run one stage of the pipeline; `dvc repro` runs them in order."""
    # A stage killed with SIGKILL (or the dvc running it) leaves its temporaries; whichever stage runs
    # next removes them, wherever they are (DVC may restore the killed stage from its run cache).
    for stale in remove_stale_temps_under(*OUTPUT_ROOTS):
        logging.getLogger("stages").info("removed %s, left by a killed run", stale)


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
