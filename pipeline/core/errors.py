"""The one exception type for bad input.

Its message names the offending file or parameter and says how to fix it. The CLI prints it without
a traceback and exits with status 2; anything else is a bug and keeps its traceback.
"""

import sys


class PipelineError(Exception):
    """Bad input (params, files, artifacts) that the user can fix."""


# A full disk or a file-size limit surfaces in many forms: OSError (ENOSPC, EDQUOT, EFBIG), h5py's RuntimeError
# quoting the C library's errno, safetensors' "No space left", torch.save's "unexpected pos" (its writer saw a
# short write and names no errno).
_FULL_ERRNOS = {
    28: "no space left on the device",
    122: "the disk quota is exceeded",
    27: "a file-size limit (ulimit -f)",
}
_FULL_TEXTS = {
    "No space left on device": 28,
    "Disk quota exceeded": 122,
    "File too large": 27,
    "errno = 28": 28,
    "errno = 122": 122,
    "errno = 27": 27,
}
_SHORT_WRITE = "unexpected pos"


def write_failure(error: BaseException) -> str | None:
    """What stopped a write, when `error` (or an exception it was raised from) is a full disk or a file-size
    limit; None for anything else."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _FULL_ERRNOS:
            return _FULL_ERRNOS[error.errno]
        text = str(error)
        for needle, code in _FULL_TEXTS.items():
            if needle in text:
                return _FULL_ERRNOS[code]
        if _SHORT_WRITE in text:
            return "a short write (the disk is full or a file-size limit was hit)"
        error = error.__cause__ or error.__context__
    return None


def quiet_write_failure_reports() -> None:
    """Keep h5py from printing a traceback for every failed flush of a half-written file as it frees its objects
    (it reports them through sys.excepthook and sys.unraisablehook): on a full disk the CLI says it once.
    Install before typer is imported, which captures sys.excepthook then."""

    def unraisable(report) -> None:
        if write_failure(report.exc_value) is None:
            sys.__unraisablehook__(report)

    def excepthook(kind, value, traceback) -> None:
        if write_failure(value) is None:
            sys.__excepthook__(kind, value, traceback)

    sys.unraisablehook, sys.excepthook = unraisable, excepthook
