"""The journey, run for an audience: ``make demo`` (``python -m demo``).

``loadgen`` holds the one load generator of the project — simulated users
("shoppers") who subscribe, are invoiced, pay and read their invoices back
through the proxy; the journey test, ``make demo-load`` and ``make demo``
all use it. ``system`` starts the Procfile's processes as ``make run`` does,
and ``walkthrough`` moves billing step by step while the shoppers shop.

The demo drives the system from outside, as a reader would: over HTTP and
with the ``strangler`` command, never by importing a deployable (an
import-linter contract holds it to that).
"""
