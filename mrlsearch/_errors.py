"""Exceptions raised by mrlsearch.

The hierarchy::

    MRLError                         base of everything mrlsearch raises on purpose
    ├── DimensionError(ValueError)   a shape, a dim or a nesting dim that does not fit
    ├── FormatError(ValueError)      a file or directory that is not what it claims to be
    └── ProviderError(RuntimeError)  an onnxruntime execution provider that cannot run

Each also derives from the builtin named in brackets, so ``except ValueError`` keeps working.
Other bad arguments (k <= 0, an unknown metric, NaN in the input) raise plain
``ValueError``/``TypeError`` with a message that names the argument, what it must be and what
it got.
"""

from __future__ import annotations

__all__ = ["DimensionError", "FormatError", "MRLError", "ProviderError"]


class MRLError(Exception):
    """Base class of the errors mrlsearch raises on purpose."""


class DimensionError(MRLError, ValueError):
    """A vector, a prefix dim or a set of nesting dims does not fit the model or index."""


class FormatError(MRLError, ValueError):
    """A saved index, classifier or model directory is corrupt, foreign or of another version."""


class ProviderError(MRLError, RuntimeError):
    """The requested onnxruntime execution provider is not available."""
