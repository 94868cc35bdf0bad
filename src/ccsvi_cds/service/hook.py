"""One hook call: check the request, complete the prefetch, evaluate, record the decision, answer cards."""

from __future__ import annotations

from typing import Any

from ccsvi_cds.facts.records import draft_order_keys, resolve_selections
from ccsvi_cds.rulepack.model import ServiceSpec

from . import metrics
from .cards import finalize, response_body
from .errors import Problem, ServiceError
from .feedback_store import DecisionRecord, Store, digest
from .models import HookRequest, OrderContext, validate
from .prefetch import PrefetchCompleter
from .settings import ServiceSettings
from .state import RuleState


class HookHandler:
    def __init__(self, settings: ServiceSettings, rules: RuleState, store: Store,
                 completer: PrefetchCompleter) -> None:
        self._settings = settings
        self._rules = rules
        self._store = store
        self._completer = completer

    async def handle(self, service: ServiceSpec, data: Any) -> tuple[bytes, dict[str, Any]]:
        """(response body (JSON), log fields: ids and counts only) for the request JSON `data`."""
        req: HookRequest = validate(HookRequest, data)
        info: dict[str, Any] = {"service": service.id, "hookInstance": req.hookInstance}
        if req.hook != service.hook:
            raise ServiceError(400, Problem(f"this service ({service.id}) answers the {service.hook} hook, not "
                                            f"{req.hook[:40]!r}: post to the service for that hook",
                                            ("hook",), code="not-supported"))
        if req.fhirAuthorization is not None and not req.fhirServer:
            raise ServiceError(400, Problem("fhirServer is required when fhirAuthorization is given",
                                            ("fhirServer",), code="required"))
        context: OrderContext = validate(OrderContext, req.context, ("context",))
        raw_context: dict[str, Any] = data["context"]
        draft_orders: dict[str, Any] = raw_context["draftOrders"]
        order_keys = draft_order_keys(draft_orders)
        if service.hook == "order-select":
            if context.selections is None:
                raise ServiceError(400, Problem("order-select requires context.selections",
                                                ("context", "selections"), code="required"))
            selected, unknown = resolve_selections(context.selections, order_keys)
            if unknown:
                raise ServiceError(400, Problem("selection does not name an order in context.draftOrders",
                                                ("context", "selections", unknown[0]), code="value"))
            raw_context = {**raw_context, "selections": selected}
        elif "selections" in raw_context:  # ignored by order-sign: kept out of the input digest
            raw_context = {k: v for k, v in raw_context.items() if k != "selections"}
        active = self._rules.current  # one read: the pack that evaluates is the pack that is recorded
        prefetch, read = await self._completer.complete(req, context, active, raw_context)
        normalized = {"hook": req.hook, "context": raw_context, "prefetch": prefetch}
        try:  # the digest of what was evaluated: the same clinical input gives the same digest
            input_digest = digest(normalized)
        except TypeError:  # orjson refuses nesting deeper than 255 levels; no FHIR resource needs that
            raise ServiceError(400, Problem("context or prefetch nests JSON deeper than 255 levels",
                                            code="too-costly")) from None
        result = active.evaluator.evaluate_records(read)
        for error in result.card_errors:  # that card is left out; the others are answered
            self._rules.card_failed(error.rule_id, error.message)
        findings = result.findings
        cards, records = finalize(findings, self._settings.legacy_delete_resource)
        metrics.cards_answered((r.rule_id, r.indicator) for r in records)
        refs = sorted(set(order_keys))
        await self._store.record_decision(DecisionRecord(  # committed before the cards are answered
            hook_instance=req.hookInstance, service_id=service.id, hook=req.hook,
            patient_id=context.patientId, user_id=context.userId, encounter_id=context.encounterId,
            order_refs=refs, input_digest=input_digest, pack=active.identity,
            issue_paths=[i.path for i in result.issues][:100], cards=records,
        ))
        info.update(cards=len(cards), rules=[r.rule_id for r in records], issues=len(result.issues),
                    orders=result.orders_evaluated, cardErrors=len(result.card_errors))
        return response_body(cards), info
