"""`python -m stages <stage>`: run one pipeline stage.

Exit status 2 with one line on stderr for what the user can fix: bad input (`PipelineError`), a permission,
a full disk or file-size limit, params.yaml edited while the stage ran. Anything else is a bug and keeps its
traceback.
"""

import logging
import os
import sys
from pathlib import Path

from pipeline.core.errors import PipelineError, write_failure
from pipeline.params import DEFAULT_PARAMS, declared_keys, params_values
from stages import app, setup_logging

# Importing a stage module registers its sub-command on `app`, in pipeline order (so no sorting here).
# isort: off
from stages import download  # noqa: F401
from stages import reference  # noqa: F401
from stages import extract  # noqa: F401
from stages import codebook  # noqa: F401
from stages import decoder  # noqa: F401
from stages import reconstruct  # noqa: F401
from stages import train  # noqa: F401
from stages import sample  # noqa: F401
from stages import evaluate  # noqa: F401
# isort: on


def _invocation(argv: list[str]) -> tuple[str | None, Path]:
    """(the stage named on the command line or None, the params file it reads)."""
    stage = next((a for a in argv if not a.startswith("-")), None)
    params = DEFAULT_PARAMS
    for i, arg in enumerate(argv):
        if arg == "--params" and i + 1 < len(argv):
            params = Path(argv[i + 1])
        elif arg.startswith("--params="):
            params = Path(arg.partition("=")[2])
    return stage, params


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    setup_logging()
    stage, params = _invocation(sys.argv[1:])
    keys = declared_keys(stage) if stage else None
    if stage and not Path("dvc.yaml").is_file():
        logging.getLogger("stages").warning(
            "%s has no dvc.yaml: this stage writes data/, metrics/ and plots/ here, untracked by DVC; run stages from "
            "the project root (the folder with dvc.yaml) to have them tracked",
            Path.cwd(),
        )
    before = params_values(params, keys) if stage else None
    try:
        app()
    except SystemExit as done:
        if stage and done.code in (0, None) and params_values(params, keys) != before:
            _fail(
                f"{params} changed while the {stage} stage ran ({', '.join(keys or ['its sections'])}): its "
                f"outputs were made with the old values, which DVC would record as the new ones; re-run it "
                f"(dvc repro {stage})"
            )
        raise
    except PipelineError as e:
        _fail(str(e))
    except PermissionError as e:  # a file or folder this user may not read or write: fixable, not a bug
        _fail(
            f"{e.filename or e}: permission denied; make it readable/writable for this user or run from a "
            "checkout you own"
        )
    except Exception as e:
        cause = write_failure(e)
        if cause is None:
            raise
        print(
            f"error: the {stage} stage could not write its outputs: {cause} ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200]}). Free space where data/ lives (df -h data) or raise the limit, then "
            f"re-run; its partial outputs were removed and nothing was recorded.",
            file=sys.stderr,
        )
        sys.stderr.flush()
        sys.stdout.flush()
        logging.shutdown()
        # HDF5 segfaults at interpreter exit after a failed write (h5py 3.16): leave without finalising.
        os._exit(2)


if __name__ == "__main__":
    main()
