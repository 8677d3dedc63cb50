"""Run the store-facing service: `python -m services.pos` (uvicorn, plus the POS history consumer in a thread).

The tills talk to this service only: the POS gateway and return authorization. It has its own
settings, readiness, consumer group and deployable, and imports nothing of the HQ api, so the
dashboard being down, flooded or without Redis never stops a till.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from types import MappingProxyType
from typing import Any

import redis
import yaml
from pydantic import Field, SecretStr, model_validator

from services.pos.app import create_app
from services.pos.gateway.dedupe import Dedupe
from services.pos.gateway.keys import load_keys_file
from services.pos.gateway.routes import PosGateway, producer_settings
from services.pos.gateway.shopify import ShopifyAdapter
from services.pos.gateway.square import SquareAdapter
from services.pos.returns import PosHistory, ReturnDesk
from services.shared import topics
from services.shared.httpguard import RateLimiter, serve
from services.shared.kafka import ConsumeLoop, make_producer
from services.shared.logs import configure_logging
from services.shared.returndecisions import model_card, publish_model_card
from services.shared.riskmodel import load_latest
from services.shared.settings import FileNamedByEnvSource, SettingsError, WebSettings, load_settings, yaml_problem
from services.shared.storeconfig import StoreConfig, load_store_config

_SECRETS_FILE_FIELDS = MappingProxyType({"shopify_secrets": "pos_shopify_secrets", "square_signature_key": "pos_square_signature_key"})


class PosSecretsFile(FileNamedByEnvSource):
    """The POS webhook secrets from a YAML file (SW_POS_SECRETS_FILE, e.g. a mounted Secret):
    `shopify_secrets: {shop domain: secret}` and `square_signature_key`. Environment variables win."""

    env_var = "SW_POS_SECRETS_FILE"

    def values_from(self, path: Path) -> dict[str, Any]:
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise SettingsError(f"invalid setting SW_POS_SECRETS_FILE: cannot read {path} ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise SettingsError(f"invalid setting SW_POS_SECRETS_FILE: {path} is not valid YAML: {yaml_problem(exc)}") from None
        unknown = sorted(set(data) - set(_SECRETS_FILE_FIELDS)) if isinstance(data, dict) else ["(not a mapping)"]
        if unknown:
            raise SettingsError(f"invalid setting SW_POS_SECRETS_FILE: {path} holds {unknown}; it may hold {sorted(_SECRETS_FILE_FIELDS)}")
        return {_SECRETS_FILE_FIELDS[name]: value for name, value in data.items()}


class PosSettings(WebSettings):
    pos_port: int = Field(8081, ge=1, le=65535)
    pos_group_id: str = "sw-pos"
    # The return-risk model (models/risk/return/<version>, `make train-risk`); without one the rules decide.
    pos_models_dir: Path = Path("models")
    # Per-store keys for the JSON and POSLog routes and the till's question (SHA-256 hashes; `shrinkwatch pos-keys new`).
    pos_keys_file: Path | None = None
    # Largest JSON or webhook body, and largest POSLog document (parsed as it streams in).
    pos_max_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    pos_poslog_max_bytes: int = Field(64 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024)
    pos_max_batch: int = Field(500, ge=1, le=10_000)
    # How long a published event id is remembered: the same event sent again within it is a duplicate.
    pos_dedupe_days: float = Field(7.0, gt=0, le=365)
    # Per key: return questions (a till asks a few a minute; a key that asks faster is looking cards up),
    # and gateway requests (a store's back office sends batches).
    pos_assess_per_key_per_s: float = Field(2.0, gt=0, le=10_000)
    pos_assess_burst: int = Field(20, ge=1, le=100_000)
    pos_events_per_key_per_s: float = Field(50.0, gt=0, le=100_000)
    pos_events_burst: int = Field(200, ge=1, le=1_000_000)
    # Read by PosSecretsFile; declared so the variable is typed and listed with the others.
    pos_secrets_file: Path | None = None
    # Shopify webhook secrets by shop domain (JSON: {"shop.myshopify.com": "secret"}).
    pos_shopify_secrets: dict[str, SecretStr] = Field(default_factory=dict)
    # Square: the subscription's signature key, and the notification URL registered with Square.
    pos_square_signature_key: SecretStr | None = None
    pos_square_notification_url: str = Field("", pattern=r"^(https?://\S+)?$")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        return (*super().settings_customise_sources(settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings),
                PosSecretsFile(settings_cls))

    @model_validator(mode="after")
    def _square_signs_its_url(self) -> PosSettings:
        if self.pos_square_signature_key is not None and not self.pos_square_notification_url:
            raise ValueError("SW_POS_SQUARE_NOTIFICATION_URL: Square signs the notification URL with the body; give the URL registered with Square")
        return self

    def pos_gateway(self, config: StoreConfig, producer: Any, client: redis.Redis) -> PosGateway:
        """The POS routes' gateway; fails at start on a secret for a shop that no store names."""
        unmapped = sorted(shop for shop in self.pos_shopify_secrets if config.store_for_pos(shopify_shop=shop) is None)
        if unmapped:
            raise SettingsError(f"invalid setting SW_POS_SHOPIFY_SECRETS: no store's pos.shopify_shop_domain is {unmapped}")
        return PosGateway(config=config, producer=producer, dedupe=Dedupe(client, int(self.pos_dedupe_days * 86400)),
                          keys=load_keys_file(self.pos_keys_file, {s.id for s in config.stores}),
                          shopify=ShopifyAdapter(config, self.pos_shopify_secrets),
                          square=SquareAdapter(config, self.pos_square_signature_key, self.pos_square_notification_url),
                          max_bytes=self.pos_max_bytes, poslog_max_bytes=self.pos_poslog_max_bytes, max_batch=self.pos_max_batch,
                          max_clock_skew_s=self.max_clock_skew_s, limiter=RateLimiter(self.pos_events_per_key_per_s, self.pos_events_burst))


