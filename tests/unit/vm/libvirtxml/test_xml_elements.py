"""The XML object machinery: fields that parse and format, and what no field models kept."""
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import pytest

from pytest_kvm.vm.libvirtxml.elements import (OtherElement, XmlElement, attr, child, child_attr,
                                               child_attrs, child_text, children, each_attr, flag,
                                               group, raw_child)


@dataclass
class Leaf(XmlElement):
    tag = "leaf"
    kind: str | None = attr("type")


@dataclass
class Note(XmlElement):
    tag = "note"
    level: str | None = attr()


@dataclass
class Thing(XmlElement):
    tag = "thing"
    name: str | None = child_text()
    size: int | None = child_text("size", type=int)
    size_unit: str | None = child_attr("size", "unit")
    source: str | None = child_attr("source", "file")
    source_mode: str | None = child_attr("source", "mode")
    labels: dict[str, str] | None = child_attrs("labels")
    note: Note | None = child(Note)
    leaves: list[Leaf] = children(Leaf)
    args: list[str] = each_attr("arg", "value")
    chain: OtherElement | None = raw_child("chain")
    readonly: bool = flag()
    items: list[XmlElement] = group("items", {"leaf": Leaf}, OtherElement)


def full_thing():
    return Thing(name="n", size=3, size_unit="KiB", source="/s", source_mode="ro",
                 labels={"a": "1", "b": "2"}, note=Note(level="2"), leaves=[Leaf(kind="x"), Leaf(kind="y")],
                 args=["-a", "b"], chain=OtherElement(ET.fromstring("<chain><c/></chain>")),
                 readonly=True, items=[Leaf(kind="z"), OtherElement(ET.Element("odd", n="1"))])


def test_format_writes_fields_in_order_and_children_shared_by_fields_once():
    assert full_thing().to_xml() == (
        '<thing><name>n</name><size unit="KiB">3</size><source file="/s" mode="ro" />'
        '<labels a="1" b="2" /><note level="2" /><leaf type="x" /><leaf type="y" /><arg value="-a" />'
        '<arg value="b" /><chain><c /></chain><readonly /><items><leaf type="z" />'
        '<odd n="1" /></items></thing>')


def test_parse_of_format_is_the_same_object():
    thing = full_thing()
    again = Thing.from_xml(thing.to_xml())
    assert again == thing
    assert isinstance(again.items[0], Leaf) and isinstance(again.items[1], OtherElement)
    assert again.size == 3  # read as its type


def test_none_and_false_write_nothing_and_empty_text_an_empty_element():
    assert Thing().to_xml() == "<thing><items /></thing>"
    assert Thing(name="").to_xml() == "<thing><name /><items /></thing>"
    assert Thing.from_xml("<thing><name/></thing>").name == ""
    assert Thing.from_xml("<thing/>") == Thing()


def test_what_no_field_models_is_kept_wherever_it_was():
    xml = ('<thing extra="e"><address slot="3"/><name>n</name>'
           '<source file="/s" index="1"><seclabel/></source><readonly shared="x"/></thing>')
    thing = Thing.from_xml(xml)
    assert thing.unknown.attrib == {"extra": "e"}
    thing.source, thing.name = "/t", "m"
    out = ET.fromstring(thing.to_xml())
    assert out.get("extra") == "e" and out.find("address").get("slot") == "3"
    assert out.findtext("name") == "m"
    assert out.find("source").attrib == {"file": "/t", "index": "1"}
    assert out.find("source/seclabel") is not None
    assert out.find("readonly").get("shared") == "x"


def test_unknown_children_of_a_changed_field_survive_it_being_unset():
    thing = Thing.from_xml('<thing><source file="/s" index="1"/></thing>')
    thing.source = None
    assert ET.fromstring(thing.to_xml()).find("source").attrib == {"index": "1"}


def test_indentation_of_a_pretty_printed_document_is_not_kept():
    thing = Thing.from_xml("<thing>\n  <name>n</name>\n  <odd>\n    <x/>\n  </odd>\n</thing>\n")
    assert thing.to_xml() == "<thing><name>n</name><items /><odd><x /></odd></thing>"
    assert Thing.from_xml("<thing><name> spaced </name></thing>").name == " spaced "


@pytest.mark.parametrize("value", ['a"b', "<&>", "x'y", "tab\tnew\nline", "ünï"])
def test_odd_values_are_escaped_and_read_back(value):
    thing = Thing(name=value, source=value, labels={"k": value}, args=[value])
    again = Thing.from_xml(thing.to_xml())
    assert (again.name, again.source, again.labels, again.args) == (value, value, {"k": value}, [value])


def test_each_attr_takes_only_plain_children_and_keeps_the_rest():
    thing = Thing.from_xml('<thing><arg value="a"/><arg value="b" other="1"/><arg value="c"/></thing>')
    assert thing.args == ["a", "c"]
    assert ET.fromstring(thing.to_xml()).findall("arg")[-1].attrib == {"value": "b", "other": "1"}


def test_a_class_parses_only_its_own_tag():
    with pytest.raises(ValueError, match="<leaf>, not <thing>"):
        Leaf.from_xml("<thing/>")


def test_other_elements_compare_by_content():
    assert OtherElement(ET.fromstring('<a x="1"><b/></a>')) == OtherElement(ET.fromstring('<a x="1"><b /></a>'))
    assert OtherElement(ET.fromstring('<a x="1"/>')) != OtherElement(ET.fromstring('<a x="2"/>'))
    assert Thing.from_xml('<thing><k a="1"/></thing>') != Thing.from_xml('<thing><k a="2"/></thing>')
