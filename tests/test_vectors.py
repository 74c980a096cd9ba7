"""Known-answer tests: stored vectors (tests/vectors/*.json) reproduced byte for byte.

hopchain's own vectors come from ``tests/vectors/generate.py`` (fixed seeds);
the X25519 vectors are copied from RFC 7748.  A failure here means the wire
format or the cryptography changed: old and new peers would not interoperate.
"""

import json
from pathlib import Path
from typing import Any

import pytest

from hopchain import messages
from hopchain.crypto import handshake, kdf, onion, primitives
from hopchain.crypto.keys import IdentityKey, OnionKey
from hopchain.crypto.onion import HopKeys
from hopchain.errors import CellAuthError, HandshakeError
from hopchain.messages import SMALL_PAYLOAD, EndReason, RelayMessage
from hopchain.wire import (
    Cell,
    CellCommand,
    RecordOpener,
    RecordSealer,
    decode_cells,
    encode_cell,
)

VECTORS = Path(__file__).parent / "vectors"
HOP_KEY_NAMES = ("forward", "backward", "pad", "fill", "junk")


def load(name: str) -> Any:
    return json.loads((VECTORS / name).read_text())


def h(value: str) -> bytes:
    return bytes.fromhex(value)


def ids(cases: list[dict[str, Any]], key: str = "name") -> list[str]:
    return [str(c[key]) for c in cases]


# --- RFC 7748 -------------------------------------------------------------------------

RFC = load("rfc7748_x25519.json")


@pytest.mark.parametrize("case", RFC["scalar_mult"], ids=["test 1", "test 2"])
def test_kat_rfc7748_scalar_mult(case: dict[str, str]) -> None:
    assert primitives.x25519(h(case["scalar"]), h(case["u"])) == h(case["output"])


@pytest.mark.parametrize("case", RFC["iterated"], ids=lambda c: f"{c['iterations']}x")
def test_kat_rfc7748_iterated(case: dict[str, Any]) -> None:
    k = u = (9).to_bytes(32, "little")
    for _ in range(case["iterations"]):
        k, u = primitives.x25519(k, u), k
    assert k == h(case["output"])


def test_kat_rfc7748_diffie_hellman() -> None:
    dh = RFC["diffie_hellman"]
    assert primitives.x25519_public(h(dh["alice_private"])) == h(dh["alice_public"])
    assert primitives.x25519_public(h(dh["bob_private"])) == h(dh["bob_public"])
    assert primitives.x25519(h(dh["alice_private"]), h(dh["bob_public"])) == h(
        dh["shared"]
    )
    assert primitives.x25519(h(dh["bob_private"]), h(dh["alice_public"])) == h(
        dh["shared"]
    )
    assert OnionKey(h(dh["alice_private"])).public == h(dh["alice_public"])


# --- handshakes -----------------------------------------------------------------------

HANDSHAKES = load("handshake.json")


@pytest.mark.parametrize("case", HANDSHAKES, ids=ids(HANDSHAKES))
def test_kat_handshake_transcript(case: dict[str, str]) -> None:
    label = h(case["label"])
    identity = IdentityKey(h(case["identity_seed"]))
    onion_key = OnionKey(h(case["onion_secret"]))
    assert identity.public == h(case["identity_public"])
    assert onion_key.public == h(case["onion_public"])
    state = handshake.client_start_with_ephemeral(
        label, identity.public, onion_key.public, h(case["client_ephemeral_secret"])
    )
    assert state.ephemeral_public == h(case["client_ephemeral_public"])
    assert state.message == h(case["create"])
    created, prk = handshake.server_reply_with_ephemeral(
        label,
        identity.public,
        [onion_key],
        state.message,
        h(case["server_ephemeral_secret"]),
    )
    assert created == h(case["created"])
    assert prk == h(case["prk"])
    assert handshake.client_finish(state, created) == h(case["prk"])


def test_kat_handshake_labels_are_the_documented_ones() -> None:
    labels = {c["name"]: h(c["label"]) for c in HANDSHAKES}
    assert labels["circuit"] == handshake.CIRCUIT_LABEL == b"hopchain-circ-v1"
    assert labels["link"] == handshake.LINK_LABEL == b"hopchain-link-v1"


FAILURES = load("handshake_failures.json")


@pytest.mark.parametrize("case", FAILURES["cases"], ids=ids(FAILURES["cases"]))
def test_kat_handshake_failure(case: dict[str, str]) -> None:
    good = FAILURES["transcript"]
    assert case["error"] == HandshakeError.__name__
    label = h(good["label"])
    identity = IdentityKey(h(good["identity_seed"]))
    onion_key = OnionKey(h(good["onion_secret"]))
    if case["side"] == "client":
        state = handshake.client_start_with_ephemeral(
            label,
            identity.public,
            onion_key.public,
            h(good["client_ephemeral_secret"]),
        )
        with pytest.raises(HandshakeError):
            handshake.client_finish(state, h(case["message"]))
    else:
        with pytest.raises(HandshakeError):
            handshake.server_reply_with_ephemeral(
                label,
                identity.public,
                [onion_key],
                h(case["message"]),
                h(good["server_ephemeral_secret"]),
            )


# --- KDF and hop keys -----------------------------------------------------------------

