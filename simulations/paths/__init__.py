"""``hopchain sim paths``: who sees a user's traffic over simulated months.

Simulated users run the client's own path selection
(``hopchain.path.select_path``), guard set (``hopchain.guards.GuardSet``)
and circuit reuse rules (``hopchain.reuse``) over a schedule of consensuses,
and the study counts the circuits whose guard and exit both belong to an
adversary.  See docs/simulations.md.
"""
