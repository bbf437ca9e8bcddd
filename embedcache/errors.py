"""One base error for everything embedcache reports to a user.

The CLI turns any :class:`EmbedcacheError` into one line on stderr and a
non-zero exit; anything else is a bug and keeps its traceback.
"""


class EmbedcacheError(Exception):
    """Base class: a problem with the user's input, data or environment."""

    exit_code = 2

    def __str__(self) -> str:
        return one_line(super().__str__())


def one_line(message: str) -> str:
    """The error's own line, when a DataLoader worker wrapped it in a traceback.

    torch re-raises an error from a worker process as ``Caught DataError in
    DataLoader worker process 0. Original Traceback ...``, ending with the
    original ``embedcache.errors.DataError: <message>`` line: that message
    is what the user needs.

    >>> one_line("Caught DataError in DataLoader worker process 0.\\nOriginal Traceback (most recent call last):"
    ...          "\\n  File ...\\nembedcache.errors.DataError: a.png: not RGB")
    'a.png: not RGB'
    """
    if not message.startswith("Caught ") or "Original Traceback" not in message:
        return message
    for line in reversed(message.splitlines()):
        head, sep, rest = line.partition(": ")
        if sep and head.split(".")[-1].endswith("Error") and " " not in head:
            return rest
    return message


class ConfigError(EmbedcacheError):
    """Settings that cannot work together, or a value out of range."""


class EncoderError(EmbedcacheError):
    """Unknown encoder name, or an encoder that cannot be built."""


class WeightsError(EmbedcacheError):
    """Weights missing, unreadable, or not matching the architecture."""


class DataError(EmbedcacheError):
    """A dataset or file with the wrong layout, shape, dtype or content."""


class OutputError(EmbedcacheError):
    """An output path that cannot be written (a file in the way, no permission), found before the work starts."""


class OutputMismatchError(DataError):
    """An output folder holds another run's partial results (stops a whole run, unlike one slide's failure)."""


class StoreError(EmbedcacheError):
    """A store that is missing, incomplete, corrupted or made differently."""


class StoreMismatchError(StoreError):
    """Adding to a store made with another configuration."""


class RunError(EmbedcacheError):
    """A decoder run directory that is missing, unreadable, or made for other features."""


class TrainingError(EmbedcacheError):
    """Training cannot go on (NaN loss, out of memory); the last checkpoint is kept."""


class PipelineError(EmbedcacheError):
    """A step of a pipeline failed; the message names the step, the exit code is the step's own."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


class ClaimedError(EmbedcacheError):
    """An output that another live process is writing now (a second command on the same --out)."""
