"""Demo data for the users module, inserted in bulk (no events: seeding is not
a business action, and nobody should be sent 10,000 welcome messages)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import Session

from monolith.users import orm
from servicekit.db import utcnow
from servicekit.ids import new_id

FIRST_NAMES = ("Ada", "Grace", "Alan", "Barbara", "Edsger", "Frances", "Ken", "Radia", "Linus")


def seed_users(session: Session, count: int, *, batch: int = 5_000) -> list[str]:
    start = utcnow() - dt.timedelta(days=730)
    ids = [new_id() for _ in range(count)]
    for first in range(0, count, batch):
        rows = []
        for n in range(first, min(first + batch, count)):
            created = start + dt.timedelta(minutes=n)
            name = FIRST_NAMES[n % len(FIRST_NAMES)]
            rows.append(
                {
                    "id": ids[n],
                    "email": f"{name.lower()}.{n}@example.com",
                    "name": f"{name} {n}",
                    "active": True,
                    "created_at": created,
                    "updated_at": created,
                    "deactivated_at": None,
                }
            )
        session.execute(orm.accounts.insert(), rows)
    return ids
