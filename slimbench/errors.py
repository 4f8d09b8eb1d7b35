"""Errors that carry a one-line message meant for the user (printed without a traceback)."""


class ConfigError(ValueError):
    """Bad input found while validating a run, before any weights are loaded."""


class DataUnavailableError(ConfigError):
    """A dataset the run needs is neither in the data dir nor reachable on the hub."""


class RunInterrupted(KeyboardInterrupt):
    """A signal (SIGTERM, SIGINT, SIGHUP) stopped a run; raised so that the run records it first.
    A KeyboardInterrupt: ``except Exception`` does not swallow it, ``except KeyboardInterrupt``
    (Ctrl-C handling in notebooks and scripts) still sees it."""

    def __init__(self, signum: int) -> None:
        import signal

        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        self.record_path = None  # the failed record, once written
        super().__init__(f"interrupted by {self.signal_name}")


def one_line(exc: BaseException) -> str:
    """An exception's message as one line: its first line, or, when that only introduces the
    reason (``...:``), the last line (transformers' config validation, OmegaConf)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[-1] if lines[0].endswith(":") and len(lines) > 1 else lines[0]
class CheckpointError(ValueError):
    """A saved model that cannot be loaded as it claims: missing or corrupted files, metadata that
    does not match its tensors, or a model whose modules slimbench cannot describe."""
