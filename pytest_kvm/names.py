"""The one pattern for every name that becomes a directory in the cache (image, recipe,
catalog entry, local image, snapshot): a name never reaches a path outside its directory
(``../x``, ``/etc``, ``a/b`` are refused wherever a name comes in)."""
from __future__ import annotations

import re

from .errors import KvmError

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
NAME_RULE = "letters, digits, '.', '_' or '-', starting with a letter or digit (at most 128)"


class NameError_(KvmError, ValueError):
    """A name that cannot name a cache directory."""


def checked(kind: str, name: str) -> str:
    """*name* if it is safe as one path component; else an error naming *kind*."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise NameError_(f"{kind} name {name!r} is not allowed: {NAME_RULE}")
    return name


#: a guest's or a network's name on guest networks (``name=``, ``networks=``): one DNS label,
#: as it goes into the guests' hosts files (``a``, ``a.lan``)
LABEL_PATTERN = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")
LABEL_RULE = "letters, digits and '-', not at either end (at most 63)"


def checked_label(kind: str, name: str) -> str:
    """*name* if it can be a host name label; else an error naming *kind*."""
    if not isinstance(name, str) or not LABEL_PATTERN.match(name):
        raise NameError_(f"{kind} {name!r} is not allowed: {LABEL_RULE}")
    return name
