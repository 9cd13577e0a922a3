"""service.fhir_input.units: UCUM normalisation to canonical units (clinical-spec section 8, UCUM conversions)."""

from __future__ import annotations

import pytest

from service.fhir_input.decode import Quantity
from service.fhir_input.units import UCUM_SYSTEM, Normalised, Rejected, normalise, unit_code


def _norm(terminology, concept: str, value, unit=None, code=None, system=UCUM_SYSTEM):
    q = Quantity(value=value, unit=unit, system=system if code is not None else None, code=code)
    return normalise(q, terminology.measurements[concept], terminology)


def _value(result) -> float:
    assert isinstance(result, Normalised), result
    return result.value


# --- temperature ------------------------------------------------------------------------------------

def test_fahrenheit_fever_threshold_is_38_celsius(terminology):
    result = _norm(terminology, "body-temperature", 100.4, unit="degF", code="[degF]")
    assert isinstance(result, Normalised)
    assert result.unit == "Cel"
    assert result.value == pytest.approx(38.0, abs=1e-9)


@pytest.mark.parametrize("fahrenheit, celsius", [(98.6, 37.0), (104.0, 40.0), (95.0, 35.0), (112.0, 44.444444444)])
def test_fahrenheit_conversion_formula(terminology, fahrenheit, celsius):
    assert _value(_norm(terminology, "body-temperature", fahrenheit, code="[degF]")) == pytest.approx(celsius, abs=1e-6)


def test_display_unit_degree_sign_fahrenheit_alias(terminology):
    """No UCUM code: the display unit '°F' goes through unit_aliases to [degF]."""
    q = Quantity(value=100.4, unit="°F")
    assert unit_code(q, terminology) == "[degF]"
    assert _value(normalise(q, terminology.measurements["body-temperature"], terminology)) == pytest.approx(38.0, abs=1e-9)


@pytest.mark.parametrize("display", ["°C", "degC", "Cel"])
def test_celsius_display_units(terminology, display):
    assert _value(_norm(terminology, "body-temperature", 38.4, unit=display)) == pytest.approx(38.4)


def test_kelvin(terminology):
    assert _value(_norm(terminology, "body-temperature", 311.15, code="K")) == pytest.approx(38.0)


# --- pressure, flow, mass ---------------------------------------------------------------------------

def test_kpa_to_mmhg(terminology):
    result = _norm(terminology, "systolic-bp", 12.0, code="kPa")
    assert isinstance(result, Normalised)
    assert result.unit == "mm[Hg]"
    assert result.value == pytest.approx(90.0, abs=0.01)  # 12 kPa x 7.500615758 = 90.007 mmHg


def test_mmhg_display_alias(terminology):
    assert _value(_norm(terminology, "systolic-bp", 88, unit="mmHg")) == 88.0


def test_ml_per_min_to_l_per_min(terminology):
    result = _norm(terminology, "oxygen-flow", 6500, code="mL/min")
    assert isinstance(result, Normalised)
    assert result.unit == "L/min"
    assert result.value == pytest.approx(6.5)


def test_pounds_to_kg(terminology):
    result = _norm(terminology, "body-weight", 154.0, code="[lb_av]")
    assert isinstance(result, Normalised)
    assert result.unit == "kg"
    assert result.value == pytest.approx(154.0 * 0.45359237, abs=1e-9)
    assert _value(_norm(terminology, "body-weight", 100.0, unit="lbs")) == pytest.approx(45.359237)


# --- laboratory -------------------------------------------------------------------------------------

def test_hemoglobin_g_per_l_to_g_per_dl(terminology):
    """S001 Table 3 reports Hb 124 g/L = 12.4 g/dL."""
    result = _norm(terminology, "hemoglobin", 124, code="g/L")
    assert isinstance(result, Normalised)
    assert result.unit == "g/dL"
    assert result.value == pytest.approx(12.4, abs=1e-9)


def test_hemoglobin_mmol_per_l_to_g_per_dl(terminology):
    """g/dL x 0.6206 = mmol/L, so 7.45 mmol/L = 12.0 g/dL."""
    assert _value(_norm(terminology, "hemoglobin", 7.45, code="mmol/L")) == pytest.approx(12.0, abs=0.01)
    assert _value(_norm(terminology, "hemoglobin", 12.0 * 0.6206, code="mmol/L")) == pytest.approx(12.0, abs=1e-6)


