"""The return decisions made at the tills, as the dashboard reads them: kept in Redis by the
store-facing service (services/pos) and read by the HQ api, which never imports it.

Each store has its own bounded list: a busy store, or a store key sending thousands of returns,
pushes only that store's oldest decisions out (sw.returns.v1 keeps them all). The return-risk
model the tills use is described here too (its card), so HQ shows the model that decides.
"""

from __future__ import annotations

import json
from typing import Any, cast

import redis

from services.shared.contracts.return_decision_pb2 import ReturnDecision, ReturnOutcome
from services.shared.riskmodel import LoadResult
from services.shared.serde import to_json_dict

# Per store: how many of its latest decisions the dashboard can list.
DECISIONS_KEPT = 10_000
MODEL_CARD_KEY = "sw:returns:model"


def store_decisions_key(store_id: str) -> str:
    """The store's decision ids by time."""
    return f"sw:returns:recent:{store_id}"


def store_decisions_hash(store_id: str) -> str:
    """The store's decisions by id."""
    return f"sw:returns:decisions:{store_id}"


def view(decision: ReturnDecision) -> dict[str, Any]:
    """The decision as the dashboard gets it (outcome as a word; the features it was scored on)."""
    data = to_json_dict(decision)
    data["outcome"] = ReturnOutcome.Name(decision.outcome).removeprefix("RETURN_OUTCOME_").lower()
    return data


def keep_decision(client: redis.Redis, decision: ReturnDecision, kept: int = DECISIONS_KEPT) -> None:
    """The decision by id, listed by time in its store's list; the store's oldest fall off, and only its own."""
    store = decision.store_id
    pipe = client.pipeline(transaction=False)
    pipe.hset(store_decisions_hash(store), decision.decision_id, json.dumps(view(decision)))
    pipe.zadd(store_decisions_key(store), {decision.decision_id: decision.decided_time_ms})
    pipe.execute()
    overflow = client.zcard(store_decisions_key(store)) - kept
    if overflow > 0:
        old = cast(list, client.zrange(store_decisions_key(store), 0, overflow - 1))
        pipe = client.pipeline(transaction=False)
        pipe.zrem(store_decisions_key(store), *old)
        pipe.hdel(store_decisions_hash(store), *old)
        pipe.execute()


def recent_decisions(client: redis.Redis, stores: set[str], limit: int, outcome: str | None = None) -> list[dict]:
    """Newest first, from the given stores' own lists (an outcome filter reads further back)."""
    depth = limit if outcome is None else min(DECISIONS_KEPT, limit * 20)
    ordered = sorted(stores)
    pipe = client.pipeline(transaction=False)
    for store_id in ordered:
        pipe.zrevrange(store_decisions_key(store_id), 0, depth - 1, withscores=True)
    scored = sorted(((score, store_id, decision_id) for store_id, reply in zip(ordered, pipe.execute(), strict=True)
                     for decision_id, score in reply), reverse=True)
    pipe = client.pipeline(transaction=False)
    for _, store_id, decision_id in scored:
        pipe.hget(store_decisions_hash(store_id), decision_id)
    out = []
    for value in pipe.execute() if scored else []:
        if value is None:
            continue
        item = json.loads(value)
        if outcome is None or item["outcome"] == outcome:
            out.append(item)
            if len(out) >= limit:
                break
    return out


def model_card(result: LoadResult, kind: str) -> dict[str, Any]:
    """What the dashboard shows of a model: version, metrics, thresholds, importances, or why there is none."""
    if result.model is None:
        return {"kind": kind, "loaded": False, "warning": result.error}
    metadata = result.model.metadata
    return {"kind": kind, "loaded": True, "version": result.model.version, "warning": "; ".join(result.warnings),
            "created": metadata.get("created"), "features": [f.get("name") if isinstance(f, dict) else f for f in metadata.get("features", [])],
            "thresholds": metadata.get("thresholds", []), "metrics": metadata.get("metrics", {}), "importances": metadata.get("importances", {}),
            "data": metadata.get("data", {}), "split": metadata.get("split", {})}


def publish_model_card(client: redis.Redis, card: dict[str, Any]) -> None:
    """The store-facing service says, at start, which return-risk model its tills are scored by."""
    client.set(MODEL_CARD_KEY, json.dumps(card))


def read_model_card(client: redis.Redis) -> dict[str, Any]:
    raw = client.get(MODEL_CARD_KEY)
    if raw is None:
        return {"kind": "return", "loaded": False, "warning": "the store-facing service (pos) has not started yet: no model reported"}
    return cast(dict, json.loads(cast(bytes, raw)))
