"""One hook call: check the request, complete the prefetch, evaluate, record the decision, answer cards."""

from __future__ import annotations

from typing import Any

from .cards import finalize
from .discovery import ServiceDef
from .errors import Problem, ServiceError
from .feedback_store import DecisionRecord, Store, digest
from .models import HookRequest, OrderContext, validate
from .prefetch import PrefetchCompleter
from .settings import ServiceSettings
from .state import RuleState


def _order_refs(draft_orders: dict[str, Any]) -> dict[str, str]:
    """"Type/id" and bare id -> "Type/id", for every draft order that has an id."""
    refs: dict[str, str] = {}
    for entry in draft_orders.get("entry") or []:
        res = entry["resource"]
        if isinstance(res.get("id"), str):
            ref = f"{res['resourceType']}/{res['id']}"
            refs[ref] = ref
            refs.setdefault(res["id"], ref)
    return refs


def resolve_selections(selections: list[str], refs: dict[str, str]) -> list[str]:
    """Each selection must name a draft order ("Type/id"; a bare id from older clients is accepted)."""
    out = []
    for i, sel in enumerate(selections):
        if sel not in refs:
            raise ServiceError(400, Problem("selection does not name an order in context.draftOrders",
                                            ("context", "selections", i), code="value"))
        out.append(refs[sel])
    return out


class HookHandler:
    def __init__(self, settings: ServiceSettings, rules: RuleState, store: Store,
                 completer: PrefetchCompleter) -> None:
        self._settings = settings
        self._rules = rules
        self._store = store
        self._completer = completer

    async def handle(self, service: ServiceDef, data: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """(response body, log fields: ids and counts only) for the request JSON `data`."""
        req: HookRequest = validate(HookRequest, data)
        info: dict[str, Any] = {"service": service.id, "hookInstance": req.hookInstance}
        if req.hook != service.hook:
            # Not ours to judge (e.g. the spec's patient-view examples): a valid request, nothing to say.
            info["note"] = f"hook {req.hook} not handled by this service"
            return {"cards": []}, info
        if req.fhirAuthorization is not None and not req.fhirServer:
            raise ServiceError(400, Problem("fhirServer is required when fhirAuthorization is given",
                                            ("fhirServer",), code="required"))
        context: OrderContext = validate(OrderContext, req.context, ("context",))
        raw_context: dict[str, Any] = data["context"]
        draft_orders: dict[str, Any] = raw_context["draftOrders"]
        order_refs = _order_refs(draft_orders)
        if service.hook == "order-select":
            if context.selections is None:
                raise ServiceError(400, Problem("order-select requires context.selections",
                                                ("context", "selections"), code="required"))
            raw_context = {**raw_context, "selections": resolve_selections(context.selections, order_refs)}
        elif "selections" in raw_context:  # ignored by order-sign: kept out of the input digest
            raw_context = {k: v for k, v in raw_context.items() if k != "selections"}
        prefetch = await self._completer.complete(req, context, draft_orders)
        normalized = {"hook": req.hook, "context": raw_context, "prefetch": prefetch}
        try:  # the digest of what was evaluated: the same clinical input gives the same digest
            input_digest = digest(normalized)
        except TypeError:  # orjson refuses nesting deeper than 255 levels; no FHIR resource needs that
            raise ServiceError(400, Problem("context or prefetch nests JSON deeper than 255 levels",
                                            code="too-costly")) from None
        active = self._rules.current  # one read: the pack that evaluates is the pack that is recorded
        result = active.evaluator.evaluate_request(normalized)
        for error in result.card_errors:  # that card is left out; the others are answered
            self._rules.card_failed(error.rule_id, error.message)
        findings = result.findings
        cards, records = finalize(findings, self._settings.legacy_delete_resource)
        refs = sorted(set(order_refs.values()))
        await self._store.record_decision(DecisionRecord(  # committed before the cards are answered
            hook_instance=req.hookInstance, service_id=service.id, hook=req.hook,
            patient_id=context.patientId, user_id=context.userId, encounter_id=context.encounterId,
            order_refs=refs, input_digest=input_digest, pack=active.identity,
            issue_paths=[i.path for i in result.issues][:100], cards=records,
        ))
        info.update(cards=len(cards), rules=[r.rule_id for r in records], issues=len(result.issues),
                    orders=result.orders_evaluated, cardErrors=len(result.card_errors))
        return {"cards": cards}, info
