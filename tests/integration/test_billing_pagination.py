"""Billing's lists, paged by cursor and by number, on SQLite and PostgreSQL alike:
every row exactly once and in order, inserts while paging, refused cursors."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from monolith.app import system_of
from monolith.billing.seed import seed_billing
from servicekit.ids import new_id
from tests.support.api import create_plan, ok, open_invoice, register_user, subscribe

#: Each list, and whether it is newest first.
LISTS = {"/billing/invoices": True, "/billing/subscriptions": False, "/billing/plans": False}


def seed(monolith: Flask, *, users: int, invoices: int) -> None:
    """Demo data: its invoices share timestamps (the first of each month), so
    that the order's tie-break on ``id`` is exercised too."""
    args = ["seed", "--users", str(users), "--invoices", str(invoices)]
    result = monolith.test_cli_runner().invoke(args=args)
    assert result.exit_code == 0, result.output


def backdated_invoices(monolith: Flask, count: int) -> None:
    """Invoices dated like the seed's first ones: they land among the oldest rows."""
    with system_of(monolith).sessions() as session, session.begin():
        seed_billing(session, [new_id(), new_id()], count)


def pagination(response: Any) -> dict[str, Any]:
    return dict(json.loads(response.headers["X-Pagination"]))


def pages(client: FlaskClient, path: str, **params: Any) -> Iterator[list[dict[str, Any]]]:
    """Each page of a list, following ``next_cursor`` until ``has_more`` is false."""
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = client.get(path, query_string=query)
        items = ok(response)
        meta = pagination(response)
        assert "total" not in meta, "nothing is counted unless asked"
        assert len(items) <= params["page_size"]
        yield items
        if not meta["has_more"]:
            assert "next_cursor" not in meta
            return
        assert len(items) == params["page_size"]
        cursor = meta["next_cursor"]


def order_key(item: dict[str, Any]) -> tuple[dt.datetime, str]:
    return dt.datetime.fromisoformat(item["created_at"]), item["id"]


def everything(client: FlaskClient, path: str) -> list[str]:
    """The ids of a whole (small) list, in one page."""
    response = client.get(path, query_string={"page_size": 100, "include_total": "true"})
    items = ok(response)
    assert pagination(response)["total"] == len(items) < 100
    return [item["id"] for item in items]


@pytest.mark.parametrize("path", LISTS)
def test_paging_by_cursor_returns_every_row_once_in_order(monolith, client, path):
    seed(monolith, users=23, invoices=61)
    for _ in range(12):  # the seed makes three plans: make the plans span pages too
        create_plan(client)

    walked = [item for page in pages(client, path, page_size=7) for item in page]

    ids = [item["id"] for item in walked]
    assert len(ids) == len(set(ids)), "no row twice"
    assert sorted(ids) == sorted(everything(client, path)), "every row"
    keys = [order_key(item) for item in walked]
    assert keys == sorted(keys, reverse=LISTS[path]), "in the list's order"
    assert len(walked) > 7 * 2


def test_ties_on_created_at_are_ordered_by_id(monolith, client):
    seed(monolith, users=12, invoices=24)  # twelve invoices per timestamp

    walked = [item for page in pages(client, "/billing/invoices", page_size=5) for item in page]

    assert Counter(item["created_at"] for item in walked).most_common(1)[0][1] == 12
    assert [order_key(i) for i in walked] == sorted(map(order_key, walked), reverse=True)


def test_inserts_while_paging_neither_skip_nor_repeat_a_row(monolith, client):
    seed(monolith, users=5, invoices=60)
    before = everything(client, "/billing/invoices")

    seen: list[str] = []
    for page in pages(client, "/billing/invoices", page_size=8):
        seen += [item["id"] for item in page]
        open_invoice(client)  # newer than everything: lands on a page already read
        backdated_invoices(monolith, 4)  # lands among the rows still to come

    repeated = [item_id for item_id, times in Counter(seen).items() if times > 1]
    assert not repeated
    assert set(before) <= set(seen), "no row that existed when paging began is skipped"


def test_the_same_inserts_make_page_numbers_repeat_rows(monolith, client):
    """The fault the cursor exists to avoid, planted: page numbers shift."""
    seed(monolith, users=5, invoices=30)

    seen: list[str] = []
    for number in range(1, 5):
        page = ok(client.get("/billing/invoices", query_string={"page": number, "page_size": 8}))
        seen += [item["id"] for item in page]
        open_invoice(client)

    assert len(seen) != len(set(seen))


def test_page_numbers_still_work_and_name_the_next_cursor(monolith, client):
    seed(monolith, users=3, invoices=25)

    first = client.get("/billing/invoices?page=1&page_size=10")
    third = client.get("/billing/invoices?page=3&page_size=10")
    counted = client.get("/billing/invoices?page=2&page_size=10&include_total=true")
    after_first = client.get(
        "/billing/invoices",
        query_string={"page_size": 10, "cursor": pagination(first)["next_cursor"]},
    )

    assert pagination(first) == {
        "page_size": 10,
        "has_more": True,
        "next_cursor": pagination(first)["next_cursor"],
        "page": 1,
        "first_page": 1,
        "next_page": 2,
    }
    assert len(ok(third)) == 5
    assert pagination(third) == {
        "page_size": 10,
        "has_more": False,
        "page": 3,
        "first_page": 1,
        "previous_page": 2,
    }
    assert ok(after_first) == ok(client.get("/billing/invoices?page=2&page_size=10"))
    assert {k: pagination(counted)[k] for k in ("total", "total_pages", "last_page")} == {
        "total": 25,
        "total_pages": 3,
        "last_page": 3,
    }


