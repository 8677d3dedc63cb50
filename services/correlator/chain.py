"""The store config as the correlator looks things up per message: by camera, by register.

Built once per config version (at start and on every accepted edit), so the per-frame path does
dictionary lookups rather than walking the chain, and rule settings are merged once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.correlator.rules import CameraContext, RegisterContext, StoreContext, followed_zones, handover_edges
from services.shared.rulesconfig import RulesConfig
from services.shared.storeconfig import StoreConfig


def register_key(store_id: str, register_id: str) -> str:
    return f"{store_id}:{register_id}"


@dataclass
class ChainIndex:
    config: StoreConfig
    # camera id -> the registers it watches, as (store:register, their context)
    registers_by_camera: dict[str, list[tuple[str, RegisterContext]]] = field(default_factory=dict)
    registers: dict[str, RegisterContext] = field(default_factory=dict)
    cameras: dict[str, CameraContext] = field(default_factory=dict)
    store_rules: dict[str, RulesConfig] = field(default_factory=dict)
    # store id -> its journeys' context (checkout bypass, repeat visits, handovers)
    stores: dict[str, StoreContext] = field(default_factory=dict)
    camera_of_register: dict[str, str] = field(default_factory=dict)
    employee_tokens: dict[str, set[str]] = field(default_factory=dict)

    @classmethod
    def build(cls, config: StoreConfig) -> ChainIndex:
        index = cls(config, employee_tokens=config.employee_tokens())
        for store in config.stores:
            index.store_rules[store.id] = config.rules_for(store.id)
            for register in store.registers:
                key = register_key(store.id, register.id)
                index.registers[key] = RegisterContext(
                    store.id, register.id, store.timezone, tuple(register.customer_zones), tuple(register.merchandise_zones),
                    config.rules_for(store.id, register_id=register.id),
                )
                index.registers_by_camera.setdefault(register.camera, []).append((key, index.registers[key]))
                index.camera_of_register[key] = register.camera
            for camera in store.cameras:
                index.cameras[camera.id] = CameraContext(
                    store.id, camera.id, store.timezone, store.opening_hours, tuple(store.holidays),
                    {z.id: z.kind for z in camera.zones},
                    {z.id: config.rules_for(store.id, camera_id=camera.id, zone_id=z.id) for z in camera.zones},
                    index.store_rules[store.id],
                    shifts=tuple(s for s in store.staff_shifts if not s.cameras or camera.id in s.cameras),
                    followed=followed_zones({z.id: z.kind for z in camera.zones}, store.handovers, camera.id, index.store_rules[store.id]),
                    door_lines=index.store_rules[store.id].checkout_bypass.enabled and any(line.kind == "door" for line in camera.lines),
                )
            index.stores[store.id] = StoreContext(
                store.id, store.timezone, index.store_rules[store.id], handover_edges(store.handovers),
                till_cameras=frozenset(c.id for c in store.cameras if any(z.kind == "counter_customer" for z in c.zones)),
                reporting=frozenset(c.id for c in store.cameras if index.cameras[c.id].followed or index.cameras[c.id].door_lines),
            )
        return index

    def rules_at(self, store_id: str) -> RulesConfig:
        """A store's rules; the chain's own for a store the config does not (yet) know."""
        known = self.store_rules.get(store_id)
        return known if known is not None else RulesConfig.model_validate(self.config.rules)
