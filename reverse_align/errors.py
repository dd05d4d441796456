"""The one exception type that means "the user's input is wrong" (exit code 2)."""


class UserError(Exception):
    """Bad input or configuration.

    The message is printed as a single ``error: <message>`` line; it must say
    what is wrong and where (file, line, key), never need a traceback.
    """

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
