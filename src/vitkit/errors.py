"""One exception type for problems a user can fix (bad files, bad options).

The CLI prints these as a single ``error: ...`` line, never a traceback; the message
names the file and what is wrong with it.
"""


class VitkitError(Exception):
    """A user-facing error: the message alone tells what to fix."""
