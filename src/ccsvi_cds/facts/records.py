"""FHIR input -> per-patient records: the only place that decides what the input holds.

Every surface (service, audit, `check`, rule cases, `rules diff`) reads its input here, so one patient gets
one answer whatever the door. Policies, stated once:
- Bundles (any depth) are opened; a `urn:uuid` or absolute fullUrl names the entry's resource; an entry
  without an id takes the uuid of its `urn:uuid` fullUrl.
- Contained resources are indexed under their container ("ServiceRequest/1#c1") and reached only through
  `#id` references from it; they are never grouped or evaluated on their own.
- Duplicate ids: the same "Type/id" twice -> the later record in input order wins; if the two differ, the
  superseded one is reported (DUPLICATE_ID). A CDS Hooks request's draft orders come after its prefetch, so
  the order being signed wins over a stale copy of it.
- Grouping: by the patient a resource names (subject, R4 ResearchSubject.individual); resources naming none
  fall to the request's patient (context.patientId) when there is one.
- Statuses: what does not count (orders/procedures entered in error, Conditions by verification status) is
  pack data (pack.yaml `records:`), applied in facts/extract.py.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ccsvi_cds.facts.fhir import Located, Resource, ShapeError, as_obj, as_str
from ccsvi_cds.facts.issues import Issue, IssueKind
from ccsvi_cds.facts.references import Ref, read_reference, reference_key

Item = Resource | Located | tuple[str, Resource]


@dataclass
class PatientRecords:
    """One patient's resources (of the types the pack reads), in input order, duplicates resolved."""

    patient: str | None
    items: list[Located] = field(default_factory=list)


@dataclass
class Records:
    index: dict[str, Located]  # every resource by key: "Type/id", contained ones "Type/id#cid"
    aliases: dict[str, str]  # Bundle fullUrl -> "Type/id"
    patients: dict[str | None, PatientRecords]
    targets: frozenset[str] | None  # the orders asked about (None: every ServiceRequest)
    issues: list[Issue]

    def reference(self, value: Any, path: str, container: str | None) -> Ref | None:
        """Read a Reference element (a JSON object) found at `path` inside the resource keyed `container`."""
        obj = as_obj(value, path)
        if obj is None:
            return None
        text = as_str(obj.get("reference"), f"{path}.reference")
        return read_reference(text, self.aliases, container) if text else None

    def supply(self, items: Iterable[Located]) -> None:
        """Add resources read by reference (e.g. a ResearchStudy from the audit's side table or a server)."""
        for item in items:
            key = key_of(item.resource)
            if key is not None:
                self.index.setdefault(key, item)

    def resolve(self, ref: Ref | None) -> Located | None:
        return self.index.get(ref.key) if ref is not None and ref.key else None


def key_of(resource: Resource) -> str | None:
    rtype, rid = resource.get("resourceType"), resource.get("id")
    if isinstance(rtype, str) and isinstance(rid, str) and rid:
        return f"{rtype}/{rid}"
    return None


def patient_of(resource: Resource, path: str, aliases: Mapping[str, str] | None = None) -> str | None:
    """The "Patient/id" a resource belongs to (the audit shards by it too); None if it names none."""
    rtype = resource.get("resourceType")
    if rtype == "Patient":
        return key_of(resource)
    element = "subject" if rtype in PATIENT_ELEMENT_TYPES else patient_element(resource)  # the common case first
    if element is None:
        return None
    obj = resource.get(element)
    if type(obj) is not dict:  # the path is spelt out only for an error: the audit calls this per record
        obj = as_obj(obj, f"{path}.{element}")
        if obj is None:
            return None
    text = obj.get("reference")
    if type(text) is not str:
        text = as_str(text, f"{path}.{element}.reference")
    if not text:
        return None
    key = reference_key(text, aliases)
    return key if key and key.startswith("Patient/") else None


def patient_element(resource: Resource) -> str | None:
    """The element naming a resource's patient: R4 ResearchSubject.individual, otherwise subject."""
    rtype = resource.get("resourceType")
    if rtype == "ResearchSubject":
        return "subject" if "subject" in resource else "individual"  # R5 subject, R4 individual
    return "subject" if rtype in PATIENT_ELEMENT_TYPES else None


PATIENT_ELEMENT_TYPES = frozenset({"ServiceRequest", "Condition", "Procedure"})
PATIENT_KEYED_TYPES = PATIENT_ELEMENT_TYPES | {"ResearchSubject", "Patient"}


