"""The data mover: copies a module's tables from the database that owns them
to the database of the service taking them over, keeps the copy current with
change capture at the database, and proves the two agree.

It reads and writes both databases by their schema, never through either
application's code: it depends on ``servicekit`` and on no deployable.
"""
