"""`python -m stages <stage>`: run one pipeline stage."""

import sys

from pipeline.core.errors import PipelineError
from stages import app, setup_logging

# Importing a stage module registers its sub-command on `app`, in pipeline order.
from stages import download  # noqa: E402,F401
from stages import reference  # noqa: E402,F401
from stages import extract  # noqa: E402,F401
from stages import codebook  # noqa: E402,F401
from stages import decoder  # noqa: E402,F401
from stages import reconstruct  # noqa: E402,F401
from stages import train  # noqa: E402,F401
from stages import sample  # noqa: E402,F401
from stages import evaluate  # noqa: E402,F401


def main() -> None:
    setup_logging()
    try:
        app()
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except PermissionError as e:  # a file or folder this user may not read or write: fixable, not a bug
        print(f"error: {e.filename or e}: permission denied; make it readable/writable for this user or run "
              "from a checkout you own", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
