"""The hopchain relay and directory authority daemons (trio shell)."""
