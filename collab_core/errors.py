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
