"""The inventory: SQLAlchemy models, engine set-up and schema migrations.

The store knows rows, not policy, and never commits on its own: each service function owns
one transaction.
"""
