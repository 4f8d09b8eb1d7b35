"""Errors that carry a one-line message meant for the user (printed without a traceback)."""


class ConfigError(ValueError):
    """Bad input found while validating a run, before any weights are loaded."""


class DataUnavailableError(ConfigError):
    """A dataset the run needs is neither in the data dir nor reachable on the hub."""


class CheckpointError(ValueError):
    """A saved model that cannot be loaded as it claims: missing or corrupted files, metadata that
    does not match its tensors, or a model whose modules slimbench cannot describe."""
