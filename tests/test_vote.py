import numpy as np
import pytest

from edge.vote import patient_verdict, slice_fraction_positive

COVID, OTHER, HEALTHY = np.eye(3)


def test_majority_of_group_labels():
    v = patient_verdict([[0.6, 0.1, 0.3], [0.2, 0.1, 0.7], [0.5, 0.3, 0.2]])
    assert v.label == "covid"
    assert v.probabilities["covid"] == pytest.approx((0.6 + 0.2 + 0.5) / 3, abs=1e-6)


def test_confident_pneumonia_group_overrides_healthy_majority():
    groups = [[0.02, 0.03, 0.95], [0.01, 0.04, 0.95], [0.03, 0.92, 0.05]]
    v = patient_verdict(groups)
    assert v.label == "other_pneumonia"
    assert "override" in v.rule


def test_override_needs_probability_strictly_above_threshold():
    groups = [[0.05, 0.05, 0.9], [0.05, 0.05, 0.9], [0.9, 0.05, 0.05]]
    assert patient_verdict(groups).label == "healthy"
    assert patient_verdict(groups, override=0.89).label == "covid"


def test_override_is_configurable_and_picks_the_strongest_disease():
    groups = [[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.81, 0.0, 0.19], [0.0, 0.85, 0.15]]
    assert patient_verdict(groups).label == "healthy"
    assert patient_verdict(groups, override=0.8).label == "other_pneumonia"


def test_tie_goes_to_larger_mean_probability():
    assert patient_verdict([[0.9, 0.05, 0.05], [0.3, 0.2, 0.5]]).label == "covid"
    assert patient_verdict([[0.3, 0.05, 0.65], [0.6, 0.1, 0.3]]).label == "healthy"


def test_slice_fraction_rule_of_rahimzadeh():
    flags = np.zeros(100, bool)
    assert not slice_fraction_positive(flags, 0.0)
    flags[:1] = True
    assert slice_fraction_positive(flags, 0.0)
    assert not slice_fraction_positive(flags, 0.1)
    flags[:11] = True
    assert slice_fraction_positive(flags, 0.1)
    assert not slice_fraction_positive(np.zeros(0, bool), 0.0)
