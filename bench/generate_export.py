"""Synthetic FHIR Bulk Data exports for audit tests and benchmarks: deterministic by seed, any size.

The mix imitates an EHR export: mostly Observations and Encounters, ordinary referrals, a few percent of
patients with MS, and rare CCSVI orders (angioplasty or stent of the jugular / azygos veins, by CPT, ICD-10-PCS,
SNOMED or free text; some in an approved trial, some linked to a withdrawn study, some repeats), next to the
look-alikes that must stay silent: dialysis fistula angioplasty, iliac vein stenting for May-Thurner,
carotid (arterial) angioplasty, MS recorded as refuted, entered-in-error orders. References are spelled in
the three ways real exports mix (relative, absolute, versioned). Only codes from shared/clinical/terminology.md
and well-known ICD-10-CM / LOINC codes are used; ordinary referrals are text-only, as in many EHRs.

Two shapes. ``default`` is an EHR export: per patient 1-4 Encounters, 3-12 Observations, 0-2 Conditions and
0-2 orders (most patients have none). ``referral`` is what a referral or order system exports: per patient
1-2 routine orders (brain MRI, blood count, vitamin D, neurology or physiotherapy referrals), Conditions for
about a third, no Encounters or Observations; at 1M resources about 318k Patients, 193k Conditions, 482k
ServiceRequests and a few hundred Procedures. Both have the same rare CCSVI orders and look-alikes.

    python -m bench.generate_export OUT_DIR --resources 1000000 [--shape referral] [--seed 7] [--gzip]

Writes OUT_DIR/manifest.json, OUT_DIR/<Type>.<n>.ndjson[.gz] and OUT_DIR/.truth.json (expected outcome per
ServiceRequest id: the rule expected to fire, or "silent"; a dot-file, so audits ignore it).
"""

from __future__ import annotations

import argparse
import collections.abc
import gzip
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

BASE = "https://ehr.example.org/fhir"
SCT = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
CPT = "http://www.ama-assn.org/go/cpt"
PCS = "http://www.cms.gov/Medicare/Coding/ICD10"
LOINC = "http://loinc.org"
STUDY_EXT = "http://hl7.org/fhir/StructureDefinition/workflow-researchStudy"

MS_CODES = [(SCT, "24700007", "Multiple sclerosis"), (SCT, "426373005", "Relapsing remitting multiple sclerosis"),
            (SCT, "425500002", "Secondary progressive multiple sclerosis"),
            (SCT, "428700003", "Primary progressive multiple sclerosis"), (ICD10CM, "G35", "Multiple sclerosis")]
COMMON_CONDITIONS = [(ICD10CM, "I10", "Essential (primary) hypertension"),
                     (ICD10CM, "E11.9", "Type 2 diabetes mellitus without complications"),
                     (ICD10CM, "J45.909", "Unspecified asthma, uncomplicated"), (None, None, "Low back pain"),
                     (None, None, "Migraine"), (None, None, "Osteoarthritis of knee")]
ORDINARY_REFERRALS = ["MRI brain without contrast", "Physiotherapy referral", "Neurology outpatient referral",
                      "Echocardiogram", "Colonoscopy", "Dermatology referral", "Ultrasound abdomen",
                      "Ophthalmology referral", "Sleep study", "Cardiology outpatient referral"]
# What a referral system orders for nearly everyone (text-only, as ordinary referrals are above).
ROUTINE_ORDERS = ["MRI brain without contrast", "MRI brain with and without contrast", "Complete blood count",
                  "Vitamin D 25-hydroxy level", "Neurology outpatient referral", "Physiotherapy referral"]
VITALS = [("8867-4", "Heart rate", "/min", 55, 110), ("8480-6", "Systolic blood pressure", "mm[Hg]", 95, 170),
          ("8462-4", "Diastolic blood pressure", "mm[Hg]", 55, 105), ("8310-5", "Body temperature", "Cel", 36, 39),
          ("29463-7", "Body weight", "kg", 45, 130), ("8302-2", "Body height", "cm", 145, 200)]
JUGULAR = {"coding": [{"system": SCT, "code": "12123001", "display": "Internal jugular vein"}]}
AZYGOS = {"coding": [{"system": SCT, "code": "72107004", "display": "Azygos vein"}]}
ILIAC = {"coding": [{"system": SCT, "code": "46027005", "display": "Iliac vein"}]}
CAROTID = {"coding": [{"system": SCT, "code": "69105007", "display": "Carotid artery"}]}


