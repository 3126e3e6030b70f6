"""The one error type users see: a clear one-line message and exit code 2."""


class BenchError(Exception):
    """Bad input or usage. The CLI prints ``error: <message>`` and exits with code 2."""

    exit_code = 2


class CannotWrite(BenchError, OSError):
    """A file could not be written (disk full, read-only folder, no permission): ``cannot write
    PATH: reason``.  Still an OSError (its ``errno`` is the original's) for callers that catch those."""

    def __init__(self, path, err: OSError):
        self.message = f"cannot write {path}: {err.strerror or err}"
        super().__init__(self.message)
        self.errno, self.strerror, self.filename = err.errno, err.strerror, str(path)

    def __str__(self) -> str:
        return self.message


def short_reason(e: BaseException) -> str:
    """The first line of an exception's message, at most 200 characters ("" for none): what an
    ``error:`` line quotes of a library's failure."""
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else ""


class CheckFailed(RuntimeError):
    """A run-time check of a group's own numbers failed (robust accuracy above clean accuracy, an
    adversarial example outside the threat model): the group's metrics become nulls with this
    message as their reason (``bench.pipeline.compute``), and the run goes on."""
