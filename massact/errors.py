"""One hierarchy of errors; each message says what was wrong and what to do about it."""
from __future__ import annotations


class MassactError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""


class BadOption(MassactError):
    """An option value that cannot work (--device, --batch-size, --resamples, --report-dir): found at start-up."""


class UnknownModel(MassactError):
    """A --model spec that names no built-in model, path or hub id."""


class ModelUnavailable(MassactError):
    """The weights are not on this machine and cannot be fetched: the model's items skip."""


class ModelLoadError(MassactError):
    """The weights exist but cannot be read (truncated, corrupt, wrong format)."""


class UnsupportedArchitecture(MassactError):
    """No adapter is registered for the model's architecture."""


class CorpusError(MassactError):
    """The corpus is empty, missing, or too short for the requested samples."""


class SequenceTooLong(MassactError):
    """--seqlen exceeds the model's context."""


class ActivationOverflow(MassactError):
    """Activations reached inf/nan in the chosen dtype."""


class ClaimRecordError(MassactError):
    """A claim record in claims/ is malformed; the message names the field."""


class AttentionUnavailable(MassactError):
    """The model's attention module returned no probabilities, even in eager mode."""


class ResultsFileError(MassactError):
    """A results.json or baseline that cannot be read or is not a results document; the message names
    the file and what is wrong with it."""
