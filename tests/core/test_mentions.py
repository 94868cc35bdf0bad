"""Clinical text read in context (facts/mentions.py): what a clinician would count, and only that."""

from __future__ import annotations

import re
import shutil

import pytest
from builders import CPT, ICD10CM, ROOT, SCT, concept, condition, order, patient

from ccsvi_cds.facts import mentions
from ccsvi_cds.facts.classify import Classifiers, compile_classifiers
from ccsvi_cds.facts.fhir import Coded
from ccsvi_cds.facts.mentions import TextReader, trigger_pattern
from ccsvi_cds.rulepack import RulePack, load_pack
from ccsvi_cds.rulepack.loader import PackError
from ccsvi_cds.rulepack.model import ContextRule

ANGIO = ("venous-angioplasty-ms", "warning", "ServiceRequest/sr1")
ILIAC = {"coding": [{"system": SCT, "code": "46027005", "display": "Iliac vein"}]}

NOT_MS = [
    # negated
    "MS ruled out", "Multiple sclerosis ruled out", "ruled out MS", "no evidence of multiple sclerosis",
    "No evidence of MS on MRI", "negative for MS", "Negative for multiple sclerosis.", "MS excluded",
    "multiple sclerosis unlikely", "Patient denies MS", "MS has been ruled out",
    # someone else
    "Family history of multiple sclerosis (mother)", "mother has MS", "FHx MS", "FHx: multiple sclerosis",
    "MS in mother", "Multiple sclerosis (maternal aunt)", "Sister with multiple sclerosis",
    # hypothetical
    "if MS is confirmed", "Return if symptoms of MS develop",
]
MS = [
    # uncertain counts like a provisional diagnosis
    "possible MS", "r/o MS", "R/O multiple sclerosis", "probable multiple sclerosis", "Suspected MS",
    "MS not excluded", "MS cannot be excluded", "evaluate for MS", "likely multiple sclerosis",
    # plainly affirmed, however it is typed
    "relapsing-remitting multiple sclerosis", "MULTIPLE   SCLEROSIS", "Multiple sclerosis, relapsing",
    "multiple\tsclerosis", "MS", "History of multiple sclerosis", "h/o MS",
    "Multiple sclerosis. No new lesions.", "MS; mother well",
]


@pytest.fixture(scope="module")
def classify(pack: RulePack) -> Classifiers:
    return compile_classifiers(pack)


def read(classify: Classifiers, name: str, text: str) -> str:
    coded = Coded()
    coded.texts.append(text)
    return classify(name, coded)


@pytest.mark.parametrize("text", NOT_MS)
def test_negated_other_person_and_hypothetical_mentions_are_not_ms(classify, text):
    assert read(classify, "condition", text) == "other"
    assert read(classify, "reason", text) == "other"


@pytest.mark.parametrize("text", MS)
def test_affirmed_and_uncertain_mentions_are_ms(classify, text):
    assert read(classify, "condition", text).startswith("ms")
    assert read(classify, "reason", text) == "ms"


@pytest.mark.parametrize(("text", "subtype"), [
    ("Relapsing-remitting MS", "ms-relapsing-remitting"), ("RRMS", "ms-relapsing-remitting"),
    ("SPMS", "ms-progressive"), ("secondary  progressive  MS", "ms-progressive"),
    ("possible relapsing remitting multiple sclerosis", "ms-relapsing-remitting"),
])
def test_subtype_text_is_read_after_normalising(classify, text, subtype):
    assert read(classify, "condition", text) == subtype


@pytest.mark.parametrize(("text", "procedure", "site"), [
    ("PTA azygos", "angioplasty", "outflow"),
    ("PTV of left IJV", "angioplasty", "outflow"),
    ("Jugular vein angioplasty without stent", "angioplasty", "outflow"),
    ("History of jugular venoplasty", "other", "unspecified"),
    ("s/p jugular stent 2011", "other", "unspecified"),
    ("Left iliac vein stent; previous jugular venoplasty", "stent", "other-vein"),
    ("Iliac vein stent, no jugular involvement", "stent", "other-vein"),
])
def test_procedure_text_ignores_historical_and_negated_mentions(classify, text, procedure, site):
    assert (read(classify, "procedure", text), read(classify, "site", text)) == (procedure, site)


def test_a_historical_condition_still_counts_but_a_historical_procedure_does_not(classify):
    assert read(classify, "condition", "history of MS") == "ms"
    assert read(classify, "procedure", "history of jugular angioplasty") == "other"