@dataclass
class _Visit:
    """Walks one item of `flatten` into `out`, `aliases` and `issues`."""

    out: list[Located]
    aliases: dict[str, str]
    issues: list[Issue]

    def __call__(self, resource: Any, path: str, source: object) -> None:
        if not isinstance(resource, dict):
            self.issues.append(Issue(path, "expected a FHIR resource (a JSON object)", IssueKind.NOT_A_RESOURCE,
                                     source))
            return
        if resource.get("resourceType") != "Bundle":
            self.out.append(Located(path, resource, source))
            return
        entries = resource.get("entry") or []
        if not isinstance(entries, list):
            self.issues.append(Issue(f"{path}.entry", "expected a list", IssueKind.MALFORMED, source))
            return
        for j, entry in enumerate(entries):
            epath = f"{path}.entry[{j}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
                self.issues.append(Issue(epath, "entry without a resource object", IssueKind.NOT_A_RESOURCE, source))
                continue
            inner = entry["resource"]
            full_url = entry.get("fullUrl")
            if isinstance(full_url, str) and isinstance(inner.get("resourceType"), str):
                rid = inner.get("id")
                if not rid and (rid := id_from_full_url(full_url)):
                    inner = {**inner, "id": rid}
                if rid:
                    self.aliases[full_url] = f"{inner['resourceType']}/{rid}"
            self(inner, f"{epath}.resource", source)


def flatten(items: Iterable[Item], origin: str = "resources") -> tuple[list[Located], dict[str, str], list[Issue]]:
    """Open Bundles (recursively) into located resources; map fullUrls to "Type/id"."""
    out: list[Located] = []
    aliases: dict[str, str] = {}
    issues: list[Issue] = []
    visit = _Visit(out, aliases, issues)  # not a nested recursive closure: that is a reference cycle per call
    for i, item in enumerate(items):
        if isinstance(item, Located):
            visit(item.resource, item.path, item.source)
        elif isinstance(item, tuple):
            visit(item[1], item[0], None)
        else:
            visit(item, f"{origin}[{i}]", None)
    return out, aliases, issues


def id_from_full_url(full_url: Any) -> str | None:
    """The id a Bundle entry's resource takes when it has none: the uuid of its urn:uuid fullUrl."""
    if isinstance(full_url, str) and full_url.startswith("urn:uuid:"):
        return full_url.removeprefix("urn:uuid:") or None
    return None


def read_records(items: Iterable[Item], types: Collection[str], *, targets: Collection[str] | None = None,
                 default_patient: str | None = None,
                 check: Callable[[Located], list[Issue]] | None = None) -> Records:
    """Read `items` (resources, Bundles, located resources) into per-patient records.

    `types`: the resource types the pack reads (others are ignored, whatever their shape). `targets`: the
    orders asked about, as references in any spelling. `check`: extra per-resource validation (issues; a
    resource with any is skipped)."""
    located, aliases, issues = flatten(items)
    index: dict[str, Located] = {}
    for item in located:
        res = item.resource
        rtype = res.get("resourceType")
        if not isinstance(rtype, str):
            issues.append(Issue(item.path, "not a FHIR resource: resourceType is missing", IssueKind.NOT_A_RESOURCE,
                                item.source))
            continue
        if rtype not in types:
            continue
        key = key_of(res)
        if key is None:
            issues.append(Issue(f"{item.path}.id", f"{rtype} without an id cannot be referenced or reported",
                                IssueKind.MISSING_ID, item.source))
            continue
        if check is not None and (found := check(item)):
            issues.extend(found)
            continue
        previous = index.pop(key, None)  # pop: re-inserted last, so the index keeps input order of winners
        if previous is not None and previous.resource != res:
            issues.append(Issue(previous.path, f"duplicate resource {key}: superseded by a later record with the "
                                               "same id", IssueKind.DUPLICATE_ID, previous.source))
        index[key] = item
    default = _default_patient(default_patient)
    patients: dict[str | None, PatientRecords] = {}
    contained: dict[str, Located] = {}
    for key, item in index.items():
        try:
            contained.update(_contained(key, item))
        except ShapeError as exc:
            issues.append(Issue(exc.path, exc.message, IssueKind.MALFORMED, item.source))
        if item.resource["resourceType"] not in PATIENT_KEYED_TYPES:
            continue  # e.g. ResearchStudy: reached by reference only
        try:
            patient = patient_of(item.resource, item.path, aliases) or default
        except ShapeError as exc:
            issues.append(Issue(exc.path, exc.message, IssueKind.MALFORMED, item.source))
            continue
        patients.setdefault(patient, PatientRecords(patient)).items.append(item)
    index.update(contained)
    wanted = None
    if targets is not None:
        wanted = frozenset(k for t in targets if (k := read_reference(t, aliases).key) is not None)
    return Records(index, aliases, patients, wanted, issues)


