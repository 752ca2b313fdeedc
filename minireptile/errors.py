"""The one exception type the command line turns into a one-line message and exit 2."""


class UserError(Exception):
    """Bad input from the user: a missing or corrupt file, an impossible task, a wrong shape.

    The message is a single line that names the problem (and the file or numbers).
    ``minireptile`` prints it as ``minireptile: error: <message>`` and exits with status 2.
    """
