"""Helpers the tests share: processes on loopback, PostgreSQL databases, ids."""
