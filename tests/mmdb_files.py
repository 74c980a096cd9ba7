"""Write small MaxMind DB (.mmdb) files for tests, with the mmdb-writer package."""

from pathlib import Path

from mmdb_writer import MMDBWriter
from netaddr import IPSet


def write_mmdb(path: Path, networks: dict[str, dict[str, object]]) -> Path:
    """An IPv6 tree (IPv4 mapped in, as GeoLite2's) with one record per network.

    ``networks`` maps a CIDR to its record, e.g.
    ``{"127.0.0.0/24": {"country": {"iso_code": "DE"}}}``.
    """
    writer = MMDBWriter(
        ip_version=6, ipv4_compatible=True, database_type="GeoLite2-Country"
    )
    for network, record in networks.items():
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path
