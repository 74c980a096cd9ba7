"""Research tools, installed as ``hopchain.simulations``.

They drive the same core, relay and client code that users run: path
selection and guards at scale (``hopchain sim paths``) and whole networks of
real nodes over in-memory links in virtual time (``hopchain sim network``).
"""
