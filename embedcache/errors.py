"""One base error for everything embedcache reports to a user.

The CLI turns any :class:`EmbedcacheError` into one line on stderr and a
non-zero exit; anything else is a bug and keeps its traceback.
"""


class EmbedcacheError(Exception):
    """Base class: a problem with the user's input, data or environment."""

    exit_code = 2


class ConfigError(EmbedcacheError):
    """Settings that cannot work together, or a value out of range."""


class EncoderError(EmbedcacheError):
    """Unknown encoder name, or an encoder that cannot be built."""


class WeightsError(EmbedcacheError):
    """Weights missing, unreadable, or not matching the architecture."""


class DataError(EmbedcacheError):
    """A dataset or file with the wrong layout, shape, dtype or content."""


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
