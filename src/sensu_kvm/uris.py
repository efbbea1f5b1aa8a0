"""A libvirt URI as messages, logs and state files show it: never with its secrets.

Pure (no libvirt), so that modules which must not load libvirt (statefile) use it too."""

from __future__ import annotations

import re

__all__ = ["scrub", "shown_uri"]

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# patterns, not compiled objects: re compiles each on first use (its cache), not at every check's import
_SECRET_KEYS = r"(?i)pass|pwd|secret|token|cred|auth"


def _split(uri: str) -> tuple[str, str, str, str, str]:
    """(scheme://, user, password, the rest of the authority and path, ?query#fragment or '')."""
    scheme = _SCHEME.match(uri)
    if scheme is None:
        return "", "", "", uri, ""
    head = scheme.group()
    rest = uri[len(head):]
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    userinfo, at, hostport = authority.rpartition("@")
    user, _, password = userinfo.partition(":")
    path, query_sep, query = tail.partition("?")
    if not at:
        return head, "", "", authority + path, query_sep + query
    return head, user, password, "@" + hostport + path, query_sep + query


def _secrets(uri: str) -> list[str]:
    """The secret parts of a URI: the password of its user part, and the values of query
    parameters whose names say they are secret (password=, passwd=, secret=, token=, authfile=...)."""
    _head, _user, password, _rest, query = _split(uri)
    found = [password] if password else []
    for pair in query[1:].split("#")[0].split("&"):
        key, eq, value = pair.partition("=")
        if eq and value and re.search(_SECRET_KEYS, key):
            found.append(value)
    return found


def shown_uri(uri: str) -> str:
    """The URI as every message and log line shows it: the password of its user part removed
    (``qemu+tcp://admin@host/system``) and secret query values replaced by ``***``."""
    head, user, _password, rest, query = _split(uri)
    if query:
        body, hash_sep, fragment = query[1:].partition("#")
        pairs = []
        for pair in body.split("&"):
            key, eq, value = pair.partition("=")
            pairs.append(f"{key}=***" if eq and value and re.search(_SECRET_KEYS, key) else pair)
        query = "?" + "&".join(pairs) + hash_sep + fragment
    return head + user + rest + query


def scrub(text: str, uri: str | None) -> str:
    """``text`` (libvirt's own message, say) with the URI shown as ``shown_uri`` shows it and
    every secret of the URI replaced by ``***`` (a secret shorter than 4 characters only where it
    stands as the URI wrote it, to keep the rest of the message readable)."""
    if not uri:
        return text
    text = text.replace(uri, shown_uri(uri))
    for secret in sorted(_secrets(uri), key=len, reverse=True):
        for form in (f":{secret}@", f"={secret}"):
            text = text.replace(form, form[0] + "***" + form[-1] if form[0] == ":" else "=***")
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text
