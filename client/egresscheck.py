"""The client's egress check on CONNECTED (see ``hopchain.egress``).

With country rules, the address an exit reports in CONNECTED is placed in a
country.  A mismatch is logged once per exit and rules; under
--strict-countries (or with the API's own countries) the exit is refused
for those rules from then on (``StreamRules.refuse_exit``) and the stream
is retried once on another exit (``hopchain.client.attach``).
"""

import logging

from hopchain.client.handle import ClientCircuitHandle
from hopchain.client.rules import RuleKey, StreamRules, own_countries, rule_key

from hopchain.egress import check_egress
from hopchain.geoip import GeoIPDatabase
from hopchain.isolation import IsolationKey
from hopchain.messages import Connected

logger = logging.getLogger(__name__)


class EgressChecks:
    """Checks CONNECTED's egress and remembers the refusals and warnings."""

    def __init__(self, rules: StreamRules, geoip: GeoIPDatabase | None) -> None:
        self._rules = rules
        self._geoip = geoip
        self._warned: set[tuple[RuleKey, bytes]] = set()

    def refusal(
        self,
        handle: ClientCircuitHandle,
        connected: Connected,
        port: int,
        isolation: IsolationKey | None,
    ) -> str:
        """Why the stream must not use this exit ("" to go ahead)."""
        constraints = self._rules.constraints(port, isolation)
        key = rule_key(constraints)
        if handle.fallback or not any(key):
            return ""
        verdict = check_egress(connected.egress, handle.exit, constraints, self._geoip)
        if verdict.ok:
            return ""
        if not (self._rules.countries.strict or own_countries(isolation)):
            if (key, handle.exit.identity) not in self._warned:
                self._warned.add((key, handle.exit.identity))
                logger.warning(
                    "egress check failed: %s; using it anyway "
                    "(--strict-countries refuses such exits)",
                    verdict.reason,
                )
            return ""
        self._rules.refuse_exit(key, handle.exit.identity)
        logger.warning(
            "egress check failed: %s; exit refused for these country rules "
            "(--strict-countries)",
            verdict.reason,
        )
        return f"egress check failed: {verdict.reason}"
