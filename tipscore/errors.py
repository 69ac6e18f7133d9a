"""The one exception type users see: a one-line message naming the bad value and what was expected.

The CLI prints it as `error: <message>` and exits non-zero, with no traceback; anything else that
escapes is a bug and keeps its traceback.
"""


class UserError(ValueError):
    pass
