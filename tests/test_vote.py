import numpy as np
import pytest

from edge.vote import PatientRule, patient_verdict, slice_fraction_positive

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


# --- slice models: the patient rules, worked by hand ---------------------------------------------



def slices(*rows):
    return np.array(rows, float)


def test_fraction_rule_zero_and_ten_percent_variants_by_hand():
    # 10 slices, one positive (covid 0.6 is its largest probability): 1/10 = 10%.
    one = slices([0.6, 0.1, 0.3], *[[0.1, 0.1, 0.8]] * 9)
    assert PatientRule("fraction", 0.0).verdict(one).label == "covid"       # 10% > 0%
    assert PatientRule("fraction", 0.1).verdict(one).label == "healthy"     # 10% is not above 10%
    two = slices([0.6, 0.1, 0.3], [0.2, 0.5, 0.3], *[[0.1, 0.1, 0.8]] * 8)
    v = PatientRule("fraction", 0.1).verdict(two)                           # 20% > 10%
    assert v.label == "covid"    # one covid and one other_pneumonia slice: covid's mean (0.16) beats 0.14
    assert v.rule == "fraction rule: 2 of 10 slice(s) positive (20.0%), above 10%"
    assert v.probabilities == {"covid": pytest.approx(0.16), "other_pneumonia": pytest.approx(0.14),
                               "healthy": pytest.approx(0.7)}


def test_fraction_rule_names_the_class_most_positive_slices_chose():
    probs = slices([0.1, 0.5, 0.4], [0.2, 0.7, 0.1], [0.9, 0.05, 0.05], [0.1, 0.1, 0.8])
    # positive: other, other, covid -> other_pneumonia although covid has the single largest probability
    assert PatientRule("fraction", 0.0).verdict(probs).label == "other_pneumonia"


def test_mean_rule_by_hand():
    probs = slices([0.2, 0.1, 0.7], [0.6, 0.1, 0.3])       # mean [0.4, 0.1, 0.5]: disease 0.5
    assert PatientRule("mean", 0.5).verdict(probs).label == "healthy"     # 0.5 is not above 0.5
    v = PatientRule("mean", 0.4).verdict(probs)
    assert v.label == "covid" and v.rule == "mean rule: mean disease probability over 2 slice(s) 0.500, above 0.4"


def test_two_class_rules_use_the_last_class_as_negative():
    probs = slices([0.7, 0.3], [0.2, 0.8], [0.4, 0.6], [0.1, 0.9])        # 1 of 4 positive; mean infection 0.35
    assert PatientRule("fraction", 0.1).verdict(probs, ("infection", "none")).label == "infection"
    assert PatientRule("fraction", 0.25).verdict(probs, ("infection", "none")).label == "none"
    assert PatientRule("mean", 0.3).verdict(probs, ("infection", "none")).label == "infection"
    assert PatientRule("mean", 0.4).verdict(probs, ("infection", "none")).label == "none"


@pytest.mark.parametrize("name, threshold", [("median", 0.1), ("fraction", 1.0), ("mean", -0.1)])
def test_bad_rules_are_refused(name, threshold):
    with pytest.raises(ValueError):
        PatientRule(name, threshold)
