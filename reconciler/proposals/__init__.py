"""Changes proposed to the state repository.

Promote, rollback, release add, discovery and init, and the audit that reads them back.
"""