def main(argv: list[str] | None = None) -> int:
    settings = load_settings(PosSettings)
    log = configure_logging("pos", settings.log_level)
    config = load_store_config(settings.store_config)
    redis_client = redis.Redis.from_url(settings.redis_url.get_secret_value(), socket_timeout=5)
    producer = make_producer(settings.kafka_bootstrap_servers, **producer_settings())
    stop = threading.Event()
    # Return authorization: its own consumer group projects sw.pos.v1 into Redis for the till's question.
    history = PosHistory(redis_client, config)
    history_loop = ConsumeLoop("pos", settings.kafka_bootstrap_servers, f"{settings.pos_group_id}-history", [topics.POS], history.handle,
                               dead_letters=(), batch_size=256, stop_event=stop)
    returns_model = load_latest(settings.pos_models_dir, "return")
    if returns_model.model is None:
        log.warning("no return-risk model, the rules decide: %s", returns_model.error)
    for warning in returns_model.warnings:
        log.warning("return-risk model: %s", warning)
    desk = ReturnDesk(config, history, producer, returns_model)
    try:
        publish_model_card(redis_client, model_card(returns_model, "return"))
    except redis.RedisError as exc:
        log.warning("model card not published for the dashboard (Redis: %s); the tills are not affected", exc)

    def ready() -> bool:
        try:
            return history_loop.ready.is_set() and history_loop.failure is None and bool(redis_client.ping())
        except redis.RedisError:
            return False

    consumer = threading.Thread(target=history_loop.run, name="pos-history-consumer")
    consumer.start()
    gateway = settings.pos_gateway(config, producer, redis_client)
    app = create_app(gateway, desk, ready, RateLimiter(settings.pos_assess_per_key_per_s, settings.pos_assess_burst))
    signed_shops = {shop.lower() for shop in settings.pos_shopify_secrets}
    unsigned = [s.pos.shopify_shop_domain for s in config.stores if s.pos.shopify_shop_domain and s.pos.shopify_shop_domain not in signed_shops]
    if unsigned:
        log.warning("Shopify shops without a webhook secret: their webhooks are refused (401)", extra={"shops": unsigned})
    if not len(gateway.keys):
        log.warning("no POS keys (SW_POS_KEYS_FILE): every keyed route refuses every request (401)")
    # SIGTERM stops serving first; then the consumer stops and the producer flushes.
    serve(app, "pos", settings, settings.pos_port, ready, log, pos_keys=len(gateway.keys))
    stop.set()
    consumer.join(15)
    producer.flush(10)
    failed = history_loop.failure is not None
    log.info("stopped", extra={"failed": failed})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
