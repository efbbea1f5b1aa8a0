"""One place that turns a domain name into each consumer's form (pure, no I/O).

libvirt allows almost any character in a domain name (only ``/`` is refused): spaces, quotes,
``=``, ``|``, tabs, newlines, any script. Each consumer of the output has its own rules:

========== ============================================================= ==========================
form       characters kept (others become ``_``)                        suffix when it must change
========== ============================================================= ==========================
label      letters and digits of any script, ``_ - . / @ +`` (no ``:``:  ``-`` + 8 hex of the UUID
           Icinga 2 reads ``::`` in a label as a check_multi prefix)
graphite   letters and digits of any script, ``_ -`` (one path node)     ``-`` + 8 hex
entity     ASCII letters and digits, ``_ . -`` (Sensu's ``^[\\w.-]+$``);  ``-`` + 8 hex
           accents are dropped first (``café`` -> ``cafe``)
influx     everything; tab, CR and newline become a space, a backslash   ``-`` + 8 hex
           before ``,``, ``=``, a space or the end becomes ``/``; then
           line-protocol escaping (``\\,`` ``\\=`` ``\\ ``)
prometheus everything, escaped (``\\\\`` ``\\"`` ``\\n``): never changes     (none needed)
text       everything but ``|`` (shown as ``¦``) and control or format    `` [`` 8 hex ``]``
           characters (shown as ``\\t``, ``\\n``, ``\\x07``, ``\\u202e``)
========== ============================================================= ==========================

Each mapping is injective over the domains of one host (the names given to :class:`Names`):

* a name the form does not change keeps its plain form (``web-01`` stays ``web-01``);
* a name that had to change keeps its changed form unless another domain's form is the same, or
  the form kept no letter or digit (``中文字`` as an entity is ``___``); then it gets a suffix of
  its UUID's first 8 hex digits (``web.1`` -> ``web_1-3f2a9c01`` beside a domain ``web_1``),
  longer when even that is taken. A name changed into a unique form is never suffixed.

The suffix comes from the UUID, so a domain's forms stay the same from run to run and never
depend on which domains one run selected: build :class:`Names` from every domain of the host.
A name it was not given (a ``-d`` name that does not exist) is mapped without a suffix.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Mapping

_ASCII_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_LABEL_ASCII = _ASCII_ALNUM | frozenset("_-./@+")
_GRAPHITE_ASCII = _ASCII_ALNUM | frozenset("_-")
_ENTITY_ASCII = _ASCII_ALNUM | frozenset("_.-")
_PRINTABLE_ASCII = frozenset(chr(c) for c in range(0x20, 0x7F)) - {"|"}


def _word_char(char: str) -> bool:
    """A letter, digit or combining mark of any script."""
    if char.isalnum():
        return True
    import unicodedata  # noqa: PLC0415 (only non-ASCII names need it)

    return unicodedata.category(char).startswith("M")


def _keep(text: str, ascii_kept: frozenset[str], unicode_words: bool) -> str:
    if ascii_kept.issuperset(text):
        return text
    return "".join(c if c in ascii_kept or (unicode_words and not c.isascii() and _word_char(c)) else "_"
                   for c in text) or "_"


def perf_label(text: str) -> str:
    """A perfdata label part that no consumer needs quoted."""
    return _keep(text, _LABEL_ASCII, True) if text else "_"


def graphite_node(text: str) -> str:
    """One node of a Graphite path."""
    return _keep(text, _GRAPHITE_ASCII, True) if text else "_"


def entity_name(text: str) -> str:
    """A Sensu entity (proxy client) name: ``^[A-Za-z0-9_.-]+$``, accents dropped first."""
    if not _ENTITY_ASCII.issuperset(text) and not text.isascii():
        import unicodedata  # noqa: PLC0415 (only non-ASCII names need it)

        text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return _keep(text, _ENTITY_ASCII, False) if text else "_"


_INFLUX_SPECIAL = ",= "


def _influx_plain(text: str) -> str:
    """The tag value before escaping: no line breaks or tabs, no backslash that would escape
    the character after it (or the separator after the value)."""
    text = text.replace("\t", " ").replace("\r", " ").replace("\n", " ")
    if "\\" not in text:
        return text
    chars = list(text)
    for n, char in enumerate(chars):
        if char == "\\" and (n + 1 == len(chars) or chars[n + 1] in _INFLUX_SPECIAL):
            chars[n] = "/"
    return "".join(chars)


def _influx_escape(text: str) -> str:
    for char in _INFLUX_SPECIAL:
        text = text.replace(char, "\\" + char)
    return text


def influx_tag(text: str) -> str:
    """An InfluxDB line-protocol tag value (or key), escaped; empty stays empty."""
    return _influx_escape(_influx_plain(text))


def prom_value(text: str) -> str:
    """A Prometheus label value, escaped, without its quotes."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _shown(char: str) -> str:
    if char == "|":
        return "¦"
    if char == "\t":
        return "\\t"
    if char == "\n":
        return "\\n"
    if char == "\r":
        return "\\r"
    code = ord(char)
    if code < 0x20 or code == 0x7F:
        return f"\\x{code:02x}"
    if code >= 0x80:
        import unicodedata  # noqa: PLC0415 (only non-ASCII text needs it)

        if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"):
            return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return char


