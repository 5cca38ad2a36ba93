"""The one exception type for bad input.

Its message names the offending file or parameter and says how to fix it. The CLI prints it without
a traceback and exits with status 2; anything else is a bug and keeps its traceback.
"""


class PipelineError(Exception):
    """Bad input (params, files, artifacts) that the user can fix."""
