"""Billing, moved out of the monolith: plans, subscriptions, invoices, payments.

The same module as ``monolith/billing/`` — domain, services, repository,
tables, schemas, blueprint — with its own MetaData, its own database and a
users directory that is the monolith's HTTP API. See ../README.md.
"""
