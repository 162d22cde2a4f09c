import json

import pytest

from maia_core.errors import UserError
from maia_core.units import (
    LayerInfo,
    Unit,
    chunk,
    expand,
    parse_chunk,
    parse_unit_spec,
    read_unit_file,
    sample,
)

LAYERS = {
    "layer3": LayerInfo("layer3", 1024, (14, 14)),
    "layer4": LayerInfo("layer4", 2048, (7, 7)),
}


def units(spec: str) -> list[tuple[str, int]]:
    return [(u.layer, u.index) for u in expand(parse_unit_spec(spec), LAYERS, "t")]


def test_maia_syntax_and_ranges():
    assert units("layer3=229,288:layer4=122,210") == [
        ("layer3", 229),
        ("layer3", 288),
        ("layer4", 122),
        ("layer4", 210),
    ]
    assert units("layer4=0-3,7") == [("layer4", i) for i in (0, 1, 2, 3, 7)]
    assert parse_unit_spec("layer4") == {"layer4": None}
    assert len(units("layer4")) == 2048
    # duplicates collapse, order kept
    assert units("layer4=3,1,3,0-3") == [("layer4", i) for i in (3, 1, 0, 2)]


def test_huge_ranges_are_checked_before_they_are_expanded():
    # Checked against the layer's size at once, not after building a billion units.
    spec = parse_unit_spec("layer4=0-999999999")
    with pytest.raises(UserError, match=r"Unit 999999999 is out of range.*2048 units"):
        expand(spec, LAYERS, "t")


@pytest.mark.parametrize(
    "bad", ["", "layer4=", "layer4=a", "=3", "layer4=5-2", "layer4=1,,2", "layer4=-1"]
)
def test_malformed_specs_show_the_expected_form(bad):
    with pytest.raises(UserError) as err:
        parse_unit_spec(bad)
    assert "LAYER=UNITS" in err.value.message or "backwards" in err.value.message


def test_expand_checks_layers_and_ranges():
    assert expand({"layer4": [1, 2]}, LAYERS, "t") == [Unit("layer4", 1), Unit("layer4", 2)]
    assert len(expand({"layer3": None}, LAYERS, "t")) == 1024
    with pytest.raises(UserError, match=r"Unknown layer 'layer9'.*Valid layers: layer3, layer4"):
        expand({"layer9": [0]}, LAYERS, "t")
    with pytest.raises(UserError, match=r"Unit 2048 is out of range.*2048 units \(0-2047\)"):
        expand({"layer4": [2048]}, LAYERS, "t")


def test_unit_file_reads_maias_format(tmp_path):
    f = tmp_path / "resnet152.json"
    f.write_text(json.dumps({"layer3": [229, 288], "layer4": [122]}))
    assert read_unit_file(f) == {"layer3": [229, 288], "layer4": [122]}


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        ("{not json", "not valid JSON"),
        (json.dumps(["layer4"]), "must map layer names"),
        (json.dumps({"layer4": ["x"]}), "must map layer names"),
        # JSON true/false are not unit indices, though Python counts them as ints
        (json.dumps({"layer4": [True, 1]}), "must map layer names"),
    ],
)
def test_bad_unit_files(tmp_path, content, message):
    f = tmp_path / "units.json"
    if content is not None:
        f.write_text(content)
    with pytest.raises(UserError, match=message):
        read_unit_file(f)


def test_unreadable_unit_file(tmp_path):
    with pytest.raises(UserError, match="Cannot read unit file"):
        read_unit_file(tmp_path)  # a folder


def test_random_sampling_is_deterministic_and_ordered():
    units = expand({"layer4": None}, LAYERS, "t")
    a, b = sample(units, 5, seed=1), sample(units, 5, seed=1)
    assert a == b and len(a) == 5
    assert a == sorted(a, key=lambda u: u.index)
    assert sample(units, 5, seed=2) != a
    with pytest.raises(UserError, match="more units"):
        sample(units[:3], 4)


def test_chunks_cover_everything_once():
    units = [Unit("l", i) for i in range(10)]
    parts = [chunk(units, i, 3) for i in range(3)]
    assert [len(p) for p in parts] == [4, 3, 3]
    assert sum(parts, []) == units
    assert parse_chunk("1/4") == (1, 4)
    for bad in ("4/4", "a/b", "1", "0/0"):
        with pytest.raises(UserError, match="I/N"):
            parse_chunk(bad)
