"""Errors a user can cause.

Every error that bad input can trigger (a missing or corrupt file, an unknown version, a size
mismatch, a bad option) is a subclass of :class:`RWKVKitError`. Its message names the problem and
what to do; the CLI prints that one line and exits with status 2.
"""

from __future__ import annotations


class RWKVKitError(Exception):
    """Base class of every error rwkvkit raises on bad user input."""


class CheckpointError(RWKVKitError):
    """A checkpoint is missing, unreadable, corrupt, or cannot be mapped to a model."""


class UnsupportedVersionError(CheckpointError):
    """The checkpoint is of an RWKV version (or another architecture) rwkvkit cannot run."""


class TokenizerError(RWKVKitError):
    """A tokenizer cannot be loaded, or does not fit the model it is used with."""


class StateError(RWKVKitError):
    """A saved state is unreadable or does not fit the model."""


class ConfigError(RWKVKitError):
    """An option or configuration value is invalid."""


class InputError(RWKVKitError, ValueError):
    """Tensors passed to a model have the wrong shape, dtype or range."""


class VocabularyError(TokenizerError, InputError):
    """Token ids outside the model's vocabulary: usually a tokenizer that does not fit the model."""


class Interrupted(RWKVKitError):
    """A run stopped on a signal after saving its checkpoint; ``exit_code`` is 128 + the signal."""

    def __init__(self, message: str, signum: int, step: int) -> None:
        super().__init__(message)
        self.signum, self.step = signum, step
        self.exit_code = 128 + signum