def _cc(system: str | None, code: str | None, display: str, text: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if system and code:
        out["coding"] = [{"system": system, "code": code, "display": display}]
    out["text"] = text or display
    return out


# The CCSVI order variants: (code, bodySite, expected rule without trial), all real codes from terminology.md.
CCSVI_ORDERS: list[tuple[dict[str, Any], list[dict[str, Any]] | None, str]] = [
    (_cc(CPT, "37248", "Transluminal balloon angioplasty, vein", "Jugular vein angioplasty"), [JUGULAR],
     "venous-angioplasty-ms"),
    (_cc(CPT, "37238", "Intravascular stent placement, vein", "Jugular vein stent"), [JUGULAR], "venous-stent-ms"),
    (_cc(PCS, "057N3ZZ", "Dilation of left internal jugular vein, percutaneous approach"), None,
     "venous-angioplasty-ms"),
    (_cc(PCS, "05703DZ", "Dilation of azygos vein with intraluminal device, percutaneous approach"), None,
     "venous-stent-ms"),
    (_cc(SCT, "359551000", "Angioplasty of vein", "Venous angioplasty (liberation procedure)"), [AZYGOS],
     "venous-angioplasty-ms"),
    (_cc(None, None, "Jugular venoplasty for CCSVI (liberation therapy)"), None, "venous-angioplasty-ms"),
]


@dataclass
class Writer:
    """Round-robins resources of one type into files of at most ``per_file`` lines."""

    out: Path
    gz: bool
    per_file: int
    files: dict[str, list[tuple[Path, int]]] = field(default_factory=dict)
    _open: dict[str, Any] = field(default_factory=dict)
    _count: dict[str, int] = field(default_factory=dict)

    def write(self, res: dict[str, Any]) -> None:
        t = res["resourceType"]
        n = self._count.get(t, 0)
        if n % self.per_file == 0:
            if t in self._open:
                self._open[t].close()
            path = self.out / f"{t}.{n // self.per_file + 1}.ndjson{'.gz' if self.gz else ''}"
            self._open[t] = gzip.open(path, "wb", compresslevel=1) if self.gz else open(path, "wb")  # noqa: SIM115
            self.files.setdefault(t, []).append((path, 0))
        self._open[t].write(orjson.dumps(res) + b"\n")
        path, c = self.files[t][-1]
        self.files[t][-1] = (path, c + 1)
        self._count[t] = n + 1

    def close(self) -> None:
        for fh in self._open.values():
            fh.close()

    @property
    def total(self) -> int:
        return sum(self._count.values())


class Generator:
    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)
        self.seq = 0
        self.truth: dict[str, str] = {}
        self.practitioners = [f"prac-{i}" for i in range(200)]
        self.orgs = [f"org-{i}" for i in range(25)]
        self.ccsvi_practitioners = self.practitioners[:6]  # a few prescribers account for most CCSVI orders

    def _id(self, prefix: str) -> str:
        self.seq += 1
        return f"{prefix}-{self.seq:x}"

    def ref(self, rtype: str, rid: str) -> dict[str, str]:
        x = self.r.random()
        if x < 0.8:
            return {"reference": f"{rtype}/{rid}"}
        if x < 0.9:
            return {"reference": f"{BASE}/{rtype}/{rid}"}
        return {"reference": f"{rtype}/{rid}/_history/{self.r.randint(1, 4)}"}

    def _date(self, lo: int = 2008, hi: int = 2024) -> str:
        return f"{self.r.randint(lo, hi)}-{self.r.randint(1, 12):02d}-{self.r.randint(1, 28):02d}"

    def _meta(self) -> dict[str, Any]:
        return {"versionId": str(self.r.randint(1, 3)), "lastUpdated": f"{self._date(2019, 2024)}T10:00:00Z"}

    # --- directory resources ---------------------------------------------------------------------------

    def directory(self) -> Iterator[dict[str, Any]]:
        for i, org in enumerate(self.orgs):
            yield {"resourceType": "Organization", "id": org, "meta": self._meta(), "active": True,
                   "name": f"{['St Mary', 'Riverside', 'Northgate', 'Lakeside', 'Hillcrest'][i % 5]} "
                           f"{['Hospital', 'Vascular Clinic', 'Medical Centre', 'Imaging'][i % 4]} {i}"}
        for i, p in enumerate(self.practitioners):
            yield {"resourceType": "Practitioner", "id": p, "meta": self._meta(), "active": True,
                   "name": [{"family": f"Clinician{i}", "given": ["Dr"]}]}
            yield {"resourceType": "PractitionerRole", "id": f"role-{i}", "active": True,
                   "practitioner": {"reference": f"Practitioner/{p}"},
                   "organization": {"reference": f"Organization/{self.orgs[i % len(self.orgs)]}"}}
        for sid, status in (("study-active", "active"), ("study-approved", "approved"),
                            ("study-withdrawn", "withdrawn"), ("study-completed", "completed")):
            yield {"resourceType": "ResearchStudy", "id": sid, "status": status,
                   "title": f"Venous angioplasty in MS ({status})"}

    # --- one patient -----------------------------------------------------------------------------------

    def _patient(self) -> dict[str, Any]:
        r = self.r
        pid = self._id("pat")
        return {"resourceType": "Patient", "id": pid, "meta": self._meta(),
                "identifier": [{"system": "urn:oid:2.16.840.1.113883.19.5", "value": f"MRN{self.seq:09d}"}],
                "gender": r.choice(["female", "male"]),
                "birthDate": f"{r.randint(1935, 2004)}-{r.randint(1, 12):02d}-01"}

    def patient(self) -> Iterator[dict[str, Any]]:
        """The benchmark's own shape: an EHR export, mostly Encounters and Observations; most patients have
        no order at all."""
        r = self.r
        pat = self._patient()
        pid = pat["id"]
        yield pat
        subj = lambda: self.ref("Patient", pid)
        encounters = []
        for _ in range(r.randint(1, 4)):
            eid = self._id("enc")
            encounters.append(eid)
            yield {"resourceType": "Encounter", "id": eid, "meta": self._meta(), "status": "finished",
                   "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                   "subject": subj(), "period": {"start": f"{self._date()}T09:00:00Z"}}
        for _ in range(r.randint(3, 12)):
            code, display, unit, lo, hi = r.choice(VITALS)
            yield {"resourceType": "Observation", "id": self._id("obs"), "meta": self._meta(), "status": "final",
                   "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                             "code": "vital-signs"}]}],
                   "code": {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display},
                   "subject": subj(), "encounter": {"reference": f"Encounter/{r.choice(encounters)}"},
                   "effectiveDateTime": f"{self._date()}T09:30:00Z",
                   "valueQuantity": {"value": round(r.uniform(lo, hi), 1), "unit": unit,
                                     "system": "http://unitsofmeasure.org", "code": unit}}
        for system, code, display in r.sample(COMMON_CONDITIONS, r.randint(0, 2)):
            yield self.condition(pid, _cc(system, code, display))
        yield from self.rare(pid, referral=False)
        for _ in range(r.choice((0, 0, 1, 1, 2))):
            yield self.order(pid, _cc(None, None, r.choice(ORDINARY_REFERRALS)), None)

    def referral_patient(self) -> Iterator[dict[str, Any]]:
        """The referral shape: what a referral or order system exports. Every patient has one or two routine
        orders, about a third have Conditions, no Encounters or Observations; CCSVI orders and their
        look-alikes are as rare as in the default shape."""
        r = self.r
        pat = self._patient()
        pid = pat["id"]
        yield pat
        routine = r.randint(1, 2)
        if r.random() < 0.27:  # with the MS and look-alike patients below: Conditions for about a third
            for system, code, display in r.sample(COMMON_CONDITIONS, r.randint(1, 3)):
                yield self.condition(pid, _cc(system, code, display))
        if (yield from self.rare(pid, referral=True)):
            routine -= 1  # the MS patient's own orders include one routine order
        for _ in range(routine):
            yield self.order(pid, _cc(None, None, r.choice(ROUTINE_ORDERS)), None)

    def rare(self, pid: str, referral: bool) -> collections.abc.Generator[dict[str, Any], None, bool]:
        """The rare patients both shapes share, drawn from one random number: MS (True is returned: their own
        orders include a routine one), and CCSVI look-alikes (dialysis, iliac, carotid), an order that says
        CCSVI without MS on record, a clinically isolated syndrome. Each shape draws the same numbers as ever."""
        r = self.r
        x = r.random()
        if x < 0.06:
            yield from self.ms_patient(pid)
            return True
        if x < 0.065:
            yield from self.dialysis_patient(pid, ms=r.random() < 0.3)
            if referral and r.random() < 0.2:  # the fistula was dilated before: a Procedure no CCSVI rule may count
                yield {"resourceType": "Procedure", "id": self._id("proc"), "status": "completed",
                       "code": _cc(CPT, "36902", "Dialysis circuit angioplasty", "AV fistula angioplasty"),
                       "subject": self.ref("Patient", pid), "performedDateTime": f"{self._date(2012, 2023)}T08:00:00Z"}
        elif x < 0.07:
            yield from self.iliac_patient(pid, ms=r.random() < 0.3)
        elif x < 0.075:
            yield from self.carotid_patient(pid, ms=r.random() < 0.3)
        elif x < 0.0755:  # no MS on record, but the order itself says CCSVI
            yield self.order(pid, _cc(CPT, "37248", "Transluminal balloon angioplasty, vein"), [JUGULAR],
                             reason=_cc(None, None, "CCSVI"), expect="venous-angioplasty-ms")
        elif x < 0.076:
            yield self.condition(pid, _cc(ICD10CM, "G37.9", "Demyelinating disease of central nervous system, unspecified",
                                          "Clinically isolated syndrome"))
            if not referral:
                yield self.order(pid, _cc(None, None, "MRI brain with and without contrast"), None)
        return False

    def condition(self, pid: str, code: dict[str, Any], clinical: str = "active",
                  verification: str = "confirmed") -> dict[str, Any]:
        return {"resourceType": "Condition", "id": self._id("cond"), "meta": self._meta(),
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                               "code": clinical}]},
                "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                                                   "code": verification}]},
                "code": code, "subject": self.ref("Patient", pid), "onsetDateTime": self._date(1990, 2015)}

    def order(self, pid: str, code: dict[str, Any], site: list[dict[str, Any]] | None, *,
              reason: dict[str, Any] | None = None, expect: str = "silent", status: str | None = None,
              years: tuple[int, int] = (2008, 2024), prac: str | None = None,
              study: str | None = None) -> dict[str, Any]:
        r = self.r
        sid = self._id("sr")
        status = status or r.choices(["active", "completed", "draft", "revoked", "on-hold"],
                                     [70, 15, 6, 6, 3])[0]
        prac = prac or r.choice(self.practitioners)
        sr: dict[str, Any] = {"resourceType": "ServiceRequest", "id": sid, "meta": self._meta(), "status": status,
                              "intent": "order", "code": code, "subject": self.ref("Patient", pid),
                              "authoredOn": f"{self._date(*years)}T11:00:00Z",
                              "requester": {"reference": f"Practitioner/{prac}"}}
        if site:
            sr["bodySite"] = site
        if reason:
            sr["reasonCode"] = [reason]
        if study:
            sr["extension"] = [{"url": STUDY_EXT, "valueReference": {"reference": f"ResearchStudy/{study}"}}]
        self.truth[sid] = expect
        return sr

    def ms_patient(self, pid: str) -> Iterator[dict[str, Any]]:
        r = self.r
        system, code, display = r.choice(MS_CODES)
        refuted = r.random() < 0.03
        clinical = r.choices(["active", "remission", "inactive"], [80, 15, 5])[0]
        yield self.condition(pid, _cc(system, code, display), clinical, "refuted" if refuted else "confirmed")
        yield self.order(pid, _cc(None, None, r.choice(["MRI brain with and without contrast",
                                                          "Neurology outpatient referral", "Physiotherapy referral"])),
                         None)
        if r.random() >= 0.05:
            return
        # A CCSVI order: rare, concentrated in 2010-2013, from a few prescribers.
        code_cc, site, expect = r.choice(CCSVI_ORDERS)
        reason = _cc(None, None, "CCSVI") if r.random() < 0.5 else None
        if refuted and reason is None:
            expect = "silent"  # MS refuted and no CCSVI reason on the order: nothing fires
        status = r.choices(["active", "completed", "revoked", "draft", "entered-in-error"], [70, 15, 6, 5, 4])[0]
        if status == "entered-in-error":
            expect = "silent"
        study = None
        enrolled = False
        y = r.random()
        if expect != "silent" and y < 0.12:
            study = r.choice(["study-active", "study-approved"])
            expect = "ccsvi-trial"
        elif expect != "silent" and y < 0.18:
            enrolled = True
            expect = "ccsvi-trial"
        elif y < 0.24:
            study = r.choice(["study-withdrawn", "study-completed"])  # does not exempt
        if enrolled:
            yield {"resourceType": "ResearchSubject", "id": self._id("rs"), "status": "on-study",
                   "study": {"reference": "ResearchStudy/study-active"}, "individual": self.ref("Patient", pid)}
        if r.random() < 0.15:  # had one already
            yield {"resourceType": "Procedure", "id": self._id("proc"), "status": "completed",
                   "code": _cc(CPT, "37248", "Transluminal balloon angioplasty, vein"), "bodySite": [JUGULAR],
                   "subject": self.ref("Patient", pid), "performedDateTime": f"{self._date(2009, 2011)}T08:00:00Z"}
        yield self.order(pid, code_cc, site, expect=expect, status=status, years=(2010, 2013),
                         prac=r.choice(self.ccsvi_practitioners), study=study, reason=reason)

    def dialysis_patient(self, pid: str, ms: bool) -> Iterator[dict[str, Any]]:
        yield self.condition(pid, _cc(ICD10CM, "N18.6", "End stage renal disease"))
        if ms:
            yield self.condition(pid, _cc(SCT, "24700007", "Multiple sclerosis"))
        yield self.order(pid, _cc(CPT, "36902", "Dialysis circuit angioplasty", "AV fistula angioplasty"), None,
                         reason=_cc(ICD10CM, "N18.6", "End stage renal disease"))

    def iliac_patient(self, pid: str, ms: bool) -> Iterator[dict[str, Any]]:
        if ms:
            yield self.condition(pid, _cc(SCT, "24700007", "Multiple sclerosis"))
        yield self.order(pid, _cc(CPT, "37238", "Intravascular stent placement, vein", "Left iliac vein stent"),
                         [ILIAC], reason=_cc(ICD10CM, "I87.1", "Compression of vein", "May-Thurner syndrome"))

    def carotid_patient(self, pid: str, ms: bool) -> Iterator[dict[str, Any]]:
        if ms:
            yield self.condition(pid, _cc(SCT, "24700007", "Multiple sclerosis"))
        yield self.order(pid, _cc(SCT, "418285008", "Angioplasty of blood vessel", "Carotid artery angioplasty"),
                         [CAROTID], reason=_cc(ICD10CM, "I65.2", "Occlusion and stenosis of carotid artery"))


