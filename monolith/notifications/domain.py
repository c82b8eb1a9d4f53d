"""What a notification is and what each one says. Pure Python."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum


class Kind(enum.StrEnum):
    WELCOME = "welcome"
    INVOICE_ISSUED = "invoice_issued"
    RECEIPT = "receipt"
    SUBSCRIPTION_CANCELLED = "subscription_cancelled"


class DeliveryStatus(enum.StrEnum):
    SENT = "sent"
    FAILED = "failed"


@dataclasses.dataclass
class Notification:
    id: str
    user_id: str
    kind: Kind
    recipient: str
    subject: str
    body: str
    status: DeliveryStatus
    event_id: str
    created_at: dt.datetime


def format_money(amount_minor: int, currency: str) -> str:
    """2500 EUR -> '25.00 EUR' (two decimals; enough for the currencies we bill in)."""
    units, cents = divmod(amount_minor, 100)
    return f"{units}.{cents:02d} {currency}"


def welcome(name: str) -> tuple[str, str]:
    return "Welcome aboard", f"Hello {name}, your account is ready."


def invoice_issued(
    amount_minor: int, currency: str, period_start: str, period_end: str
) -> tuple[str, str]:
    return (
        "Your new invoice",
        f"An invoice of {format_money(amount_minor, currency)} for {period_start} to "
        f"{period_end} is ready.",
    )


def receipt(amount_minor: int, currency: str) -> tuple[str, str]:
    return (
        "Payment received",
        f"Thank you: your invoice of {format_money(amount_minor, currency)} is paid.",
    )


def subscription_cancelled(reason: str) -> tuple[str, str]:
    return "Subscription cancelled", f"Your subscription was cancelled ({reason})."
