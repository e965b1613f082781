"""The base of the XML objects: one class per element, whose dataclass fields say where in
the element each value lives, with ``format_dom()`` and ``parse_dom()`` (the pattern of
OpenStack nova's ``nova/virt/libvirt/config.py``).

A field is declared with one of the functions below, e.g.::

    @dataclass
    class Disk(XmlElement):
        tag = "disk"
        device: str | None = attr()                            # <disk device="...">
        source_file: str | None = child_attr("source", "file")  # <source file="..."/>
        readonly: bool = flag("readonly")                      # <readonly/>

Formatting writes the fields in their order (``None`` writes nothing). Parsing keeps
whatever the class does not model, attributes and children libvirt adds (PCI addresses,
aliases, ``<currentMemory>``...), in :class:`Unknown`, and formatting writes it back after
what the class models: parse, change, format leaves the rest as it was. libvirt reads its
XML by XPath, so where a kept child lands among its siblings does not matter to it; the
order of a list (devices, boot entries) is kept. Values are escaped by ElementTree.
"""
from __future__ import annotations

import copy
import dataclasses
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

_KIND = "pytest_kvm.xml"  # the key of a field's kind in its dataclass metadata
T = TypeVar("T", bound="XmlElement")


def _cleaned(element: ET.Element) -> ET.Element:
    """A copy of *element* without the indentation a pretty-printed document had."""
    element = copy.deepcopy(element)
    for node in element.iter():
        if node.text is not None and not node.text.strip() and len(node):
            node.text = None
        node.tail = None
    return element


def _same_children(a: list[ET.Element], b: list[ET.Element]) -> bool:
    return [ET.tostring(e) for e in a] == [ET.tostring(e) for e in b]


@dataclass(eq=False)
class Unknown:
    """What an element had that its class does not model: attributes, text, children, and
    the leftovers of children it read in part (by tag: ``<source file=".." index="1"/>``
    read through a ``child_attr("source", "file")`` keeps ``index`` under ``"source"``)."""

    attrib: dict[str, str] = field(default_factory=dict)
    text: str | None = None
    children: list[ET.Element] = field(default_factory=list)
    parts: dict[str, Unknown] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.attrib or self.text or self.children or self.parts)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Unknown):
            return NotImplemented
        return (self.attrib == other.attrib and self.text == other.text
                and self.parts == other.parts and _same_children(self.children, other.children))

    def write(self, writer: _Writer) -> None:
        for name, value in self.attrib.items():
            writer.element.attrib.setdefault(name, value)
        if self.text is not None and not writer.element.text:
            writer.element.text = self.text
        for tag, rest in self.parts.items():
            rest.write(writer.part(tag))
        writer.element.extend(copy.deepcopy(self.children))


class _Reader:
    """An element being parsed: each ``take`` consumes a part of it; :meth:`rest` is what
    no field took."""

    def __init__(self, element: ET.Element) -> None:
        self.attrib = dict(element.attrib)
        self.text = element.text if element.text and (element.text.strip() or not len(element)) else None
        self.children = list(element)
        self.parts: dict[str, _Reader] = {}

    def take_attr(self, name: str) -> str | None:
        return self.attrib.pop(name, None)

    def take_text(self) -> str:
        text, self.text = self.text, None
        return text or ""

    def take_child(self, tag: str) -> ET.Element | None:
        for child in self.children:
            if child.tag == tag:
                self.children.remove(child)
                return child
        return None

    def take_children(self, tag: str) -> list[ET.Element]:
        taken = [child for child in self.children if child.tag == tag]
        self.children = [child for child in self.children if child not in taken]
        return taken

    def part(self, tag: str) -> _Reader | None:
        """The child *tag*, read in part by several fields (its text, some attributes)."""
        if tag not in self.parts:
            child = self.take_child(tag)
            if child is None:
                return None
            self.parts[tag] = _Reader(child)
        return self.parts[tag]

    def rest(self) -> Unknown:
        return Unknown(attrib=self.attrib, text=self.text,
                       children=[_cleaned(child) for child in self.children],
                       parts={tag: rest for tag, part in self.parts.items() if (rest := part.rest())})


