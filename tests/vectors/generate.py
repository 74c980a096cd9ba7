"""Produce hopchain's own known-answer vectors from fixed seeds.

Run from the project root::

    .venv/bin/python tests/vectors/generate.py

Every input is derived from a label with BLAKE2b (``det``), so the output is
the same on every machine.  The JSON files are checked in; ``test_vectors.py``
recomputes every byte from the inputs stored next to the outputs.  Review the
diff before committing regenerated files: a change means the wire format or
the cryptography changed, and deployed peers would no longer interoperate.

``rfc7748_x25519.json`` is not produced here: it is copied from the RFC.
"""

import hashlib
import json
from pathlib import Path
from typing import Any

from hopchain.crypto import handshake, kdf, onion
from hopchain.crypto.keys import IdentityKey, OnionKey
from hopchain.crypto.onion import HopKeys
from hopchain.messages import (
    LARGE_PAYLOAD,
    SMALL_PAYLOAD,
    Begin,
    Connected,
    Data,
    Drop,
    End,
    EndReason,
    Extend,
    Extended,
    RelayMessage,
    Resolve,
    Resolved,
    Sendme,
    Truncated,
    encode,
)
from hopchain.wire import CellCommand, RecordSealer, encode_cell

HERE = Path(__file__).parent
LOW_ORDER_POINT = bytes.fromhex(
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"
)
HOP_KEY_NAMES = ("forward", "backward", "pad", "fill", "junk")


def det(label: str, size: int = 32) -> bytes:
    """``size`` deterministic bytes named by ``label`` (BLAKE2b in counter mode)."""
    out = b""
    block = 0
    while len(out) < size:
        out += hashlib.blake2b(f"{label}#{block}".encode(), digest_size=64).digest()
        block += 1
    return out[:size]


