"""The repository's verdict for unit tests of the gate: a state already in force."""

from __future__ import annotations

from reconciler.model import DesiredState
from reconciler.verify.inforce import Judgement, PolicyInForce
from reconciler.verify.root import TrustRoot


def in_force(judged: DesiredState) -> Judgement:
    """The judgement that put ``judged`` in force (as a pass hands it to the gate)."""
    return Judgement(judged.commit, PolicyInForce(TrustRoot("test"), judged.commit, judged))
