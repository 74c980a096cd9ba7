"""Onion layers: one AEAD layer per hop, constant cell length on every link.

A relay cell body is ``payload area (M bytes) | tag stack (8 slots x 32 B)``.
M depends only on the cell's size class, never on the hop count or the hop's
position, so every link carries the same length for a given class.

Forward (client to hop k, 1-based; hops 1..k-1 only forward):

    body at hop j = C_j | T_j | T_{j+1} .. T_k | FILL | PAD_1 .. PAD_{j-1}

    Hop j opens (C_j | T_j) with AD = the 7 slots that follow T_j, obtains
    C_{j+1}, and sends C_{j+1} | (those 7 slots) | PAD_j.  PAD_j is a keyed
    pseudo-random slot the client can recompute, and FILL (8 - k slots) comes
    from hop k's fill key, so every slot any hop sees is authenticated by that
    hop and looks random: a hop learns neither k nor its own position, and a
    changed bit anywhere is caught by the next honest hop.

Backward (hop j to the client):

    hop j sends      C_j | T_j | JUNK_j            (JUNK_j: 7 keyed slots)
    hop i < j adds   AEAD over the payload area with the stack's last slot
                     (always junk) as associated data, drops that slot and
                     pushes T_i in front of the stack.

    The client first finds the sender: the one hop j whose junk equals the
    slots after T_1 .. T_j.  Knowing j, it recomputes every junk slot a hop
    dropped on the way and opens layer 1, 2, ..., j with those slots as
    associated data.  Every byte any hop saw is thereby checked: tags by
    AEAD, visible junk by comparison, dropped junk as associated data, so an
    exit cannot hide a mark in a slot that the guard reads and then drops.

Each (hop, direction) has its own key and a message counter used as the AEAD
nonce, so a replayed, dropped or reordered cell fails to authenticate.
"""

import hmac
from dataclasses import dataclass, field
from typing import Final

from hopchain.crypto import kdf
from hopchain.crypto.primitives import AEAD_TAG_BYTES, aead_open, aead_seal, keystream
from hopchain.errors import CellAuthError

MAX_HOPS: Final = 8
SLOT: Final = AEAD_TAG_BYTES
STACK_BYTES: Final = MAX_HOPS * SLOT
TAIL_BYTES: Final = STACK_BYTES - SLOT


@dataclass(slots=True)
class HopKeys:
    """Keys and counters for one hop of one circuit (either side's view)."""

    forward: bytes = field(repr=False)
    backward: bytes = field(repr=False)
    pad: bytes = field(repr=False)
    fill: bytes = field(repr=False)
    junk: bytes = field(repr=False)
    forward_count: int = 0
    backward_count: int = 0

    @classmethod
    def from_prk(cls, prk: bytes) -> "HopKeys":
        """Expand the circuit handshake's prk into the five layer keys."""
        return cls(
            forward=kdf.expand(prk, b"layer forward"),
            backward=kdf.expand(prk, b"layer backward"),
            pad=kdf.expand(prk, b"layer pad"),
            fill=kdf.expand(prk, b"layer fill"),
            junk=kdf.expand(prk, b"layer junk"),
        )


def _split(body: bytes) -> int:
    payload_len = len(body) - STACK_BYTES
    if payload_len <= 0:
        raise CellAuthError(f"cell body too short: {len(body)} bytes")
    return payload_len


# --- client side -----------------------------------------------------------


def wrap_forward(hops: list[HopKeys], payload: bytes) -> bytes:
    """Encrypt ``payload`` for the last hop of ``hops`` (client side).

    Args:
        hops: the circuit's hops, first hop first; the last is the target.
        payload: the plaintext payload area (the size class's M bytes).

    Returns:
        The cell body to send to the first hop.
    """
    k = len(hops)
    if not 1 <= k <= MAX_HOPS:
        raise ValueError(f"circuit has {k} hops; 1..{MAX_HOPS} allowed")
    counts = [hop.forward_count for hop in hops]
    target = hops[-1]
    fill = keystream(target.fill, counts[-1], SLOT * (MAX_HOPS - k))
    pads = b"".join(keystream(hops[j].pad, counts[j], SLOT) for j in range(k - 1))
    tags = b""
    m = len(payload)
    for j in range(k - 1, -1, -1):
        ad = tags + fill + pads[: SLOT * j]
        sealed = aead_seal(hops[j].forward, counts[j], payload, ad)
        payload = sealed[:m]
        tags = sealed[m:] + tags
    for hop in hops:
        hop.forward_count += 1
    return payload + tags + fill


def unwrap_backward(hops: list[HopKeys], body: bytes) -> tuple[int, bytes]:
    """Remove the layers of a backward cell (client side).

    Returns:
        (index of the hop that sent the cell, plaintext payload area).

    Raises:
        CellAuthError: no hop's junk matches, or a layer does not verify.
    """
    m = _split(body)
    stack = body[m:]
    origin = -1
    junk = b""
    for j, hop in enumerate(hops):
        junk = keystream(hop.junk, hop.backward_count, TAIL_BYTES)
        visible = stack[SLOT * (j + 1) :]
        if hmac.compare_digest(visible, junk[: len(visible)]):
            origin = j
            break
    if origin < 0:
        raise CellAuthError("backward cell matches no hop")
    payload = body[:m]
    for i in range(origin + 1):
        hop = hops[i]
        tag = stack[SLOT * i : SLOT * (i + 1)]
        dropped = None
        if i < origin:
            index = MAX_HOPS - 1 - origin + i
            dropped = junk[SLOT * index : SLOT * (index + 1)]
        payload = aead_open(hop.backward, hop.backward_count, payload + tag, dropped)
    for hop in hops[: origin + 1]:
        hop.backward_count += 1
    return origin, payload


# --- relay side ------------------------------------------------------------


def open_forward(hop: HopKeys, body: bytes) -> tuple[bytes, bytes]:
    """Remove this relay's layer from a forward cell.

    Returns the payload area and the re-padded stack (the tags left plus
    this hop's pad slot): a relay that forwards the cell sends the two
    joined, the last hop reads the payload area alone, so it never builds
    the whole body.

    Raises:
        CellAuthError: the layer does not verify.
    """
    m = _split(body)
    cut = m + SLOT
    tail = body[cut:]
    payload = aead_open(hop.forward, hop.forward_count, body[:cut], tail)
    pad = keystream(hop.pad, hop.forward_count, SLOT)
    hop.forward_count += 1
    return payload, tail + pad


def peel_forward(hop: HopKeys, body: bytes) -> bytes:
    """Remove this relay's layer from a forward cell and re-pad the stack:
    the body to forward (``open_forward`` joined).

    Raises:
        CellAuthError: the layer does not verify.
    """
    payload, stack = open_forward(hop, body)
    return payload + stack


def add_backward(hop: HopKeys, body: bytes) -> bytes:
    """Add this relay's layer to a backward cell it forwards towards the client.

    The stack's last slot is dropped, and authenticated as associated data.
    """
    m = _split(body)
    dropped = body[m + TAIL_BYTES :]
    sealed = aead_seal(hop.backward, hop.backward_count, body[:m], dropped)
    hop.backward_count += 1
    return sealed + body[m : m + TAIL_BYTES]


def originate_backward(hop: HopKeys, payload: bytes) -> bytes:
    """Encrypt a payload area this relay sends to the client."""
    sealed = aead_seal(hop.backward, hop.backward_count, payload, None)
    junk = keystream(hop.junk, hop.backward_count, TAIL_BYTES)
    hop.backward_count += 1
    return sealed + junk
