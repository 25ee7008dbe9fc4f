"""Namespacing: how upstream-local names and URIs are exposed to clients, and back.

Tools and prompts
    ``<upstream><separator><name>`` (separator ``__`` by default), read back up to the *first* separator.
    That gives back the upstream for every tool name (tool names are the upstream's to choose, separator
    included) exactly when the separator first occurs in ``<upstream><separator>`` at its end
    (:meth:`Namer.ambiguity`). An upstream name that contains the separator fails that, and so does one
    that ends with the start of a separator that continues itself: upstream ``a_`` with tool ``echo`` and
    upstream ``a`` with tool ``_echo`` would both be ``a___echo``. The config loader refuses such names,
    so exposure is injective: two (upstream, name) pairs never share an exposed name.

Resources and resource templates
    ``mcpg://<upstream>/<original URI>`` — the original URI is kept verbatim after the first ``/``
    following the upstream name, e.g. ``ticket://42`` of upstream ``tickets`` becomes
    ``mcpg://tickets/ticket://42`` and ``file:///etc/hosts`` of ``files`` becomes
    ``mcpg://files/file:///etc/hosts``. Templates are rewritten the same way
    (``mcpg://tickets/ticket://{id}``), so a client expanding one gets a URI that routes back.
"""

from __future__ import annotations

__all__ = ["RESOURCE_SCHEME", "Namer"]

RESOURCE_SCHEME = "mcpg"
_PREFIX = f"{RESOURCE_SCHEME}://"


class Namer:
    def __init__(self, separator: str) -> None:
        self.separator = separator

    def expose(self, upstream: str, name: str) -> str:
        return f"{upstream}{self.separator}{name}"

    def ambiguity(self, upstream: str) -> tuple[str, str, str] | None:
        """Why ``upstream``'s names would not read back as its own, or ``None`` if they always do.

        The reason is an example: ``(exposed, upstream read, name read)`` — the exposed name of its tool
        ``echo`` and what :meth:`split` makes of it.
        """
        first = (upstream + self.separator).find(self.separator)
        if first == len(upstream):
            return None
        exposed = self.expose(upstream, "echo")
        return exposed, exposed[:first], exposed[first + len(self.separator) :]

    def split(self, exposed: str) -> tuple[str, str] | None:
        """``(upstream, name)`` of an exposed tool/prompt name, or None if it has no namespace."""
        upstream, sep, name = exposed.partition(self.separator)
        if not sep or not upstream or not name:
            return None
        return upstream, name

    @staticmethod
    def expose_uri(upstream: str, uri: str) -> str:
        return f"{_PREFIX}{upstream}/{uri}"

    @staticmethod
    def split_uri(exposed: str) -> tuple[str, str] | None:
        """``(upstream, original URI)`` of an exposed resource URI, or None if it is not one of ours."""
        if not exposed.startswith(_PREFIX):
            return None
        upstream, slash, uri = exposed[len(_PREFIX) :].partition("/")
        if not slash or not upstream or not uri:
            return None
        return upstream, uri