def flip_bit(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def hop_keys_dict(keys: HopKeys) -> dict[str, str]:
    return {name: getattr(keys, name).hex() for name in HOP_KEY_NAMES}


# --- handshakes ------------------------------------------------------------------


def handshake_transcript(name: str, label: bytes) -> dict[str, str]:
    identity = IdentityKey(det(f"{name} identity seed"))
    onion_key = OnionKey(det(f"{name} onion secret"))
    x = det(f"{name} client ephemeral")
    y = det(f"{name} server ephemeral")
    state = handshake.client_start_with_ephemeral(
        label, identity.public, onion_key.public, x
    )
    created, prk = handshake.server_reply_with_ephemeral(
        label, identity.public, [onion_key], state.message, y
    )
    assert handshake.client_finish(state, created) == prk
    return {
        "name": name,
        "label": label.hex(),
        "identity_seed": identity.seed.hex(),
        "identity_public": identity.public.hex(),
        "onion_secret": onion_key.secret.hex(),
        "onion_public": onion_key.public.hex(),
        "client_ephemeral_secret": x.hex(),
        "client_ephemeral_public": state.ephemeral_public.hex(),
        "server_ephemeral_secret": y.hex(),
        "create": state.message.hex(),
        "created": created.hex(),
        "prk": prk.hex(),
    }


def handshake_failures(good: dict[str, str]) -> list[dict[str, str]]:
    """Hand-made failure vectors around a good circuit transcript."""
    create = bytes.fromhex(good["create"])
    created = bytes.fromhex(good["created"])
    identity, onion_public = create[:32], create[32:64]
    impostor = OnionKey(det("impostor onion secret"))
    forged, _ = handshake.server_reply_with_ephemeral(
        bytes.fromhex(good["label"]),
        identity,
        [impostor],
        identity + impostor.public + create[64:],
        bytes.fromhex(good["server_ephemeral_secret"]),
    )
    client_cases = {
        "created auth tampered": flip_bit(created, 8 * 63),
        "created y tampered": flip_bit(created, 8 * 5 + 1),
        "created low-order y (zero)": bytes(32) + created[32:],
        "created low-order y (order 8)": LOW_ORDER_POINT + created[32:],
        "created truncated": created[:63],
        "created by a relay without the onion key": forged,
    }
    server_cases = {
        "create low-order x (zero)": identity + onion_public + bytes(32),
        "create low-order x (order 8)": identity + onion_public + LOW_ORDER_POINT,
        "create for another identity": IdentityKey(det("other")).public + create[32:],
        "create for an unknown onion key": identity + impostor.public + create[64:],
        "create truncated": create[:95],
    }
    cases = [
        {"name": n, "side": "client", "message": m.hex(), "error": "HandshakeError"}
        for n, m in client_cases.items()
    ]
    cases += [
        {"name": n, "side": "server", "message": m.hex(), "error": "HandshakeError"}
        for n, m in server_cases.items()
    ]
    return cases


# --- KDF and hop keys ----------------------------------------------------------------


def kdf_vectors() -> dict[str, Any]:
    extract = [
        {"label": label.hex(), "secret": secret.hex()}
        for label, secret in [
            (handshake.LINK_LABEL, det("kdf secret 1", 96)),
            (handshake.CIRCUIT_LABEL, det("kdf secret 1", 96)),
            (b"", b""),
        ]
    ]
    for case in extract:
        prk = kdf.extract(bytes.fromhex(case["label"]), bytes.fromhex(case["secret"]))
        case["prk"] = prk.hex()
    prk = det("kdf prk")
    expand = [
        {
            "prk": prk.hex(),
            "purpose": purpose.hex(),
            "length": length,
            "output": kdf.expand(prk, purpose, length).hex(),
        }
        for purpose, length in [
            (b"verify", 32),
            (b"layer forward", 32),
            (b"link i2r", 16),
            (b"x", 64),
        ]
    ]
    mac = [
        {
            "key": prk.hex(),
            "message": message.hex(),
            "mac": kdf.mac(prk, message).hex(),
        }
        for message in [b"", det("kdf mac message", 200)]
    ]
    return {"extract": extract, "expand": expand, "mac": mac}


def hop_key_vectors() -> list[dict[str, str]]:
    out = []
    for n in range(2):
        prk = det(f"hop keys prk {n}")
        out.append({"prk": prk.hex(), **hop_keys_dict(HopKeys.from_prk(prk))})
    return out


# --- onion ----------------------------------------------------------------------------


def onion_vectors() -> dict[str, Any]:
    """One 3-hop circuit: two forward cells to the exit, two backward cells."""
    prks = [det(f"onion hop {i} prk") for i in range(3)]
    client = [HopKeys.from_prk(p) for p in prks]
    relays = [HopKeys.from_prk(p) for p in prks]
    forward = []
    for n, data in enumerate([b"GET / HTTP/1.1\r\n\r\n", det("onion data", 300)]):
        payload = encode(Data(n + 1, data))
        assert len(payload) == SMALL_PAYLOAD
        links = [onion.wrap_forward(client, payload)]
        for hop in relays:
            links.append(onion.peel_forward(hop, links[-1]))
        forward.append(
            {
                "payload": payload.hex(),
                # links[j] is the body hop j receives; the last is what the
                # exit holds after peeling (payload area then tag stack).
                "links": [body.hex() for body in links],
            }
        )
    backward = []
    for origin, message in [(2, Data(1, b"HTTP/1.1 200 OK\r\n")), (1, Drop())]:
        payload = encode(message)
        links = [onion.originate_backward(relays[origin], payload)]
        for hop in reversed(relays[:origin]):
            links.append(onion.add_backward(hop, links[-1]))
        assert onion.unwrap_backward(client, links[-1]) == (origin, payload)
        backward.append(
            {
                "origin": origin,
                "payload": payload.hex(),
                # links[0] leaves the origin; the last is what the client gets.
                "links": [body.hex() for body in links],
            }
        )
    return {
        "hops": [{"prk": p.hex(), **hop_keys_dict(HopKeys.from_prk(p))} for p in prks],
        "forward": forward,
        "backward": backward,
    }


# --- messages and wire --------------------------------------------------------------


def message_fields(message: RelayMessage) -> dict[str, Any]:
    """JSON form of a message's fields: bytes as {"hex": ...}, reasons by name,
    tuples as lists."""
    fields: dict[str, Any] = {}
    for name in type(message).__dataclass_fields__:
        value = getattr(message, name)
        if isinstance(value, EndReason):
            fields[name] = {"reason": value.name}
        elif isinstance(value, bytes):
            fields[name] = {"hex": value.hex()}
        elif isinstance(value, tuple):
            fields[name] = list(value)
        else:
            fields[name] = value
    return fields


MESSAGES: list[RelayMessage] = [
    Data(1, b"hello"),
    Data(0xFFFF, det("large data", SMALL_PAYLOAD)),
    Begin(2, "example.com", 443),
    Begin(3, "2001:db8::1", 80),
    Connected(2, "93.184.216.34"),
    Connected(2, "93.184.216.34", "198.51.100.7"),
    End(2, EndReason.DONE),
    End(3, EndReason.EXIT_POLICY),
    Sendme(0, 32),
    Sendme(2, 16),
    Extend(det("ext identity"), det("ext onion"), "192.0.2.7", 9001, det("hs", 96)),
    Extended(det("extended", 64)),
    Truncated(EndReason.CONNECT_REFUSED),
    Drop(),
    Resolve(4, "example.com"),
    Resolve(5, "2001:db8::1", ptr=True),
    Resolved(4, ("93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946")),
    Resolved(5, ("host.example",)),
    Resolved(6, (), EndReason.RESOLVE_FAILED),
]


def message_vectors() -> list[dict[str, Any]]:
    out = []
    for message in MESSAGES:
        payload = encode(message)
        assert len(payload) in (SMALL_PAYLOAD, LARGE_PAYLOAD)
        out.append(
            {
                "type": type(message).__name__,
                "fields": message_fields(message),
                "payload": payload.hex(),
            }
        )
    return out


def wire_vectors() -> dict[str, Any]:
    cells = [
        (0x80000001, CellCommand.CREATE, det("wire create", 96)),
        (0x80000001, CellCommand.RELAY_EARLY, det("wire relay", 64)),
        (7, CellCommand.DESTROY, bytes([EndReason.DESTROYED])),
        (0, CellCommand.PADDING, b""),
    ]
    key = det("wire record key")
    sealer = RecordSealer(key)
    bodies = [encode_cell(*cells[0]) + encode_cell(*cells[1]), b"\x00" * 7]
    return {
        "cells": [
            {
                "circ_id": circ_id,
                "command": command.name,
                "body": body.hex(),
                "encoded": encode_cell(circ_id, command, body).hex(),
            }
            for circ_id, command, body in cells
        ],
        "records": {
            "key": key.hex(),
            "bodies": [b.hex() for b in bodies],
            "sealed": [sealer.seal(b).hex() for b in bodies],
        },
    }


def write(name: str, value: object) -> None:
    path = HERE / name
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    print(f"wrote {path}")


def main() -> None:
    circuit = handshake_transcript("circuit", handshake.CIRCUIT_LABEL)
    write(
        "handshake.json",
        [
            circuit,
            handshake_transcript("circuit 2", handshake.CIRCUIT_LABEL),
            handshake_transcript("link", handshake.LINK_LABEL),
        ],
    )
    write(
        "handshake_failures.json",
        {"transcript": circuit, "cases": handshake_failures(circuit)},
    )
    write("kdf.json", kdf_vectors())
    write("hop_keys.json", hop_key_vectors())
    write("onion.json", onion_vectors())
    write("messages.json", message_vectors())
    write("wire.json", wire_vectors())


if __name__ == "__main__":
    main()
