"""Run the api: `python -m services.api` (uvicorn, plus the alerts and verdicts consumer in a thread).

`python -m services.api rebuild [--clear]` refills the alert store in Redis from sw.alerts.v1 and
sw.feedback.v1 (the system of record) and exits.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import redis
import uvicorn
import yaml
from confluent_kafka import Producer
from pydantic import Field, SecretStr, model_validator

from services.api.alerts import AlertStore, rebuild
from services.api.app import create_app
from services.api.audit import AuditLog
from services.api.auth import Directory, load_users_file
from services.api.hq import Hq
from services.api.posgateway.dedupe import Dedupe
from services.api.posgateway.keys import load_keys_file
from services.api.posgateway.routes import PosGateway
from services.api.posgateway.shopify import ShopifyAdapter
from services.api.posgateway.square import SquareAdapter
from services.api.returns import PosHistory, ReturnDesk
from services.shared import topics
from services.shared.kafka import ConsumeLoop, make_producer
from services.shared.logs import configure_logging, logging_dict_config
from services.shared.riskmodel import load_latest
from services.shared.settings import EvidenceSettings, FileNamedByEnvSource, SettingsError, load_settings
from services.shared.storeconfig import StoreConfig, load_store_config


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after shutting down, which would skip our flush; stop and return instead."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


_SECRETS_FILE_FIELDS = MappingProxyType({"shopify_secrets": "api_shopify_secrets", "square_signature_key": "api_square_signature_key"})


class PosSecretsFile(FileNamedByEnvSource):
    """The POS webhook secrets from a YAML file (SW_API_POS_SECRETS_FILE, e.g. a mounted Secret):
    `shopify_secrets: {shop domain: secret}` and `square_signature_key`. Environment variables win."""

    env_var = "SW_API_POS_SECRETS_FILE"

    def values_from(self, path: Path) -> dict[str, Any]:
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SettingsError(f"invalid setting SW_API_POS_SECRETS_FILE: cannot read {path} ({exc})") from None
        unknown = sorted(set(data) - set(_SECRETS_FILE_FIELDS)) if isinstance(data, dict) else ["(not a mapping)"]
        if unknown:
            raise SettingsError(f"invalid setting SW_API_POS_SECRETS_FILE: {path} holds {unknown}; it may hold {sorted(_SECRETS_FILE_FIELDS)}")
        return {_SECRETS_FILE_FIELDS[name]: value for name, value in data.items()}


class ApiSettings(EvidenceSettings):
    api_port: int = 8080
    api_group_id: str = "sw-api"
    # The api keeps this much alert history in Redis for queries; sw.alerts.v1 is the system of record.
    api_alert_retention_days: float = Field(30.0, gt=0)
    # The chain's users (argon2 hashes only, see `shrinkwatch users hash`); admins add more through the API.
    api_users_file: Path | None = None
    api_session_ttl_s: int = Field(12 * 3600, ge=60, le=30 * 86400)
    # Send the session cookie over HTTPS only: true wherever the api is behind TLS (production).
    api_cookie_secure: bool = False
    # The live feed sends a keep-alive this often and checks that its session is still valid.
    api_live_ping_s: float = Field(15.0, gt=0, le=300)
    # The learned-risk models (models/risk/<kind>/<version>, `make train-risk`); without one the rules decide.
    api_models_dir: Path = Path("models")
    # POS gateway. Per-store keys for the JSON and POSLog routes (SHA-256 hashes; `shrinkwatch pos-keys new`).
    api_pos_keys_file: Path | None = None
    # Largest JSON or webhook body, and largest POSLog document (parsed as it streams in).
    api_pos_max_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    api_pos_poslog_max_bytes: int = Field(64 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024)
    api_pos_max_batch: int = Field(500, ge=1, le=10_000)
    # How long a published event id is remembered: the same event sent again within it is a duplicate.
    api_pos_dedupe_days: float = Field(7.0, gt=0, le=365)
    # Read by PosSecretsFile; declared so the variable is typed and listed with the others.
    api_pos_secrets_file: Path | None = None
    # Shopify webhook secrets by shop domain (JSON: {"shop.myshopify.com": "secret"}).
    api_shopify_secrets: dict[str, SecretStr] = Field(default_factory=dict)
    # Square: the subscription's signature key, and the notification URL registered with Square.
    api_square_signature_key: SecretStr | None = None
    api_square_notification_url: str = Field("", pattern=r"^(https?://\S+)?$")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        return (*super().settings_customise_sources(settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings),
                PosSecretsFile(settings_cls))

    @model_validator(mode="after")
    def _square_signs_its_url(self) -> ApiSettings:
        if self.api_square_signature_key is not None and not self.api_square_notification_url:
            raise ValueError("SW_API_SQUARE_NOTIFICATION_URL: Square signs the notification URL with the body; give the URL registered with Square")
        return self

    def pos_gateway(self, config: StoreConfig, producer: Producer, client: redis.Redis) -> PosGateway:
        """The POS routes' gateway; fails at start on a secret for a shop that no store names."""
        unmapped = sorted(shop for shop in self.api_shopify_secrets if config.store_for_pos(shopify_shop=shop) is None)
        if unmapped:
            raise SettingsError(f"invalid setting SW_API_SHOPIFY_SECRETS: no store's pos.shopify_shop_domain is {unmapped}")
        return PosGateway(config=config, producer=producer, dedupe=Dedupe(client, int(self.api_pos_dedupe_days * 86400)),
                          keys=load_keys_file(self.api_pos_keys_file, {s.id for s in config.stores}),
                          shopify=ShopifyAdapter(config, self.api_shopify_secrets),
                          square=SquareAdapter(config, self.api_square_signature_key, self.api_square_notification_url),
                          max_bytes=self.api_pos_max_bytes, poslog_max_bytes=self.api_pos_poslog_max_bytes, max_batch=self.api_pos_max_batch,
                          max_clock_skew_s=self.max_clock_skew_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.api")
    parser.add_argument("command", nargs="?", choices=["serve", "rebuild"], default="serve")
    parser.add_argument("--clear", action="store_true", help="rebuild: forget every alert and verdict in Redis first")
    args = parser.parse_args(argv)
    settings = load_settings(ApiSettings)
    log = configure_logging("api", settings.log_level)
    config = load_store_config(settings.store_config)
    redis_client = redis.Redis.from_url(settings.redis_url.get_secret_value(), socket_timeout=5)
    triage = load_latest(settings.api_models_dir, "triage") if args.command == "serve" else None
    store = AlertStore(redis_client, config, settings.api_alert_retention_days, triage=triage.model if triage else None)
    if args.command == "rebuild":
        if args.clear:
            log.info("cleared alert store", extra={"keys": store.clear()})
        counts = rebuild(store, settings.kafka_bootstrap_servers, echo=lambda line: log.info(line))
        log.info("rebuilt alert store", extra=counts)
        return 0
    producer = make_producer(settings.kafka_bootstrap_servers)
    users = load_users_file(settings.api_users_file, {s.id for s in config.stores})
    evidence = settings.evidence_store()
    hq = Hq(config=config, alerts=store, directory=Directory(redis_client, users, settings.api_session_ttl_s), audit=AuditLog(redis_client),
            evidence=evidence, producer=producer, redis=redis_client, redis_url=settings.redis_url.get_secret_value(), cookie_secure=settings.api_cookie_secure,
            ping_s=settings.api_live_ping_s)
    stop = threading.Event()
    # The api reads what others own: poison alerts and verdicts are passed over, not dead-lettered.
    loop = ConsumeLoop("api", settings.kafka_bootstrap_servers, settings.api_group_id, [topics.ALERTS, topics.FEEDBACK], store.handle,
                       dead_letters=(), stop_event=stop)
    # Return authorization: its own consumer group projects sw.pos.v1 into Redis for the till's question.
    history = PosHistory(redis_client, config)
    history_loop = ConsumeLoop("api", settings.kafka_bootstrap_servers, f"{settings.api_group_id}-history", [topics.POS], history.handle,
                               dead_letters=(), batch_size=256, stop_event=stop)
    returns_model = load_latest(settings.api_models_dir, "return")
    hq.returns = ReturnDesk(config, history, producer, returns_model)
    for kind, result in (("return", returns_model), ("triage", triage)):
        if result is None:
            continue
        if result.model is None:
            log.warning("no risk model: %s", result.error, extra={"kind": kind})
        for warning in result.warnings:
            log.warning("risk model: %s", warning, extra={"kind": kind})
    loops = (loop, history_loop)

    def ready() -> bool:
        try:
            return all(one.ready.is_set() and one.failure is None for one in loops) and bool(redis_client.ping())
        except redis.RedisError:
            return False

    consumers = [threading.Thread(target=loop.run, name="alerts-consumer"), threading.Thread(target=history_loop.run, name="pos-history-consumer")]
    for consumer in consumers:
        consumer.start()
    pos = settings.pos_gateway(config, producer, redis_client)
    app = create_app(hq, ready, pos)
    signed_shops = {shop.lower() for shop in settings.api_shopify_secrets}
    unsigned = [s.pos.shopify_shop_domain for s in config.stores if s.pos.shopify_shop_domain and s.pos.shopify_shop_domain not in signed_shops]
    if unsigned:
        log.warning("Shopify shops without a webhook secret: their webhooks are refused (401)", extra={"shops": unsigned})
    if not len(pos.keys):
        log.warning("no POS keys (SW_API_POS_KEYS_FILE): /v1/pos/events and /v1/pos/poslog refuse every request (401)")
    log.info("started", extra={"port": settings.api_port, "users_from_file": len(users), "pos_keys": len(pos.keys)})
    # SIGTERM stops serving first; then the consumer stops and the producer flushes.
    # Live feeds (SSE) never close by themselves: give open requests 3 s, then end them.
    server_config = uvicorn.Config(app, host=settings.http_host, port=settings.api_port, log_config=logging_dict_config("api", settings.log_level), access_log=False,
                                   timeout_graceful_shutdown=3)
    _Server(server_config).run()
    stop.set()
    for consumer in consumers:
        consumer.join(15)
    producer.flush(10)
    failed = any(one.failure is not None for one in loops)
    log.info("stopped", extra={"failed": failed})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
