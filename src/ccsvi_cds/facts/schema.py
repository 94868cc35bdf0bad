"""The flat facts the engine sees: their kinds, fields and the values each field can take.

Facts are small and flat on purpose (durable_rules caps a fact at 255 properties and joins on flat fields).
Fields whose domain is a classifier take the values that classifier in pack.yaml can give.
"""

from __future__ import annotations

TRIAL_VALUES = ("approved", "not-approved", "none")
MS_VALUES = ("yes", "no")
MS_SUBTYPE_DOMAIN = "records.ms_subtypes"  # the subtypes pack.yaml's `records.ms_subtypes` names, and "none"

# field -> classifier name (str), MS_SUBTYPE_DOMAIN, the fixed tuple of values, or None for free text (e.g. a
# FHIR status)
FactFields = dict[str, "str | tuple[str, ...] | None"]

MATCHABLE: dict[str, FactFields] = {
    "order": {
        "procedure": "procedure",
        "site": "site",
        "vessel": "vessel",
        "reason": "reason",
        "trial": TRIAL_VALUES,
        "status": None,
        "study_status": None,
    },
    "patient": {"ms": MS_VALUES, "ms_subtype": MS_SUBTYPE_DOMAIN},
    "procedure": {
        "procedure": "procedure",
        "site": "site",
        "vessel": "vessel",
        "reason": "reason",
        "status": None,
    },
}

# Fields a card template may show besides the matchable ones.
DISPLAY_ONLY: dict[str, tuple[str, ...]] = {
    "order": ("ref", "patient", "study", "study_title", "authored", "requester", "requester_display", "text"),
    "patient": ("ref", "ms_conditions"),
    "procedure": ("ref", "patient", "performed", "text"),
}


def fields_of(kind: str) -> tuple[str, ...]:
    return tuple(MATCHABLE[kind]) + DISPLAY_ONLY[kind]