def test_an_empty_list_has_no_next_page(client):
    response = client.get("/billing/invoices?include_total=true")

    assert ok(response) == []
    assert pagination(response) == {
        "page_size": 10,
        "has_more": False,
        "page": 1,
        "first_page": 1,
        "total": 0,
        "total_pages": 0,
    }


def test_filters_page_by_cursor_too(client):
    user = register_user(client)
    plans = [create_plan(client) for _ in range(5)]
    mine = [subscribe(client, user, plan)["id"] for plan in plans]
    subscribe(client, register_user(client), plans[0])

    walked = [
        item["id"]
        for page in pages(client, "/billing/subscriptions", page_size=2, user_id=user["id"])
        for item in page
    ]

    assert walked == mine


def cursor_of(client: FlaskClient, path: str, **params: Any) -> str:
    return str(pagination(client.get(path, query_string={"page_size": 1, **params}))["next_cursor"])


def tampered(cursor: str) -> str:
    """The same cursor with one byte of its payload changed."""
    raw = bytearray(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    raw[len(raw) // 3] ^= 0x01
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


def forged(payload: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode() + b"\0" * 8).decode()


def test_a_bad_cursor_is_refused_with_the_error_envelope(monolith, client):
    seed(monolith, users=3, invoices=6)
    good = cursor_of(client, "/billing/invoices")
    paid = cursor_of(client, "/billing/invoices", status="paid")
    of_plans = cursor_of(client, "/billing/plans")
    bad = {
        "garbage": "not a cursor",
        "not base64": "%%%%",
        "too short": "AA",
        "truncated": good[:-6],
        "tampered": tampered(good),
        "forged without the check": forged([1, "x", "2026-01-01T00:00:00+00:00", "y"]),
        "too long": "A" * 300,
        "empty": "",
        "other filters": paid,
        "another list": of_plans,
    }

    assert ok(client.get("/billing/invoices", query_string={"cursor": good})), "the good one works"
    for name, cursor in bad.items():
        response = client.get("/billing/invoices", query_string={"cursor": cursor})
        body = response.get_json()
        assert (response.status_code, body["code"]) == (422, "validation_failed"), name
        assert "cursor" in body["fields"]["query"], name
    other = client.get("/billing/invoices", query_string={"cursor": paid}).get_json()
    assert "another list or other filters" in other["message"]


def test_page_and_cursor_together_are_refused(monolith, client):
    seed(monolith, users=2, invoices=4)
    cursor = cursor_of(client, "/billing/invoices")

    response = client.get("/billing/invoices", query_string={"cursor": cursor, "page": 2})

    assert response.status_code == 422
    assert "either cursor or page" in response.get_json()["message"]


def test_every_list_reads_an_index_in_order_and_never_sorts(monolith, client):
    """The ORDER BY of each list, with each filter, matches an index: the
    database reads the page off it instead of sorting the matching rows.

    PostgreSQL is told to avoid sorts and sequential scans, so the plan shows
    whether an ordered index *can* serve the query (on a small table it would
    rightly prefer to sort); SQLite says when it sorts ("TEMP B-TREE").
    A subscription's invoices (one per period) and a user's subscriptions are
    few enough to sort, so those two filters have no such index.
    """
    seed(monolith, users=3, invoices=9)
    user_id = ok(client.get("/billing/invoices?page_size=1"))[0]["user_id"]
    engine = system_of(monolith).engine
    statements: list[tuple[str, Any]] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if "LIMIT" in statement:
            statements.append((statement, parameters))

    lists: list[tuple[str, dict[str, str]]] = [
        ("/billing/plans", {}),
        ("/billing/subscriptions", {}),
        ("/billing/subscriptions", {"status": "active"}),
        ("/billing/invoices", {}),
        ("/billing/invoices", {"status": "paid"}),
        ("/billing/invoices", {"user_id": user_id}),
        ("/billing/invoices", {"user_id": user_id, "status": "paid"}),
    ]
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        for path, filters in lists:
            first = client.get(path, query_string={"page_size": 1, **filters})
            cursor = pagination(first)["next_cursor"]
            ok(client.get(path, query_string={"page_size": 1, "cursor": cursor, **filters}))
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)

    assert len(statements) == 2 * len(lists)
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql("SET enable_sort = off")
            connection.exec_driver_sql("SET enable_seqscan = off")
            explain = "EXPLAIN "
        else:
            explain = "EXPLAIN QUERY PLAN "
        for statement, parameters in statements:
            plan = connection.exec_driver_sql(explain + statement, parameters).all()
            text = "\n".join(" ".join(map(str, row)) for row in plan)
            assert "TEMP B-TREE" not in text and "Sort" not in text, f"{statement}\n{text}"
