"""Fault injection for tests/test_reliability.py: kill -9 at an exact point of an atomic write.

Python imports this module at start-up in every process whose PYTHONPATH holds this folder (the test
sets it for `dvc repro` and so for the stage it runs). With KILL_AT="<file name>:<before|after>", the
moment a process renames its temporary of <file name> into place (core/atomic.py: os.replace), the
whole process group (dvc and the stage) gets SIGKILL: "before" leaves the finished temporary behind,
"after" leaves the new output in place but not recorded by DVC. Without KILL_AT it does nothing.
"""

import os
import signal

_SPEC = os.environ.get("KILL_AT", "")
if _SPEC:
    _NAME, _, _WHEN = _SPEC.partition(":")
    _replace = os.replace

    def _replace_or_die(src, dst, *args, **kwargs):
        hit = os.path.basename(os.fspath(dst)) == _NAME
        if hit and _WHEN == "before":
            os.killpg(0, signal.SIGKILL)
        _replace(src, dst, *args, **kwargs)
        if hit and _WHEN == "after":
            os.killpg(0, signal.SIGKILL)

    os.replace = _replace_or_die
