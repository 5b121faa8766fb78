"""The one exception type for mistakes a user can fix (bad config, missing data, bad file)."""


class UserError(Exception):
    """Raised for input the user can correct; the CLI prints it as one line and exits with code 2.

    Anything else that escapes is a bug and keeps its traceback.
    """
