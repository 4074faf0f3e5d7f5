"""The one error type for malformed input."""


class MalformedInput(ValueError):
    """Input from the wire, a file or the command line is not what it must be.

    The message names what is wrong and never contains a secret.
    """
