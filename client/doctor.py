"""``hopchain doctor``: a running client's status, in plain words."""

from typing import Any


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def report(status: dict[str, Any]) -> str:
    """The human report for a status reply from the control socket."""
    stats = status.get("stats", {})
    circuits = status.get("circuits", [])
    consensus = status.get("consensus")
    lines = []
    if consensus:
        lines.append(
            f"Directory: {consensus['relays']} relays, {consensus['exits']} exits."
        )
    timeout = status.get("build_timeout_s")
    learned = "" if timeout is None else f" Build timeout {timeout:.0f} s (learned)."
    lines.append(
        f"Circuits: {len(circuits)} open, {status.get('hops', 3)} hops.{learned}"
    )
    lines.extend(
        f"  circuit {c['id']:08x}: {c['hops']} hops, exit {c['exit']}, "
        f"{_plural(c['streams'], 'stream')}, {c['age_s']:.0f} s old"
        + ("" if c["fresh"] else ", retired by NEWNYM once idle")
        for c in circuits
    )
    by_name = stats.get("requests_by_name", 0)
    by_ip: dict[str, int] = stats.get("requests_by_ip", {})
    lines.append(
        f"DNS: {_plural(by_name, 'request')} named the destination, so the exit "
        "resolved it. Good."
    )
    if by_ip:
        kinds = ", ".join(f"{n} over {proto}" for proto, n in sorted(by_ip.items()))
        lines.append(
            f"DNS LEAK: {_plural(sum(by_ip.values()), 'request')} arrived as bare "
            f"IP addresses ({kinds}): unless you typed an address, the app looked "
            "the name up itself, so your "
            "own DNS server saw where you were going. Fix: let the proxy resolve "
            "names: curl --socks5-hostname (not --socks5), socks5h:// (not "
            "socks5://) in proxy URLs, SOCKS4a (not SOCKS4), or the HTTP proxy."
        )
    stripped: dict[str, int] = stats.get("headers_stripped", {})
    if stripped:
        items = ", ".join(
            f"{name} x{n}" for name, n in sorted(stripped.items(), key=lambda i: -i[1])
        )
        lines.append(f"Headers stripped before leaving (HTTP proxy): {items}.")
    else:
        lines.append("Headers stripped before leaving (HTTP proxy): none so far.")
    exits: dict[str, int] = stats.get("exits_used", {})
    if exits:
        items = ", ".join(
            f"{name}: {_plural(n, 'stream')}"
            for name, n in sorted(exits.items(), key=lambda i: -i[1])
        )
        lines.append(f"Traffic left from: {items}.")
    else:
        lines.append("Traffic left from: no exit yet.")
    limits: dict[str, int] = stats.get("limits_hit", {})
    if limits:
        items = ", ".join(f"{name} x{n}" for name, n in sorted(limits.items()))
        lines.append(f"Limits hit: {items}.")
    return "\n".join(lines)