def test_normalise_folds_case_spacing_dashes_and_abbreviations(pack):
    reader = TextReader({}, pack.manifest.text_context)
    assert reader.normalise("  MULTIPLE \u00a0 SCLEROSIS\n") == "multiple sclerosis"
    assert reader.normalise("Relapsing\u2013remitting MS") == "relapsing-remitting multiple sclerosis"
    assert reader.normalise("didn\u2019t rule out MS; cannot exclude") == (
        "did not rule out multiple sclerosis; can not exclude")
    assert reader.normalise("msk pain, mss") == "msk pain, mss"  # whole words only
    assert reader.normalise("S / P jugular stent") == "status post jugular stent"


def test_targets_come_from_the_pack_patterns(pack):
    """A rule author's new pattern is a new target, read in the same context."""
    reader = TextReader({"condition": re.compile(r"(?P<g0>neuromyelitis optica)")}, pack.manifest.text_context)
    assert reader.usable("condition", "Neuromyelitis  optica") == {0}
    assert reader.usable("condition", "NMO ruled out; neuromyelitis optica ruled out") == frozenset()
    assert reader.usable("condition", "multiple sclerosis") == frozenset()


def test_pack_rules_and_categories_are_data(pack):
    base = pack.manifest.text_context
    assert base is not None
    target = {"reason": re.compile(r"(?P<g0>ccsvi)")}
    assert TextReader(target, base).usable("reason", "CCSVI declared void") == {0}
    extra = base.model_copy(update={"rules": [*base.rules, ContextRule(
        literal="declared void", category="NEGATED_EXISTENCE", direction="BACKWARD")]})
    assert TextReader(target, extra).usable("reason", "CCSVI declared void") == frozenset()
    assert TextReader(target, base).usable("reason", "if CCSVI") == frozenset()
    lenient = base.model_copy(update={"ignore": ["NEGATED_EXISTENCE", "FAMILY"]})
    assert TextReader(target, lenient).usable("reason", "if CCSVI") == {0}


def test_without_a_text_context_text_is_only_normalised(pack):
    reader = TextReader({"condition": re.compile(r"(?P<g0>multiple sclerosis)")}, None)
    assert reader.usable("condition", "MULTIPLE  SCLEROSIS ruled out") == {0}


def test_no_nlp_without_a_target_or_without_a_trigger_that_could_exclude(pack, monkeypatch):
    """The cheap path: the audit's texts mostly never reach spaCy."""
    def refuse(rules):
        raise AssertionError("the NLP pipeline was used")

    monkeypatch.setattr(mentions, "pipeline", refuse)
    reader = TextReader({"condition": re.compile(r"(?P<g0>multiple sclerosis)")}, pack.manifest.text_context)
    assert reader.usable("condition", "Jugular vein angioplasty") == frozenset()
    assert reader.usable("condition", "Relapsing-remitting multiple sclerosis") == {0}
    assert reader.usable("condition", "possible MS") == {0}  # uncertainty never excludes: no need to ask
    with pytest.raises(AssertionError, match="NLP pipeline was used"):
        reader.usable("condition", "MS ruled out")


@pytest.mark.parametrize("text", NOT_MS + MS + [
    "No stenosis of the jugular vein; MS", "Jugular venoplasty declined", "angioplasty not done",
    "isn't MS", "Patient can't have MS", "no-MS clinic", "MS:no", "free of MS", "without MS",
])
def test_the_trigger_prefilter_never_hides_an_excluding_context(pack, text):
    """Sound: wherever ConText would exclude a mention, the pre-filter sends the text to ConText."""
    ctx = pack.manifest.text_context
    reader = TextReader({"condition": re.compile(r"(?P<g0>multiple sclerosis)")}, ctx)
    norm = reader.normalise(text)
    spans = [(m.start(), m.end()) for m in re.finditer("multiple sclerosis", norm)]
    if not spans:
        return
    categories = set().union(*reader._context(norm, spans).values())
    if categories & set(ctx.ignore):
        assert reader.triggers is not None and reader.triggers.search(norm), (norm, categories)


def test_every_default_literal_trigger_is_seen_by_the_prefilter(pack):
    reader = TextReader({}, pack.manifest.text_context)
    for rule in reader.rules:
        if rule["category"] in ("NEGATED_EXISTENCE", "FAMILY", "HYPOTHETICAL") and not rule.get("pattern") \
                and rule.get("direction") != "TERMINATE":
            assert reader.triggers.search(f"x {rule['literal']} y"), rule


