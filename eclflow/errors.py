"""One exception hierarchy for everything eclflow raises on purpose.

Every class says whether retrying the operation could help (`retryable`), and every message is
meant to be shown to a user as one line. Catch `EclflowError` for all of them, or one branch:

    EclflowError
    ├── ConfigError          a wrong argument, setting, model name, missing API key or plugin
    ├── WorkflowInvalid      a workflow file or text with errors (`diagnostics`: all of them)
    ├── ValidationError      a value that fails its schema (`field`)
    │   └── InvalidInput     the run's input does not match the workflow's `inputs`
    ├── TemplateError        a Jinja expression that cannot be rendered
    ├── NotFound             RunNotFound, StepNotFound, StoreNotFound (a URL with no store),
    │                        WorkflowNotFound, UnclearRunId (an ambiguous id prefix),
    │                        RunOfAnotherWorkflow (a rerun's run id is another workflow's)
    ├── InvalidState         the run is in no state for it: its id exists already, another
    │                        process runs it, it has finished (pause); RunInterrupted (pause
    │                        of a run whose process ended), RunPaused (Restate paused it)
    ├── PersistenceError     the database failed (retryable)
    │   ├── StoreUnavailable the database cannot be opened: fix the URL
    │   ├── LockWaitStopped  a wait for another process's lock, ended as this one stops
    │   └── JournalRefused   the database refused a value of one run's write (not retryable)
    └── LLMError             a model call failed: RateLimited, ProviderTimeout, ServerError
                             (retryable), AuthError, BadRequest, MockExhausted

`run` and `resume` raise these for what is wrong before the run starts; what goes wrong inside
it (a model that keeps failing, StepTimeout, BudgetExceeded, MaxRevisionsExceeded) fails the run
instead, and its message is the result's `error`. A custom step sees them from `ctx.complete`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # (this module imports nothing heavy: `import eclflow` loads it)
    from .spec.model import Diagnostic


class EclflowError(Exception):
    """Root of every error eclflow raises deliberately."""

    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickle (across processes) the attributes, not the constructor's arguments: most
        # subclasses format their message, so calling them again with it would fail.
        return _restore, (type(self), self.args), self.__dict__


def _restore(cls: type[EclflowError], args: tuple[Any, ...]) -> EclflowError:
    """An unpickled error, built without calling its `__init__` again."""
    return cls.__new__(cls, *args)


class ConfigError(EclflowError):
    """The configuration (command line, environment, registry) is wrong."""

    def __init__(self, message: str) -> None:
        super().__init__(f"Configuration error: {message}")


class WorkflowInvalid(EclflowError):
    """A workflow file failed validation; `diagnostics` holds every problem found."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = diagnostics
        errors = [d for d in diagnostics if getattr(d, "severity", "error") == "error"]
        first = str(errors[0]) if errors else "invalid workflow"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(first + more)


class ValidationError(EclflowError):
    """A value failed validation; `field` names it when known."""

    def __init__(self, message: str, field: str | None = None, details: Any = None) -> None:
        self.field = field
        self.reason = message
        self.details = details
        text = (
            f"Validation error in field '{field}': {message}"
            if field
            else f"Validation error: {message}"
        )
        super().__init__(text)


class InvalidInput(ValidationError):
    """The run's input does not match the workflow's `inputs` schema."""


class TemplateError(EclflowError):
    """A Jinja expression failed to render (undefined name, sandbox violation, syntax)."""