class _Writer:
    """An element being formatted; :meth:`part` is its child *tag*, made on first use."""

    def __init__(self, element: ET.Element) -> None:
        self.element = element
        self._parts: dict[str, _Writer] = {}

    def part(self, tag: str) -> _Writer:
        if tag not in self._parts:
            self._parts[tag] = _Writer(ET.SubElement(self.element, tag))
        return self._parts[tag]


# -- field kinds: where a value lives; each reads it from a _Reader and writes it ------------
@dataclass(frozen=True)
class _Attr:
    name: str

    def read(self, reader: _Reader) -> str | None:
        return reader.take_attr(self.name)

    def write(self, writer: _Writer, value: str | None) -> None:
        if value is not None:
            writer.element.set(self.name, value)


@dataclass(frozen=True)
class _ChildText:
    tag: str
    type: Callable[[str], Any]

    def read(self, reader: _Reader) -> Any:
        part = reader.part(self.tag)
        return None if part is None else self.type(part.take_text())

    def write(self, writer: _Writer, value: Any) -> None:
        if value is not None:
            writer.part(self.tag).element.text = str(value)


@dataclass(frozen=True)
class _ChildAttr:
    tag: str
    name: str

    def read(self, reader: _Reader) -> str | None:
        part = reader.part(self.tag)
        return None if part is None else part.take_attr(self.name)

    def write(self, writer: _Writer, value: str | None) -> None:
        if value is not None:
            writer.part(self.tag).element.set(self.name, value)


@dataclass(frozen=True)
class _ChildAttrs:
    tag: str

    def read(self, reader: _Reader) -> dict[str, str] | None:
        part = reader.part(self.tag)
        if part is None:
            return None
        values, part.attrib = part.attrib, {}
        return values

    def write(self, writer: _Writer, value: Mapping[str, str] | None) -> None:
        if value is not None:
            writer.part(self.tag).element.attrib.update(value)


@dataclass(frozen=True)
class _EachAttr:
    tag: str
    name: str

    def read(self, reader: _Reader) -> list[str]:
        plain = [child for child in reader.children
                 if child.tag == self.tag and set(child.attrib) == {self.name} and not len(child)]
        reader.children = [child for child in reader.children if child not in plain]
        return [child.attrib[self.name] for child in plain]

    def write(self, writer: _Writer, value: list[str]) -> None:
        for item in value:
            ET.SubElement(writer.element, self.tag, {self.name: item})


@dataclass(frozen=True)
class _Flag:
    tag: str

    def read(self, reader: _Reader) -> bool:
        return reader.part(self.tag) is not None

    def write(self, writer: _Writer, value: bool) -> None:
        if value:
            writer.part(self.tag)


@dataclass(frozen=True)
class _Raw:
    tag: str

    def read(self, reader: _Reader) -> OtherElement | None:
        child = reader.take_child(self.tag)
        return None if child is None else OtherElement.parse_dom(child)

    def write(self, writer: _Writer, value: OtherElement | None) -> None:
        if value is not None:
            writer.element.append(value.format_dom())


@dataclass(frozen=True)
class _Child:
    cls: type[XmlElement]

    def read(self, reader: _Reader) -> XmlElement | None:
        child = reader.take_child(self.cls.tag)
        return None if child is None else self.cls.parse_dom(child)

    def write(self, writer: _Writer, value: XmlElement | None) -> None:
        if value is not None:
            writer.element.append(value.format_dom())


@dataclass(frozen=True)
class _Children:
    cls: type[XmlElement]

    def read(self, reader: _Reader) -> list[XmlElement]:
        return [self.cls.parse_dom(child) for child in reader.take_children(self.cls.tag)]

    def write(self, writer: _Writer, value: list[XmlElement]) -> None:
        writer.element.extend(item.format_dom() for item in value)


@dataclass(frozen=True)
class _Group:
    tag: str
    types: Mapping[str, type[XmlElement]]
    other: type[XmlElement]

    def read(self, reader: _Reader) -> list[XmlElement]:
        group = reader.take_child(self.tag)
        if group is None:
            return []
        return [self.types.get(child.tag, self.other).parse_dom(child) for child in group]

    def write(self, writer: _Writer, value: list[XmlElement]) -> None:
        ET.SubElement(writer.element, self.tag).extend(item.format_dom() for item in value)


