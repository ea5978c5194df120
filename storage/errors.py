"""The one base of every error aftzoo raises on purpose.

A caller (the CLI, the app, the server) catches ``AftzooError`` and shows its message as it is:
each message already says what is wrong and what to do. Subclasses exist where callers must tell
cases apart; a look-up miss is also a ``LookupError`` and bad input also a ``ValueError``, so code
written against the builtins keeps working. None of them is a ``KeyError``, whose ``str()`` quotes
the message.
"""
from __future__ import annotations


class AftzooError(Exception):
    """An error whose message is meant for the user: what is wrong and what to do."""
