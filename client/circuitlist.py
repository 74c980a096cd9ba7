"""``hopchain circuits``: a running client's circuits, hop by hop."""

from typing import Any


def _position(index: int, count: int) -> str:
    if index == count - 1:
        return "exit"
    return "guard" if index == 0 else "middle"


def circuit_list(status: dict[str, Any]) -> str:
    """The circuits of a status reply from the control socket: per circuit
    its id, state, streams and age, then one line per hop (position,
    nickname, fingerprint prefix, country, consensus flags)."""
    circuits: list[dict[str, Any]] = status.get("circuits", [])
    if not circuits:
        return "No circuits."
    lines = []
    for c in sorted(circuits, key=lambda c: c.get("age_s", 0)):
        streams = c.get("streams", 0)
        lines.append(
            f"circuit {c['id']:08x}: {c.get('state', 'open')}, "
            f"{streams} stream{'' if streams == 1 else 's'}, "
            f"{c.get('age_s', 0):.0f} s old"
            + ("" if c.get("fresh", True) else ", before the last NEWNYM")
        )
        path: list[dict[str, Any]] = c.get("path", [])
        for i, hop in enumerate(path):
            flags = " ".join(hop.get("flags", [])) or "-"
            lines.append(
                f"  {i + 1} {_position(i, len(path)):<6} {hop['nickname']:<20} "
                f"{hop['fingerprint']}  {hop['country']:<2}  {flags}"
            )
    return "\n".join(lines)
