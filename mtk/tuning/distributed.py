"""KerasTuner's distributed mode, as `tune_loss_weights` meets it.

KerasTuner runs one search across processes or machines when three
environment variables are set: a chief (``KERASTUNER_TUNER_ID=chief``)
holds the oracle and serves it over gRPC at ``KERASTUNER_ORACLE_IP`` /
``KERASTUNER_ORACLE_PORT``; every other process is a worker (any other
``KERASTUNER_TUNER_ID``) that asks the chief for trials, trains them and
reports back. The chief trains nothing: its ``search()`` serves until every
trial is handed out and every worker has been told to stop.

This module is the one place mtk asks which of the three a process is
(`tuner_role`), and where a worker checks, within a bounded time, that its
chief is there (`wait_for_chief`): KerasTuner's own client waits up to an
hour for an unreachable chief.
"""

import os
import socket
import time

# The decision KerasTuner's own tuners make (keras_tuner has no public
# alias for it): the same environment, read the same way.
from keras_tuner.src.distribute import utils as _kt_distribute

ENV_VARS = ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT")

# Seconds a worker waits for its chief's port to open: the chief imports
# TensorFlow and builds one model before it serves.
CHIEF_TIMEOUT = 300

CHIEF = "chief"
WORKER = "worker"


def tuner_role():
    """Which part of a KerasTuner search this process plays.

    Returns:
        ``"chief"`` (serves the oracle, trains nothing), ``"worker"`` (runs
        the trials the chief hands out) or None (no distributed search:
        ``KERASTUNER_ORACLE_IP`` is unset). As in KerasTuner, a process is
        the chief when its ``KERASTUNER_TUNER_ID`` contains ``"chief"``.

    Raises:
        RuntimeError: ``KERASTUNER_ORACLE_IP`` is set without
            ``KERASTUNER_ORACLE_PORT`` or ``KERASTUNER_TUNER_ID``.

    Example:

    >>> import os
    >>> "KERASTUNER_ORACLE_IP" in os.environ
    False
    >>> mtk.tuning.tuner_role() is None
    True
    """
    if not _kt_distribute.has_chief_oracle():
        return None
    return CHIEF if _kt_distribute.is_chief_oracle() else WORKER


def chief_address():
    """``"ip:port"`` of the chief, from ``KERASTUNER_ORACLE_IP`` / ``_PORT``."""
    return (
        f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"
    )


def wait_for_chief(timeout=CHIEF_TIMEOUT, poll=1.0):
    """Waits until the chief's port accepts a connection, at most ``timeout`` s.

    A worker calls it before asking for its first trial. Without it, a worker
    whose chief never comes up waits in KerasTuner's gRPC client for an hour
    before failing.

    Args:
        timeout: seconds to keep trying (the chief may still be starting).
        poll: seconds between attempts.

    Raises:
        ConnectionError: nothing accepted a connection at the chief's address
            within ``timeout``; the message names the address and the
            environment variables it came from.
    """
    address = chief_address()
    host = os.environ["KERASTUNER_ORACLE_IP"].strip("[]")
    try:
        port = int(os.environ["KERASTUNER_ORACLE_PORT"])
    except ValueError:
        raise ValueError(
            "KERASTUNER_ORACLE_PORT must be a port number, got "
            f"{os.environ['KERASTUNER_ORACLE_PORT']!r}."
        ) from None
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=min(max(left, 0.1), 5.0)):
                return
        except OSError as error:
            last_error = error
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(poll, left))
    raise ConnectionError(
        f"Tuner {os.environ['KERASTUNER_TUNER_ID']!r} is a worker of a "
        f"distributed search (its KERASTUNER_TUNER_ID lacks 'chief'), but no chief "
        f"answered at {address} (KERASTUNER_ORACLE_IP:KERASTUNER_ORACLE_PORT) "
        f"within {timeout:g} s ({last_error}). Start the chief first, with "
        "KERASTUNER_TUNER_ID=chief and the same KERASTUNER_ORACLE_IP and "
        "KERASTUNER_ORACLE_PORT, check that address from this machine, or pass "
        "a larger chief_timeout. (A chief also exits once its search is done.)"
    )
