"""The hopchain local client: SOCKS5 entry and circuit manager (trio shell)."""
