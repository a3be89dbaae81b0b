"""Evidence the reconciler writes and trusts.

Apply records, the local anchors, verification summaries, and the signatures over them.
"""
