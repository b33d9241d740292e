"""The XML type registry: one entry makes a type readable and writable; reader and writer tables agree."""
import math
import xml.etree.ElementTree as ET

import astropy.units as u
import pytest
from gammapy.modeling import Parameter
from gammapy.modeling.models import PowerLawSpectralModel, SpectralModel

from gpsfast.models import read_xml, write_xml
from gpsfast.models.xml import SUPPORTED_XML_TYPES, Par, XmlType, registry
from gpsfast.models.xml.params import DIFF_FLUX, ENERGY, INDEX

POINT = ('<spatialModel type="PointSource"><parameter name="RA" value="83.6" scale="1" free="0"/>'
         '<parameter name="DEC" value="22.0" scale="1" free="0"/></spatialModel>')


class RegistryTestPowerLaw(SpectralModel):
    """A power law known to the XML registry only through the entry the test registers."""

    tag = ["RegistryTestPowerLaw"]
    amplitude = Parameter("amplitude", "1e-12 cm-2 s-1 TeV-1")
    index = Parameter("index", 2.0)
    reference = Parameter("reference", "1 TeV", frozen=True)
    evaluate = staticmethod(PowerLawSpectralModel.evaluate)


@pytest.fixture
def scratch_registry(monkeypatch):
    """The registry's tables, copied: what a test registers is gone after it."""
    monkeypatch.setattr(registry, "_READING", {k: list(v) for k, v in registry._READING.items()})
    monkeypatch.setattr(registry, "_WRITING", {k: list(v) for k, v in registry._WRITING.items()})
    monkeypatch.setattr(registry, "SUPPORTED_XML_TYPES", dict(registry.SUPPORTED_XML_TYPES))


def test_one_entry_makes_a_type_readable_and_writable(tmp_path, scratch_registry):
    registry.register(XmlType("spectrum", ("TestPlaw", "OldTestPlaw"), RegistryTestPowerLaw,
                              pars=(Par("Norm", "amplitude", DIFF_FLUX), Par("Slope", "index", INDEX),
                                    Par("Pivot", "reference", ENERGY, aliases=("E0",)))))
    spectrum = ('<spectrum type="OldTestPlaw"><parameter name="Norm" value="3" scale="1e-17" free="1"/>'
                '<parameter name="Slope" value="-2.5" scale="1" min="-4" max="-1" free="1"/>'
                '<parameter name="E0" value="2" scale="1e6" free="0"/></spectrum>')
    path = tmp_path / "in.xml"
    path.write_text(f'<source_library><source name="s" type="PointSource">{spectrum}{POINT}</source></source_library>')
    model = read_xml(path)["s"].spectral_model
    assert type(model) is RegistryTestPowerLaw
    # GammaLib: 3e-17 ph/cm2/s/MeV = 3e-11 per TeV; index = -Slope, bounds swapped; pivot 2e6 MeV = 2 TeV
    assert math.isclose(model.amplitude.quantity.to_value("cm-2 s-1 TeV-1"), 3e-11, rel_tol=1e-12)
    assert (model.index.value, model.index.min, model.index.max) == (2.5, 1.0, 4.0)
    assert model.reference.quantity == 2 * u.TeV and model.reference.frozen
    assert "OldTestPlaw" in registry.SUPPORTED_XML_TYPES["spectrum"]
    out = tmp_path / "out.xml"
    write_xml(read_xml(path), out)
    element = ET.parse(out).getroot().find("source/spectrum")
    assert element.get("type") == "TestPlaw"  # the first name is written
    assert [p.get("name") for p in element.findall("parameter")] == ["Norm", "Slope", "Pivot"]
    again = read_xml(out)["s"].spectral_model
    assert [p.value for p in again.parameters] == [p.value for p in model.parameters]


def test_every_written_type_is_read_and_every_read_class_is_written():
    """The writer writes no type the reader refuses; every class the reader makes has a writer entry."""
    written_classes = {(element, cls) for (element, cls) in registry._WRITING}
    for entry in registry.entries():
        if entry.writable:
            assert entry.xml_type in SUPPORTED_XML_TYPES[entry.element], entry
        if entry.readable:
            assert any((entry.element, base) in written_classes for base in entry.cls.__mro__), entry