def visible(text: str) -> str:
    """Text for a status line: no ``|`` (it starts perfdata) and no character that ends a line,
    changes direction or is invisible; each shown as an escape."""
    if _PRINTABLE_ASCII.issuperset(text):
        return text
    return "".join(_shown(c) for c in text)


def _suffix(form: str, tag: str) -> str:
    return f"{form}-{tag}"


def _text_suffix(form: str, tag: str) -> str:
    return f"{form} [{tag}]"


def _tag(name: str, uuid: str | None) -> str:
    """The hex digits a suffix is cut from: the UUID's, else a checksum of the name."""
    digits = (uuid or "").replace("-", "").lower()
    return digits or f"{zlib.crc32(name.encode('utf-8', 'surrogatepass')):08x}"


def assign(domains: Mapping[str, str | None], plain: Callable[[str], str],
           suffix: Callable[[str, str], str] = _suffix) -> dict[str, str]:
    """Each name's form: ``plain(name)``, with a suffix where it must change and would collide."""
    forms = {name: plain(name) for name in domains}
    result = {name: form for name, form in forms.items() if form == name}
    counts: dict[str, int] = {}
    for form in forms.values():
        counts[form] = counts.get(form, 0) + 1
    crowded = []
    for name, form in forms.items():
        if name in result:
            continue
        if counts[form] > 1 or form in result or not any(c.isalnum() for c in form):
            crowded.append(name)
        else:
            result[name] = form
    taken = set(result.values())
    for name in sorted(crowded):
        digits = _tag(name, domains[name])
        candidates = (suffix(forms[name], digits[:n]) for n in (8, 12, 16, len(digits)))
        found = next((c for c in candidates if c not in taken), None)
        n = 2
        while found is None or found in taken:  # a host whose names copy the others' suffixes
            found, n = suffix(forms[name], f"{digits}-{n}"), n + 1
        result[name] = found
        taken.add(found)
    return result


class Names:
    """Every form of the domain names of one host; see the module's docstring for the rules.

    ``domains`` maps each name to its UUID (None when it is not known). Each form is computed for
    all names on its first use.
    """

    def __init__(self, domains: Mapping[str, str | None] | Iterable[tuple[str, str | None]] = ()) -> None:
        self._domains: dict[str, str | None] = dict(domains)
        self._forms: dict[str, dict[str, str]] = {}

    @classmethod
    def of(cls, records: Iterable[object]) -> Names:
        """From records with ``name`` and ``uuid`` attributes (virt.DomainRecord)."""
        return cls({r.name: r.uuid for r in records})  # type: ignore[attr-defined]

    def __contains__(self, name: object) -> bool:
        return name in self._domains

    def _form(self, kind: str, name: str, plain: Callable[[str], str],
              suffix: Callable[[str, str], str] = _suffix) -> str:
        forms = self._forms.get(kind)
        if forms is None:
            forms = self._forms[kind] = assign(self._domains, plain, suffix)
        return forms.get(name) or plain(name)

    def label(self, name: str) -> str:
        """The perfdata label part: never quoted, never ``=``, ``'``, ``|``, whitespace or control."""
        return self._form("label", name, perf_label)

    def graphite(self, name: str) -> str:
        """One Graphite path node."""
        return self._form("graphite", name, graphite_node)

    def influx(self, name: str) -> str:
        """The InfluxDB tag value, escaped for line protocol."""
        return _influx_escape(self._form("influx", name, _influx_plain))

    @staticmethod
    def prometheus(name: str) -> str:
        """The Prometheus label value, escaped (the escaping alone keeps names apart)."""
        return prom_value(name)

    def entity(self, name: str) -> str:
        """The Sensu entity (proxy client) name."""
        return self._form("entity", name, entity_name)

    def text(self, name: str) -> str:
        """The name as a status line shows it."""
        return self._form("text", name, visible, _text_suffix)
