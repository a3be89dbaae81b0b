"""One reconcile pass.

The pure plan, the apply of a verified plan, and the pass that runs them per environment.
"""
