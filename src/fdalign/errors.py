"""User-facing errors.

Anything a user can fix (a wrong path, an unknown model, a malformed file) raises
:class:`FDAlignError`. The CLI prints its message on one line and exits with status 2 instead of
showing a stack trace; library users can catch it like any other exception.
"""

import contextvars

# True while a command runs (``as_command``): errors then name options as flags (--out), else as
# the Python keywords a library user passes (out=).
_ON_COMMAND_LINE = contextvars.ContextVar("fdalign_on_command_line", default=False)


class FDAlignError(Exception):
    """An error caused by user input; the message says what is wrong and what to do."""


def option(name: str, python_value: str | None = None) -> str:
    """How the user sets option ``name`` where the error is raised: ``--force`` in a command, ``force=True``
    (``python_value`` given) or ``out`` (not given) from Python."""
    if _ON_COMMAND_LINE.get():
        return "--" + name.replace("_", "-")
    name = name.replace("-", "_")
    return name if python_value is None else f"{name}={python_value}"


def user_message(error: FDAlignError) -> str:
    """The one-line message of ``error``.

    An error raised inside a DataLoader worker comes back re-wrapped by torch as "Caught
    FDAlignError in DataLoader worker process 0. Original Traceback ..."; its last line is ours.
    """
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1]
        prefix = f"{FDAlignError.__module__}.{FDAlignError.__name__}: "
        text = text[len(prefix) :] if text.startswith(prefix) else text
    return text


def as_command(command: str, fn) -> int:
    """``fn()`` with the command line's exit codes: its own (None: 0), 2 for a user error (said on one
    line on stderr, no traceback) or 130 for Ctrl-C. The CLI and the sweep's cells both run this way."""
    import sys

    token = _ON_COMMAND_LINE.set(True)
    try:
        return int(fn() or 0)
    except FDAlignError as e:
        print(f"fdalign {command}: error: {user_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fdalign {command}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # a full disk is the user's to fix: one line, not a traceback
        import errno

        if e.errno not in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            raise
        print(
            f"fdalign {command}: error: no space left on the disk of {e.filename or 'an output file'}; "
            "free some space and run the command again",
            file=sys.stderr,
        )
        return 2
    finally:
        _ON_COMMAND_LINE.reset(token)