def _default_patient(patient_id: str | None) -> str | None:
    if not patient_id:
        return None
    ref = read_reference(patient_id)
    return ref.key if ref.key and ref.key.startswith("Patient/") else f"Patient/{patient_id}"


def _contained(key: str, item: Located) -> dict[str, Located]:
    found: dict[str, Located] = {}
    value = item.resource.get("contained")
    if value is None:
        return found
    if not isinstance(value, list):
        raise ShapeError(f"{item.path}.contained", "expected a list")
    for k, inner in enumerate(value):
        cid = inner.get("id") if isinstance(inner, dict) else None
        if isinstance(cid, str) and cid and isinstance(inner.get("resourceType"), str):
            found[f"{key}#{cid}"] = Located(f"{item.path}.contained[{k}]", inner, item.source)
    return found


# --------------------------------------------------------------------------------- CDS Hooks requests


def is_hook_request(data: Any) -> bool:
    """A CDS Hooks request (or just its `context`, as the hook definitions' examples give it), not FHIR."""
    return isinstance(data, dict) and isinstance(data.get("context"), dict) and "resourceType" not in data


def request_items(request: Mapping[str, Any]) -> list[Located]:
    """The resources of a CDS Hooks request in input order: prefetch (by key), then the draft orders, so a
    draft order wins over a prefetched copy of itself. Prefetch values with no data (null,
    OperationOutcome) carry nothing: deciding to fetch them is the service's job."""
    context = request.get("context") or {}
    located: list[Located] = []
    prefetch = request.get("prefetch")
    for key, value in sorted(prefetch.items() if isinstance(prefetch, dict) else ()):
        if isinstance(value, dict) and value.get("resourceType") not in (None, "OperationOutcome"):
            located.append(Located(f"prefetch.{key}", value))
    draft = context.get("draftOrders")
    if isinstance(draft, dict):
        located.append(Located("context.draftOrders", draft))
    return located


def draft_order_keys(draft_orders: Any) -> list[str]:
    """Keys ("Type/id") of the draft orders, in their order."""
    located, _, _ = flatten([Located("context.draftOrders", draft_orders)] if isinstance(draft_orders, dict) else [])
    return [k for item in located if (k := key_of(item.resource)) is not None]


def resolve_selections(selections: Sequence[Any], draft_keys: Sequence[str]) -> tuple[list[str], list[int]]:
    """(keys of the selected draft orders, indexes of selections that name none). A selection is a
    reference in any spelling ("ServiceRequest/1", an absolute URL) or a bare id, as older clients send."""
    by_id: dict[str, str] = {}
    for key in draft_keys:
        by_id.setdefault(key.split("/", 1)[1], key)
    keys = set(draft_keys)
    found: list[str] = []
    unknown: list[int] = []
    for i, sel in enumerate(selections):
        chosen: str | None = None
        if isinstance(sel, str):
            ref = read_reference(sel)
            chosen = ref.key if ref.key in keys else by_id.get(sel)
        if chosen is None:
            unknown.append(i)
        else:
            found.append(chosen)
    return found, unknown


def request_targets(request: Mapping[str, Any]) -> tuple[list[str] | None, list[Issue]]:
    """The orders a request asks about: order-select its selections, order-sign (or none given) all."""
    context = request.get("context") or {}
    selections = context.get("selections")
    if request.get("hook") == "order-sign" or not isinstance(selections, list):
        return None, []
    found, unknown = resolve_selections(selections, draft_order_keys(context.get("draftOrders")))
    issues = [Issue(f"context.selections[{i}]", "selection does not name an order in context.draftOrders",
                    IssueKind.UNKNOWN_SELECTION) for i in unknown]
    return found, issues


def read_request(request: Mapping[str, Any], types: Collection[str],
                 check: Callable[[Located], list[Issue]] | None = None) -> Records:
    targets, issues = request_targets(request)
    patient = (request.get("context") or {}).get("patientId")
    records = read_records(request_items(request), types, targets=targets,
                           default_patient=patient if isinstance(patient, str) else None, check=check)
    records.issues[:0] = issues
    return records


def read_document(data: Any, origin: str, types: Collection[str],
                  check: Callable[[Located], list[Issue]] | None = None) -> Records:
    """A JSON document as users hand it over: a CDS Hooks request, a FHIR resource or Bundle, or a list."""
    if is_hook_request(data):
        return read_request(data, types, check)
    return read_records(document_items(data, origin), types, check=check)


def document_items(data: Any, origin: str) -> list[Located]:
    """The resources of a JSON document, located as every surface reports them."""
    if is_hook_request(data):
        return request_items(data)
    if isinstance(data, list):
        return [Located(f"{origin}[{i}]", r) for i, r in enumerate(data)]
    return [Located(origin, data)]