SHAPES = ("default", "referral")


def generate(out: Path, resources: int, seed: int = 7, gz: bool = False, per_file: int = 200_000,
             shape: str = "default") -> dict[str, Any]:
    """Write an export of about ``resources`` resources (stops at the first patient boundary past it), in one
    of SHAPES: ``default`` (an EHR export, mostly Observations) or ``referral`` (every patient has orders)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}: one of {', '.join(SHAPES)}")
    out.mkdir(parents=True, exist_ok=True)
    for old in list(out.glob("*.ndjson")) + list(out.glob("*.ndjson.gz")):
        old.unlink()
    g = Generator(seed)
    w = Writer(out, gz, per_file)
    for res in g.directory():
        w.write(res)
    patient = g.referral_patient if shape == "referral" else g.patient
    while w.total < resources:
        for res in patient():
            w.write(res)
    w.close()
    manifest = {
        "transactionTime": "2025-01-01T00:00:00Z",
        "request": f"{BASE}/$export",
        "requiresAccessToken": True,
        "output": [{"type": t, "url": f"https://ehr.example.org/bulk/{p.name}", "count": c}
                   for t in sorted(w.files) for p, c in w.files[t]],
        "error": [],
    }
    (out / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    (out / ".truth.json").write_bytes(orjson.dumps(g.truth, option=orjson.OPT_SORT_KEYS))
    return {"resources": w.total, "truth": g.truth, "files": sum(len(v) for v in w.files.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--resources", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--gzip", action="store_true")
    ap.add_argument("--per-file", type=int, default=200_000)
    ap.add_argument("--shape", choices=SHAPES, default="default",
                    help="default: an EHR export, mostly Observations; referral: every patient has 1-2 orders")
    a = ap.parse_args()
    info = generate(a.out, a.resources, a.seed, a.gzip, a.per_file, a.shape)
    fired = sum(1 for v in info["truth"].values() if v != "silent")
    print(f"{info['resources']} resources in {info['files']} files; {len(info['truth'])} ServiceRequests, "
          f"{fired} expected to fire")


if __name__ == "__main__":
    main()
