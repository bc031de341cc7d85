"""Delivery events of queued messages to each account's webhook (``spec.delivery.webhook``).

The outbox reports a message's state after every recorded attempt; this turns
it into a Standard Webhooks event (``message.sent``, ``message.deferred`` or
``message.failed``, the data being the status API's form of the message) for
the account's notifier target. Targets come from the configuration: the URL
from the spec, the signing key from the account's resolved credentials (the
operator, or standalone mode, read it from the Secret). They are rebuilt when
the configuration's revision moves, at most once per event or housekeeping
tick, so a push of 10,000 accounts costs nothing until an event is due.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from ..queue import MessageState, QueuedMessage
from ..queue.webhooks import MESSAGE_DEFERRED, MESSAGE_FAILED, MESSAGE_SENT, WebhookNotifier, WebhookTarget, parse_secret
from ..queue.wire import message_json
from ..relay.accounts import Account, AccountRegistry

EVENT_TYPES = {MessageState.SENT: MESSAGE_SENT, MessageState.DEFERRED: MESSAGE_DEFERRED, MessageState.FAILED: MESSAGE_FAILED}


def target_of(account: Account) -> WebhookTarget | None:
    """The account's webhook target, or None (no webhook, or no usable signing key: the operator reports that)."""
    webhook = account.config.spec.delivery.webhook
    secret = account.config.credentials.webhook_secret
    if webhook is None or secret is None:
        return None
    try:
        return WebhookTarget(webhook.url, parse_secret(secret.get_secret_value()))
    except ValueError:
        return None


class WebhookEvents:
    """The outbox's ``EventSink``: one event per recorded attempt, to the account's current target."""

    def __init__(self, notifier: WebhookNotifier, registry: AccountRegistry) -> None:
        self.notifier = notifier
        self.registry = registry
        self._revision: int | None = None

    def refresh(self) -> None:
        """Give the notifier the targets of the configuration in force, if it changed since the last call."""
        if self._revision == self.registry.revision:
            return
        targets = {}
        for key, account in self.registry.accounts().items():
            if account.config.spec.delivery.webhook is not None:
                target = target_of(account)
                if target is not None:
                    targets[key] = target
        self.notifier.configure(targets)
        self._revision = self.registry.revision

    def message_event(self, message: QueuedMessage) -> None:
        event_type = EVENT_TYPES.get(message.state)
        if event_type is None:
            return
        self.refresh()
        if self.notifier.has_target(message.account):
            self.notifier.notify(message.account, event_type, message_json(message))


class WebhookMetrics:
    """The notifier's ``WebhookObserver`` as Prometheus counters (reasons are a fixed set: safe labels)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._delivered = Counter(
            "mailgate_webhook_deliveries", "Webhook events the receiver accepted (2xx).", ["account", "type"], registry=registry
        )
        self._failed = Counter(
            "mailgate_webhook_failures",
            "Webhook events given up: http_<status>, retries_exhausted, internal_error.",
            ["account", "type", "reason"],
            registry=registry,
        )
        self._dropped = Counter(
            "mailgate_webhook_dropped",
            "Webhook events dropped before delivery: queue_full, account_queue_full, no_target, target_gone, "
            "unserializable, shutdown.",
            ["account", "reason"],
            registry=registry,
        )
        self._retried = Counter("mailgate_webhook_retries", "Webhook attempts retried.", ["account"], registry=registry)

    def delivered(self, account: str, event_type: str) -> None:
        self._delivered.labels(account, event_type).inc()

    def failed(self, account: str, event_type: str, reason: str) -> None:
        self._failed.labels(account, event_type, reason).inc()

    def dropped(self, account: str, reason: str) -> None:
        self._dropped.labels(account, reason).inc()

    def retried(self, account: str) -> None:
        self._retried.labels(account).inc()
