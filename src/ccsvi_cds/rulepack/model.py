"""The rule-pack format, defined once as pydantic models.

These models are the contract for rule authors: the loader validates every file against them (so a broken
file fails with file, line and field), and the JSON Schemas that editors use are generated from them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

RuleId = str
Indicator = Literal["info", "warning", "critical"]
FactKind = Literal["order", "patient", "procedure"]

ID_PATTERN = r"^[a-z0-9]+(-[a-z0-9]+)*$"
SEMVER_PATTERN = r"^\d+\.\d+\.\d+$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- pack.yaml ----------------------------------------------------------------------------------------


class ClassifierValue(_Strict):
    """One value a classifier can give, and the evidence for it: value sets first, text patterns second."""

    value: str = Field(pattern=ID_PATTERN)
    code: list[str] = Field(default_factory=list, description="ValueSet ids (files in valuesets/)")
    text: list[str] = Field(default_factory=list, description="case-insensitive regular expressions")


class Classifier(_Strict):
    default: str = Field(pattern=ID_PATTERN)
    values: list[ClassifierValue] = Field(min_length=1)


ClassifierName = Literal["procedure", "site", "vessel", "reason", "condition"]


ContextCategory = Literal["NEGATED_EXISTENCE", "POSSIBLE_EXISTENCE", "HISTORICAL", "HYPOTHETICAL", "FAMILY"]


class ContextRule(_Strict):
    """One extra medspaCy ConText rule: a trigger phrase and the direction of the text it modifies."""

    literal: str = Field(min_length=1, description="the trigger phrase (matched on lower-cased tokens)")
    category: ContextCategory
    direction: Literal["FORWARD", "BACKWARD", "BIDIRECTIONAL", "TERMINATE"] = "FORWARD"
    pattern: list[dict[str, object]] | None = Field(
        default=None, description="spaCy token pattern, e.g. [{LOWER: ruled}, {LOWER: out}]; default: the literal")


class TextContext(_Strict):
    """How a text mention is read in context (medspaCy ConText): which mentions do not count.

    Uncertain mentions (POSSIBLE_EXISTENCE) always count, the way a provisional diagnosis does.
    """

    ignore: list[ContextCategory] = Field(description="a mention with one of these categories does not count")
    ignore_also: dict[ClassifierName, list[ContextCategory]] = Field(
        default_factory=dict, description="more categories that do not count for one classifier")
    abbreviations: dict[str, str] = Field(
        default_factory=dict, description="whole words expanded before matching; written with capitals (MS) they "
                                          "match only as written, in lower case (s/p) in any case")
    rules: list[ContextRule] = Field(default_factory=list, description="ConText rules added to medspaCy's")
    drop_default_rules: list[str] = Field(
        default_factory=list, description="literals of medspaCy default rules not to use")


class TrialPolicy(_Strict):
    approved_study_status: list[str] = Field(min_length=1)
    enrolled_subject_status: list[str] = Field(min_length=1)


class OverrideReason(_Strict):
    code: str = Field(pattern=ID_PATTERN)
    display: str = Field(min_length=1)


class PackLink(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    label: str = Field(min_length=1)
    url: str = Field(description="absolute URL; {base_url} is replaced by the service's public base URL")


class SourceSpec(_Strict):
    label: str = Field(min_length=1)
    topic_system: str = Field(min_length=1)
    url: str | None = None


class MsSubtype(_Strict):
    condition: str = Field(pattern=ID_PATTERN, description="a value of the condition classifier that means MS")
    subtype: str = Field(pattern=ID_PATTERN, description="the patient's ms_subtype it gives")


class RecordPolicy(_Strict):
    """How records count: statuses that take a resource out, and how MS evidence ranks."""

    condition_excluded_verification: list[str] = Field(
        description="Condition.verificationStatus codes that make a Condition (and a reasonReference to it) not count")
    order_excluded_status: list[str] = Field(description="ServiceRequest.status values never evaluated")
    procedure_excluded_status: list[str] = Field(description="Procedure.status values that are not prior procedures")
    ms_subtypes: list[MsSubtype] = Field(min_length=1, description="MS condition values, most specific first")

    def subtype_values(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([s.subtype for s in self.ms_subtypes] + ["none"]))


Hook = Literal["order-select", "order-sign"]


class ServiceSpec(_Strict):
    """One CDS Hooks service the pack offers (its prefetch is derived from what the rules read)."""

    id: str = Field(pattern=ID_PATTERN)
    hook: Hook
    title: str = Field(min_length=1)
    description: str = Field(min_length=1)


class PackManifest(_Strict):
    """pack.yaml: what the pack is and what its facts mean."""

    name: str = Field(pattern=ID_PATTERN)
    title: str
    version: str = Field(pattern=SEMVER_PATTERN)
    publisher: str
    source: SourceSpec
    classifiers: dict[ClassifierName, Classifier]
    trial: TrialPolicy
    records: RecordPolicy
    services: list[ServiceSpec] = Field(min_length=1)
    override_reasons: list[OverrideReason] = Field(default_factory=list)
    links: list[PackLink] = Field(default_factory=list)
    text_context: TextContext | None = None

    @model_validator(mode="after")
    def _all_classifiers(self) -> PackManifest:
        missing = {"procedure", "site", "vessel", "reason", "condition"} - set(self.classifiers)
        if missing:
            raise ValueError(f"classifiers missing: {', '.join(sorted(missing))}")
        return self

    @model_validator(mode="after")
    def _unique_services(self) -> PackManifest:
        ids = [s.id for s in self.services]
        if len(ids) != len(set(ids)):
            raise ValueError(f"services: duplicate service id in {ids}")
        return self


# --- evidence.yaml ------------------------------------------------------------------------------------


class Citation(_Strict):
    """One entry of the evidence library. Give an identifier only when it was verified."""

    id: str = Field(pattern=ID_PATTERN)
    label: str = Field(min_length=1, description="short name shown in cards, e.g. 'Siddiqui 2014 (PREMiSe RCT)'")
    citation: str = Field(min_length=1)
    pmid: str | None = Field(default=None, pattern=r"^\d{1,9}$")
    doi: str | None = Field(default=None, pattern=r"^10\.\d{4,9}/\S+$")
    url: str | None = Field(default=None, pattern=r"^https://")
    design: str
    result: str

    @property
    def link(self) -> str | None:
        if self.pmid:
            return f"https://pubmed.ncbi.nlm.nih.gov/{self.pmid}/"
        if self.doi:
            return f"https://doi.org/{self.doi}"
        return self.url


# --- one rule file ------------------------------------------------------------------------------------

Where = dict[str, list[str]]


class FactPattern(_Strict):
    """The fact one alias must match: every `where` field, and one of the `any` alternatives if given."""

    fact: FactKind
    where: Where = Field(default_factory=dict)
    any: list[Where] = Field(default_factory=list)


class Action(_Strict):
    type: Literal["delete-order", "create-referral"]
    description: str = Field(min_length=1)
    text: str | None = Field(default=None, description="create-referral: the referral's code.text")

    @model_validator(mode="after")
    def _referral_text(self) -> Action:
        if self.type == "create-referral" and not self.text:
            raise ValueError("a create-referral action needs `text` (what the referral is for)")
        return self


class Suggestion(_Strict):
    label: str = Field(min_length=1)
    recommended: bool = False
    when: dict[str, Where] = Field(
        default_factory=dict,
        description="offer it only when these facts hold, e.g. {patient: {ms: [yes]}} (alias -> field -> values)",
    )
    actions: list[Action] = Field(min_length=1)


class CardSpec(_Strict):
    summary: str = Field(min_length=1, max_length=139, description="under 140 characters")
    detail: str = Field(min_length=1, description="GitHub-flavoured markdown, a Jinja2 template")
    evidence: list[str] = Field(min_length=1, description="evidence ids the card cites")
    suggestions: list[Suggestion] = Field(default_factory=list)
    override_reasons: list[str] = Field(default_factory=list)
    links: list[str] = Field(default_factory=list, description="evidence ids or pack link ids")


class Rule(_Strict):
    id: RuleId = Field(pattern=ID_PATTERN)
    version: str = Field(pattern=SEMVER_PATTERN)
    title: str = Field(min_length=1)
    description: str = Field(min_length=1)
    indicator: Indicator
    priority: int = Field(default=100, description="cards for one order are shown critical first, then by priority")
    order: str = Field(default="order", description="the alias whose fact is the order the card is about")
    when: list[dict[str, FactPattern]] = Field(min_length=1, description="alternatives: any one suffices")
    card: CardSpec

    @model_validator(mode="after")
    def _order_alias(self) -> Rule:
        for i, alternative in enumerate(self.when):
            pattern = alternative.get(self.order)
            if pattern is None or pattern.fact != "order":
                raise ValueError(f"when[{i}] must bind the alias '{self.order}' to an order fact")
        return self
