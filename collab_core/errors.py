"""The exceptions collab raises. Every message names the problem and the fix."""

from __future__ import annotations


class CollabError(Exception):
    """Base class of every error collab raises on purpose."""


class PluginError(CollabError):
    """A plugin could not be loaded, or registered something invalid."""


class DuplicateComponentError(PluginError):
    """Two plugins registered a component of the same kind under the same name."""


class UnknownComponentError(PluginError, LookupError):
    """A component was asked for by a name that no installed plugin registered."""

    def __init__(self, message: str, *, kind: str, name: str, available: list[str]):
        super().__init__(message)
        self.kind = kind
        self.name = name
        self.available = available


class MissingPluginsError(PluginError):
    """Distributions a recipe requires are missing, too old, or disabled."""

    def __init__(self, message: str, *, problems: list[str]):
        super().__init__(message)
        self.problems = problems


class CollabCallError(CollabError):
    """A call to a site failed: the remote method raised, the site died, or the call timed out.

    ``site`` and ``method`` say which call; ``cause`` is the exception (a
    :class:`collab_core.wire.RemoteError` when the method raised on the site, else e.g.
    ``TimeoutError`` or ``ConnectionError``); ``remote_traceback`` is the site's traceback text.
    """

    def __init__(
        self,
        site: str | None,
        method: str,
        cause: BaseException | None = None,
        remote_traceback: str | None = None,
        message: str | None = None,
    ):
        self.site = site
        self.method = method
        self.cause = cause
        self.remote_traceback = remote_traceback
        if message is None:
            what = f"{type(cause).__name__}: {cause}" if cause is not None else "failed"
            message = f"call {method}() on {site} failed: {what}"
            if remote_traceback:
                message += f"\n--- traceback on {site} ---\n{remote_traceback.rstrip()}"
        super().__init__(message)

    def __reduce__(self):  # keep exceptions copyable (deepcopy, logging handlers)
        return (type(self), (self.site, self.method, self.cause, self.remote_traceback, str(self)))


class GroupCallError(CollabCallError):
    """A group call got fewer than ``min_responses`` successes.

    ``failures`` maps each failed site to its :class:`CollabCallError`; ``results`` holds the
    successes that did arrive.
    """

    def __init__(self, method: str, failures: dict, results: list, needed: int, total: int):
        self.failures = failures
        self.results = results
        self.needed = needed
        lines = [
            f"call {method}() reached {len(results)} of {total} site(s) but needs {needed}; "
            f"{len(failures)} failed:"
        ]
        for site, err in failures.items():
            cause = err.cause
            lines.append(f"  - {site}: {type(cause).__name__ if cause else 'error'}: {cause}")
            if err.remote_traceback:
                lines.extend("      " + ln for ln in err.remote_traceback.rstrip().splitlines())
        super().__init__(None, method, None, None, message="\n".join(lines))

    @property
    def sites_ok(self) -> list[str]:
        """The sites that succeeded."""
        return [site for site, _ in self.results]

    def __reduce__(self):
        return (type(self), (self.method, self.failures, self.results, self.needed, len(self.failures) + len(self.results)))


class CallValidationError(CollabError, TypeError):
    """A call's arguments do not match the published method's signature (raised at the caller)."""


class RecipeError(CollabError, ValueError):
    """A recipe or its parameters are invalid."""


class ExportError(RecipeError):
    """A recipe cannot be exported to a job folder."""
