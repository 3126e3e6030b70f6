"""The one error type users see: a clear one-line message and exit code 2."""


class BenchError(Exception):
    """Bad input or usage. The CLI prints ``error: <message>`` and exits with code 2."""

    exit_code = 2
