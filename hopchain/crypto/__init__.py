"""Cryptography: keys, KDF, handshakes and onion layers (libsodium via PyNaCl)."""