def test_an_unreadable_token_pattern_makes_the_prefilter_match_everything():
    rules = [{"literal": "odd", "category": "NEGATED_EXISTENCE", "direction": "FORWARD",
              "pattern": [{"REGEX": "^od+$"}]}]
    assert trigger_pattern(rules, {"NEGATED_EXISTENCE"}).search("anything")
    assert not trigger_pattern(rules, {"FAMILY"}).search("anything")
    excluded_first = [{"literal": "x", "category": "FAMILY", "pattern": [{"LOWER": "no", "OP": "!"}, {"LOWER": "kin"}]}]
    assert trigger_pattern(excluded_first, {"FAMILY"}).search("next of kin")  # "!" is no required value


def test_reading_text_writes_nothing_to_stdout_or_stderr(pack, capfd):
    """medspaCy's sentence splitter logs through loguru at DEBUG; nothing may reach the service's log."""
    ctx = pack.manifest.text_context
    fresh = ctx.model_copy(update={"rules": [*ctx.rules, ContextRule(literal="zz-unique-capfd", category="FAMILY")]})
    reader = TextReader({"condition": re.compile(r"(?P<g0>multiple sclerosis)")}, fresh)
    assert reader.usable("condition", "Mother has MS. Father well.") == frozenset()
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_results_are_memoised_per_normalised_text(pack):
    reader = TextReader({"condition": re.compile(r"(?P<g0>multiple sclerosis)")}, pack.manifest.text_context)
    reader.usable("condition", "MS ruled out")
    reader.usable("condition", "MS   RULED out")
    assert list(reader.cache) == ["multiple sclerosis ruled out"]


def test_a_bad_text_context_section_is_refused_with_its_place(tmp_path):
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    manifest = tmp_path / "rules" / "pack.yaml"
    text = manifest.read_text(encoding="utf-8")
    manifest.write_text(text.replace("ignore: [NEGATED_EXISTENCE, FAMILY", "ignore: [NEGATED, FAMILY"),
                        encoding="utf-8")
    line = next(n for n, t in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1) if "[NEGATED," in t)
    with pytest.raises(PackError) as exc:
        load_pack(tmp_path / "rules")
    assert f"pack.yaml:{line}:" in str(exc.value) and "text_context" in str(exc.value)


# --- end to end, through Evaluator.evaluate --------------------------------------------------------------

def test_family_history_coded_z82_with_ms_text_gives_no_ms_card(fired):
    family = condition(ICD10CM, "Z82.0", text="Family history of multiple sclerosis (mother)")
    assert fired(patient(), family, order()) == []


@pytest.mark.parametrize("text", ["possible MS", "r/o MS", "Probable multiple sclerosis", "MULTIPLE   SCLEROSIS",
                                  "Multiple sclerosis, relapsing"])
def test_uncertain_or_oddly_typed_ms_text_gives_the_ms_card(fired, text):
    assert fired(patient(), condition(None, None, text=text), order()) == [ANGIO]


@pytest.mark.parametrize("text", ["MS ruled out", "No evidence of multiple sclerosis", "mother has MS", "FHx MS"])
def test_negated_or_other_person_ms_text_gives_no_card(fired, text):
    assert fired(patient(), condition(None, None, text=text), order()) == []


def test_order_reason_text_in_context(fired):
    """Iliac vein angioplasty fires only for a stated MS/CCSVI reason: a ruled-out MS is no reason."""
    ruled_out = order(body=ILIAC, reason=[concept(text="May-Thurner syndrome, MS ruled out")])
    assert fired(patient(), ruled_out) == []
    suspected = order(body=ILIAC, reason=[concept(text="possible MS")])
    assert fired(patient(), suspected) == [ANGIO]


def test_order_text_abbreviation_and_history(fired):
    ms = condition()
    assert fired(patient(), ms, order(None, None, text="PTA azygos", body=None)) == [ANGIO]
    duplex = order(None, None, text="Duplex ultrasound of neck veins, history of jugular venoplasty", body=None)
    assert fired(patient(), ms, duplex) == []
    assert fired(patient(), ms, order(CPT, "37248", text="IJV PTV", body=None)) == [ANGIO]


def test_capitalised_abbreviations_match_only_as_written(pack):
    """MS is multiple sclerosis; Ms (a title) and ms (milliseconds) are not."""
    reader = TextReader({"condition": re.compile(r"(?P<g0>multiple sclerosis)")}, pack.manifest.text_context)
    assert reader.usable("condition", "Known MS, stable") == frozenset({0})
    assert reader.usable("condition", "Seen by Ms Jones") == frozenset()
    assert reader.usable("condition", "latency 40 ms") == frozenset()
    assert reader.normalise("S/P IJV angioplasty") == "status post internal jugular vein angioplasty"
