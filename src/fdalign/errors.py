"""User-facing errors.

Anything a user can fix (a wrong path, an unknown model, a malformed file) raises
:class:`FDAlignError`. The CLI prints its message on one line and exits with status 2 instead of
showing a stack trace; library users can catch it like any other exception.
"""


class FDAlignError(Exception):
    """An error caused by user input; the message says what is wrong and what to do."""


def user_message(error: FDAlignError) -> str:
    """The one-line message of ``error``.

    An error raised inside a DataLoader worker comes back re-wrapped by torch as "Caught
    FDAlignError in DataLoader worker process 0. Original Traceback ..."; its last line is ours.
    """
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1]
        prefix = f"{FDAlignError.__module__}.{FDAlignError.__name__}: "
        text = text[len(prefix):] if text.startswith(prefix) else text
    return text
