"""User-facing errors.

Anything a user can fix (a wrong path, an unknown model, a malformed file) raises
:class:`FDAlignError`. The CLI prints its message on one line and exits with status 2 instead of
showing a stack trace; library users can catch it like any other exception.
"""


class FDAlignError(Exception):
    """An error caused by user input; the message says what is wrong and what to do."""
