"""Shared test configuration: hypothesis profiles.

The profile is chosen by the ``HYPOTHESIS_PROFILE`` environment variable:

* ``dev``: quick local runs (50 examples per property);
* ``ci`` (default): 100 examples, derandomized so that runs are stable, no
  deadline (shared CI machines have noisy timings);
* ``deep``: a long search for nightly runs or bug hunting.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=50)
settings.register_profile("ci", max_examples=100, derandomize=True, deadline=None)
settings.register_profile(
    "deep",
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