def _field(kind: Any, default: Any = None) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.copy(default), metadata={_KIND: kind})
    return field(default=default, metadata={_KIND: kind})


def attr(name: str | None = None) -> Any:
    """An attribute of the element (XML name: *name*, else the field's)."""
    return _field(_Attr(name or ""))


def child_text(tag: str | None = None, *, type: Callable[[str], Any] = str) -> Any:
    """The text of child *tag* (else the field's name), read as *type*; ``""`` is an
    empty element."""
    return _field(_ChildText(tag or "", type))


def child_attr(tag: str, name: str) -> Any:
    """Attribute *name* of child *tag*; fields naming the same child share one element."""
    return _field(_ChildAttr(tag, name))


def child_attrs(tag: str) -> Any:
    """All attributes of child *tag*, as a dict (``None``: no such child)."""
    return _field(_ChildAttrs(tag))


def each_attr(tag: str, name: str) -> Any:
    """Attribute *name* of every child *tag* that has nothing else, as a list, in order."""
    return _field(_EachAttr(tag, name), [])


def flag(tag: str | None = None) -> Any:
    """Whether the empty child *tag* (else the field's name) is there: ``<readonly/>``."""
    return _field(_Flag(tag or ""), False)


def raw_child(tag: str) -> Any:
    """Child *tag* kept whole, an :class:`OtherElement` (a structure nothing here edits)."""
    return _field(_Raw(tag))


def child(cls: type[XmlElement]) -> Any:
    """One child element, an object of *cls* (``None``: absent)."""
    return _field(_Child(cls))


def children(cls: type[XmlElement]) -> Any:
    """Every child of *cls*'s tag, as a list of its objects, in document order."""
    return _field(_Children(cls), [])


def group(tag: str, types: Mapping[str, type[XmlElement]], other: type[XmlElement]) -> Any:
    """The children of the wrapper child *tag* (``<devices>``), in document order, each an
    object of the class *types* gives for its tag, else of *other*."""
    return _field(_Group(tag, types, other), [])


def _kinds(cls: type) -> tuple[tuple[str, Any], ...]:
    """The fields of *cls* with their kinds, names filled in from the field names."""
    kinds = []
    for f in dataclasses.fields(cls):
        kind = f.metadata.get(_KIND)
        if kind is None:
            continue
        if getattr(kind, "name", None) == "":
            kind = dataclasses.replace(kind, name=f.name)
        if getattr(kind, "tag", None) == "":
            kind = dataclasses.replace(kind, tag=f.name)
        kinds.append((f.name, kind))
    return tuple(kinds)


@dataclass
class XmlElement:
    """One XML element as an object (see the module's docstring)."""

    tag: ClassVar[str]
    unknown: Unknown = field(default_factory=Unknown, kw_only=True, repr=False)

    def format_dom(self) -> ET.Element:
        writer = _Writer(ET.Element(self.tag))
        for name, kind in _kinds(type(self)):
            kind.write(writer, getattr(self, name))
        self.unknown.write(writer)
        return writer.element

    @classmethod
    def parse_dom(cls: type[T], element: ET.Element) -> T:
        if element.tag != cls.tag:
            raise ValueError(f"{cls.__name__} parses <{cls.tag}>, not <{element.tag}>")
        reader = _Reader(element)
        values = {name: kind.read(reader) for name, kind in _kinds(cls)}
        return cls(**values, unknown=reader.rest())

    def to_xml(self) -> str:
        return ET.tostring(self.format_dom(), encoding="unicode")

    @classmethod
    def from_xml(cls: type[T], xml: str) -> T:
        return cls.parse_dom(ET.fromstring(xml))


@dataclass
class OtherElement(XmlElement):
    """An element no class here models, kept whole (in a list of devices: ``<input>``,
    ``<emulator>``, ``<video>``...)."""

    element: ET.Element

    @property  # type: ignore[override]
    def tag(self) -> str:  # its own element's
        return self.element.tag

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OtherElement):
            return NotImplemented
        return _same_children([self.element], [other.element])

    def format_dom(self) -> ET.Element:
        return copy.deepcopy(self.element)

    @classmethod
    def parse_dom(cls, element: ET.Element) -> OtherElement:
        return cls(element=_cleaned(element))