class LLMError(EclflowError):
    """A model call failed. Retryable unless a subclass says otherwise. `retry_after`: the
    seconds the provider asked to wait before the next call (its Retry-After header)."""

    retryable = True

    def __init__(
        self, message: str, *, retryable: bool | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(f"LLM error: {message}", retryable=retryable)
        self.retry_after = retry_after


class RateLimited(LLMError):
    """The provider refused the call for its rate limit (HTTP 429); `retry_after` if it said."""

    retryable = True


class ProviderTimeout(LLMError):
    """The provider did not answer in time."""

    retryable = True


class ServerError(LLMError):
    """The provider failed (HTTP 5xx, a lost connection)."""

    retryable = True


class AuthError(LLMError):
    """The provider refused the credentials (a wrong or missing API key)."""

    retryable = False


class BadRequest(LLMError):
    """The provider refused the request itself (an unknown model, a prompt too long)."""

    retryable = False


class MockExhausted(LLMError):
    """The scripted mock model was asked for more replies than it holds."""

    retryable = False


class StepTimeout(EclflowError):
    """A step attempt ran longer than its `timeout` (`seconds`); retried as the step says."""

    retryable = True

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(f"Step timed out after {seconds:g}s")


class MaxRevisionsExceeded(EclflowError):
    """A revision loop with `on_exhausted: fail` used all its revisions (`attempts`)."""

    def __init__(self, attempts: int) -> None:
        self.attempts = attempts
        super().__init__(f"max revisions exceeded ({attempts} attempts)")


class BudgetExceeded(EclflowError):
    """A model call would go over the run's budget, so it was not made; `resume` with a
    higher limit of the kind named continues the run."""

    def __init__(self, message: str) -> None:
        super().__init__(f"budget_exceeded: {message}")


class NotFound(EclflowError):
    """A named thing (run, step, definition) does not exist."""


class WorkflowNotFound(NotFound):
    """No workflow of that id."""

    def __init__(self, id: str) -> None:
        super().__init__(f"Workflow not found: {id}")


class StepNotFound(NotFound):
    """No step type of that name is registered (nor installed as a plugin)."""

    def __init__(self, id: str) -> None:
        super().__init__(f"Step not found: {id}")


class RunNotFound(NotFound):
    """No run of that id (or id prefix) in the store."""

    def __init__(self, id: str, hint: str = "") -> None:
        super().__init__(f"Run not found: {id}{f' ({hint})' if hint else ''}")


class StoreNotFound(NotFound):
    """A database that a command only reads has no eclflow store (a mistyped --db)."""

    def __init__(self, url: str) -> None:
        super().__init__(
            f"no eclflow database at {url}: nothing has run with it; check --db or "
            "ECLFLOW_DATABASE_URL"
        )


class PersistenceError(EclflowError):
    """The database failed a read or a write (retryable: a lost connection, a lock)."""

    retryable = True

    def __init__(self, message: str) -> None:
        super().__init__(f"Database error: {message}")


class StoreUnavailable(PersistenceError):
    """The database cannot be opened at all (a wrong host, port, user or password, a server
    that is down, a directory or a file that is not SQLite): nothing ran, and what to fix is
    the URL, so the commands exit 2 as for any configuration error."""


class LockWaitStopped(PersistenceError):
    """A write stopped waiting for a lock another process holds, because this process is
    stopping (Ctrl-C, SIGTERM): what was committed before is kept."""


class JournalRefused(PersistenceError):
    """The database refused a value one run's write holds (a number beyond its 64-bit
    integers): not the database failing, so that run stops and the others go on, and running
    it again stops the same way when its step gives the same value."""

    retryable = False
    _SAID = ("Database error: the journal could not write ", ", a value the database cannot hold: ")

    def __init__(self, where: str, why: str) -> None:
        super().__init__(f"the journal could not write {where}{self._SAID[1]}{why}")

    @classmethod
    def said_in(cls, error: str | None) -> bool:
        """Whether a run's `error` (a result's text: the class is gone) is this error's."""
        return error is not None and error.startswith(cls._SAID[0]) and cls._SAID[1] in error


class InvalidState(EclflowError):
    """An operation does not fit the run's current state (e.g. resuming a completed run)."""


class RunPaused(InvalidState):
    """Restate paused the run (it could not run it after many attempts): it waits, keeping what
    its steps did, until it is resumed; the message says how."""


class RunInterrupted(InvalidState):
    """The run is `running` in the store, but the process that ran it has ended: only a
    resume goes on with it (`run_id`: its full id)."""

    def __init__(self, message: str, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id


class UnclearRunId(NotFound, InvalidState):
    """A run id prefix too short to look up, or one that several runs share (an InvalidState
    before, so that is still caught)."""


class RunOfAnotherWorkflow(NotFound, InvalidState):
    """A run id given for a workflow (`run FILE --from STEP --run RUN_ID`) that is a run of
    another workflow: the id typed is wrong, so the commands exit 2 as for a run that does not
    exist (an InvalidState before, so that is still caught)."""
