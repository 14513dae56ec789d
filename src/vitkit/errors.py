"""One exception type for problems a user can fix (bad files, bad options).

The CLI prints these as a single ``error: ...`` line, never a traceback; the message
names the file and what is wrong with it. It is a ``ValueError``, so code that catches
bad arguments the standard way catches these too; what caused it stays chained
(``raise VitkitError(...) from e``) for anyone who asks for the traceback.
"""


class VitkitError(ValueError):
    """A user-facing error: the message alone tells what to fix."""