KDF = load("kdf.json")


@pytest.mark.parametrize("case", KDF["extract"], ids=ids(KDF["extract"], "label"))
def test_kat_kdf_extract(case: dict[str, str]) -> None:
    assert kdf.extract(h(case["label"]), h(case["secret"])) == h(case["prk"])


@pytest.mark.parametrize("case", KDF["expand"], ids=ids(KDF["expand"], "purpose"))
def test_kat_kdf_expand(case: dict[str, Any]) -> None:
    output = kdf.expand(h(case["prk"]), h(case["purpose"]), case["length"])
    assert output == h(case["output"])


@pytest.mark.parametrize("case", KDF["mac"], ids=["empty", "200 bytes"])
def test_kat_kdf_mac(case: dict[str, str]) -> None:
    assert kdf.mac(h(case["key"]), h(case["message"])) == h(case["mac"])


@pytest.mark.parametrize("case", load("hop_keys.json"), ids=["prk 0", "prk 1"])
def test_kat_hop_keys(case: dict[str, str]) -> None:
    keys = HopKeys.from_prk(h(case["prk"]))
    for name in HOP_KEY_NAMES:
        assert getattr(keys, name) == h(case[name]), name


# --- onion ----------------------------------------------------------------------------

ONION = load("onion.json")


def onion_circuit() -> tuple[list[HopKeys], list[HopKeys]]:
    prks = [h(hop["prk"]) for hop in ONION["hops"]]
    return [HopKeys.from_prk(p) for p in prks], [HopKeys.from_prk(p) for p in prks]


def test_kat_onion_hop_keys() -> None:
    client, _ = onion_circuit()
    for keys, expected in zip(client, ONION["hops"], strict=True):
        for name in HOP_KEY_NAMES:
            assert getattr(keys, name) == h(expected[name])


def test_kat_onion_forward_three_hops() -> None:
    client, relays = onion_circuit()
    for cell in ONION["forward"]:
        payload = h(cell["payload"])
        links = [h(body) for body in cell["links"]]
        assert len(payload) == SMALL_PAYLOAD
        assert onion.wrap_forward(client, payload) == links[0]
        for j, hop in enumerate(relays):
            assert onion.peel_forward(hop, links[j]) == links[j + 1], f"hop {j}"
        assert links[-1][: len(payload)] == payload


def test_kat_onion_backward() -> None:
    client, relays = onion_circuit()
    for cell in ONION["backward"]:
        origin = cell["origin"]
        payload = h(cell["payload"])
        links = [h(body) for body in cell["links"]]
        assert onion.originate_backward(relays[origin], payload) == links[0]
        for step, hop in enumerate(reversed(relays[:origin])):
            assert onion.add_backward(hop, links[step]) == links[step + 1]
        assert onion.unwrap_backward(client, links[-1]) == (origin, payload)


def test_kat_onion_tampered_forward_cell_fails() -> None:
    _, relays = onion_circuit()
    body = bytearray(h(ONION["forward"][0]["links"][0]))
    body[-1] ^= 0x80  # the last slot of the tag stack: associated data
    with pytest.raises(CellAuthError):
        onion.peel_forward(relays[0], bytes(body))


# --- messages and wire ----------------------------------------------------------------

MESSAGES = load("messages.json")


def message_from_json(case: dict[str, Any]) -> RelayMessage:
    fields = {}
    for name, value in case["fields"].items():
        if isinstance(value, dict) and "hex" in value:
            value = h(value["hex"])
        elif isinstance(value, dict) and "reason" in value:
            value = EndReason[value["reason"]]
        elif isinstance(value, list):
            value = tuple(value)
        fields[name] = value
    cls = getattr(messages, case["type"])
    return cls(**fields)  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "case", MESSAGES, ids=[f"{c['type']}-{i}" for i, c in enumerate(MESSAGES)]
)
def test_kat_message_encoding(case: dict[str, Any]) -> None:
    message = message_from_json(case)
    payload = h(case["payload"])
    assert messages.encode(message) == payload
    assert messages.decode(payload) == message


def test_kat_messages_cover_every_type() -> None:
    types = {c["type"] for c in MESSAGES}
    assert types == {cls.__name__ for cls in RelayMessage.__args__}  # type: ignore[attr-defined]


WIRE = load("wire.json")


@pytest.mark.parametrize("case", WIRE["cells"], ids=ids(WIRE["cells"], "command"))
def test_kat_cell_encoding(case: dict[str, Any]) -> None:
    command = CellCommand[case["command"]]
    body = h(case["body"])
    encoded = h(case["encoded"])
    assert encode_cell(case["circ_id"], command, body) == encoded
    assert decode_cells(encoded) == [Cell(case["circ_id"], command, body)]


def test_kat_records() -> None:
    records = WIRE["records"]
    key = h(records["key"])
    bodies = [h(b) for b in records["bodies"]]
    sealed = [h(s) for s in records["sealed"]]
    sealer = RecordSealer(key)
    assert [sealer.seal(b) for b in bodies] == sealed
    opener = RecordOpener(key)
    opener.feed(b"".join(sealed))
    assert [opener.next_record(), opener.next_record(), opener.next_record()] == [
        *bodies,
        None,
    ]