def test_hemoglobin_g_per_dl_unchanged(terminology):
    assert _value(_norm(terminology, "hemoglobin", 9.9, unit="g/dl")) == pytest.approx(9.9)


@pytest.mark.parametrize("concept", ["platelets", "neutrophils", "leukocytes"])
def test_10e3_per_ul_equals_10e9_per_l(terminology, concept):
    a = _norm(terminology, concept, 1.2, code="10*3/uL")
    b = _norm(terminology, concept, 1.2, code="10*9/L")
    assert isinstance(a, Normalised) and isinstance(b, Normalised)
    assert a.unit == b.unit == "10*9/L"
    assert a.value == b.value == pytest.approx(1.2)


def test_cells_per_ul_divided_by_1000(terminology):
    assert _value(_norm(terminology, "neutrophils", 1500, unit="cells/uL")) == pytest.approx(1.5)
    assert _value(_norm(terminology, "platelets", 75000, code="/uL")) == pytest.approx(75.0)


# --- rejections -------------------------------------------------------------------------------------

def test_unknown_unit_rejected(terminology):
    result = _norm(terminology, "body-temperature", 38.5, code="furlong")
    assert isinstance(result, Rejected)
    assert result.code == "dropped-unit"
    assert "furlong" in result.reason


def test_unit_of_another_kind_rejected(terminology):
    """A pressure unit on a temperature is not converted."""
    result = _norm(terminology, "body-temperature", 38.5, code="mm[Hg]")
    assert isinstance(result, Rejected) and result.code == "dropped-unit"


def test_no_unit_at_all_rejected(terminology):
    result = normalise(Quantity(value=38.5), terminology.measurements["body-temperature"], terminology)
    assert isinstance(result, Rejected) and result.code == "dropped-unit"


def test_implausible_temperature_rejected(terminology):
    result = _norm(terminology, "body-temperature", 450, code="Cel")
    assert isinstance(result, Rejected)
    assert result.code == "dropped-implausible"


def test_implausible_checked_after_conversion(terminology):
    """104 °F is plausible (40 °C) although 104 is above the Cel range; 104 Cel is not."""
    assert isinstance(_norm(terminology, "body-temperature", 104, code="[degF]"), Normalised)
    assert _norm(terminology, "body-temperature", 104, code="Cel").code == "dropped-implausible"


def test_plausible_range_boundaries_inclusive(terminology):
    spec = terminology.measurements["body-temperature"]
    assert isinstance(_norm(terminology, "body-temperature", spec.plausible_min, code="Cel"), Normalised)
    assert isinstance(_norm(terminology, "body-temperature", spec.plausible_max, code="Cel"), Normalised)
    assert _norm(terminology, "body-temperature", spec.plausible_max + 0.01, code="Cel").code == "dropped-implausible"


def test_missing_value_rejected(terminology):
    result = _norm(terminology, "body-temperature", None, code="Cel")
    assert isinstance(result, Rejected)
    assert result.code == "dropped-value"


# --- which unit is read -----------------------------------------------------------------------------

def test_ucum_code_preferred_over_display_unit(terminology):
    """The display text says Celsius, the UCUM code says [degF]: the code wins."""
    q = Quantity(value=100.4, unit="°C", system=UCUM_SYSTEM, code="[degF]")
    assert unit_code(q, terminology) == "[degF]"
    assert _value(normalise(q, terminology.measurements["body-temperature"], terminology)) == pytest.approx(38.0, abs=1e-9)


def test_code_without_system_read_as_ucum(terminology):
    q = Quantity(value=100.4, unit="°C", system=None, code="[degF]")
    assert unit_code(q, terminology) == "[degF]"


def test_non_ucum_coded_unit_falls_back_to_display_unit(terminology):
    q = Quantity(value=38.2, unit="°C", system="http://example.org/local-units", code="DEG-C-LOCAL")
    assert unit_code(q, terminology) == "Cel"
    assert _value(normalise(q, terminology.measurements["body-temperature"], terminology)) == pytest.approx(38.2)
