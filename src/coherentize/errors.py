"""The one exception type for mistakes a user can make (bad file, bad config, missing model).

The CLI prints its message and exits non-zero without a traceback; anything else is a bug and keeps its traceback.
"""


class CoherentizeError(Exception):
    """A user-facing error: the message names the file, line or field and says what to do."""
