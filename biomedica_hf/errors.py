"""Errors a user can fix: each says what is missing and the flag or variable that fixes it.

The ``biomedica`` CLI prints such an error as one line (``Error: ...``) and exits with its
``exit_code``; ``--debug`` or ``BIOMEDICA_DEBUG=1`` shows the traceback instead. Library callers get
ordinary exceptions (:class:`MissingWeightsError` is also an ``OSError``, like the ``from_pretrained``
error it replaces; :class:`WrongModelError` a ``ValueError``).

:func:`unreachable` tells whether an exception (or one it was raised from) means that a server could
not be reached, so callers can translate library-specific network failures in one place.
"""
from __future__ import annotations

import os
import socket

__all__ = ["BiomedicaError", "InputError", "MissingWeightsError", "NetworkError", "NoClusterError", "NothingKeptError",
           "WrongModelError",
           "exception_chain", "hub_offline", "hub_reachable", "is_local_path", "unreachable"]


class BiomedicaError(Exception):
    """A failure with a one-line explanation and a hint (the flag / variable that fixes it)."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message if not hint else f"{message}; {hint}")
        self.message = message
        self.hint = hint

    def line(self) -> str:
        """The whole error on one line."""
        return " ".join(str(self).split())


class MissingWeightsError(BiomedicaError, OSError):
    """Model weights are neither a local folder nor cached, and the Hub cannot be reached."""

    exit_code = 3


class NetworkError(BiomedicaError, ConnectionError):
    """A server the command needs (Hub, NCBI, PMC) cannot be reached."""

    exit_code = 4


class NoClusterError(BiomedicaError, ConnectionError):
    """``--executor ray`` found no running Ray cluster at the address."""

    exit_code = 5


class WrongModelError(BiomedicaError, ValueError):
    """The model given is of another kind than the command needs (e.g. a CLIP folder for ``caption``)."""

    exit_code = 6


class InputError(BiomedicaError, ValueError):
    """The build's input holds nothing to build: ``--input`` missing or unreadable, a folder with no article,
    a listing that is empty once parsed. Raised before anything is written (the output folder is left as it was)."""

    exit_code = 7


class NothingKeptError(BiomedicaError):
    """A build ran but the dataset holds no sample (every article failed or was skipped): the ledger says why."""

    exit_code = 1


_UNREACHABLE_NAMES = frozenset({
    # requests / urllib3 / httpx / huggingface_hub: the server could not be reached at all
    "ConnectionError", "ConnectError", "ConnectTimeout", "NewConnectionError", "MaxRetryError",
    "NameResolutionError", "OfflineModeIsEnabled", "LocalEntryNotFoundError", "ProxyError",
})


def exception_chain(exc: BaseException):
    """``exc`` and the exceptions it came from (``__cause__`` / ``__context__``), each once."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def unreachable(exc: BaseException) -> bool:
    """True when ``exc`` or an exception it came from says a server could not be reached."""
    for e in exception_chain(exc):
        if isinstance(e, (socket.gaierror, ConnectionRefusedError, ConnectionResetError, TimeoutError)):
            return True
        if any(t.__name__ in _UNREACHABLE_NAMES for t in type(e).__mro__):
            return True
        text = str(e)
        if "couldn't connect to" in text or "cannot find the requested files in the local cache" in text:
            return True
    return False


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set to a true value."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick request to the Hub endpoint (``HF_ENDPOINT``), no retries: a missing model fails in seconds
    instead of after huggingface_hub's retry back-off (~50 s when the Hub cannot be reached)."""
    import requests

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        requests.head(endpoint, timeout=timeout, allow_redirects=False)
    except requests.RequestException:
        return False
    return True


def is_local_path(name: str) -> bool:
    """``name`` names something on this machine (an existing path), not a Hub id."""
    return os.path.exists(os.path.expanduser(name))
