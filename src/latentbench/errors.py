"""User-facing errors: one line that names the culprit, raised before any training starts."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value, file or path the user supplied is wrong.

    The message is a single line of the form ``<key>: <what is wrong> (<what is allowed>)``.
    """


class RunInterrupted(BaseException):
    """A run stopped by a signal (SIGTERM, SIGINT, SIGUSR1) after saving ``last.ckpt``.

    A BaseException, like KeyboardInterrupt: it must end a Hydra multirun too, not only its job.
    """

    def __init__(self, signum: int, message: str, saved: bool = True):
        super().__init__(message)
        self.signum, self.saved = signum, saved

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 143 for SIGTERM, 130 for SIGINT


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message, or its class name."""
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__


def with_key_prefix(error: BaseException, node: str) -> ConfigError:
    """Return ``error`` as a ConfigError whose message is rooted at the config ``node`` it came from.

    Constructors raise ``ValueError("n_components: must be positive, got 0")``; the caller knows
    the config node (``model``) and turns it into ``model.n_components: must be positive, got 0``.
    """
    message = first_line(error)
    if node and not message.startswith(f"{node}."):
        message = f"{node}.{message}"
    return ConfigError(message)


def did_you_mean(word: str, candidates) -> str:
    """``" (did you mean max_epochs?)"`` for the candidate closest to a misspelled ``word``, else ``""``."""
    import difflib

    close = difflib.get_close_matches(word, [str(c) for c in candidates], n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""
