"""Check that a Kafka broker answers ApiVersions and Metadata (stdlib only).

Usage: python3 probe.py HOST:PORT [TIMEOUT_S]
Exits 0 and prints the cluster id and brokers when the broker serves metadata.
"""

from __future__ import annotations

import socket
import struct
import sys

API_METADATA = 3
API_VERSIONS = 18


def _request(sock: socket.socket, api_key: int, version: int, corr: int, body: bytes) -> bytes:
    client_id = b"streamrec-probe"
    header = struct.pack(">hhih", api_key, version, corr, len(client_id)) + client_id
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    size = struct.unpack(">i", _read(sock, 4))[0]
    data = _read(sock, size)
    if struct.unpack(">i", data[:4])[0] != corr:
        raise RuntimeError("correlation id mismatch")
    return data[4:]


def _read(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by broker")
        buf += chunk
    return buf


def _string(data: bytes, pos: int) -> tuple[str | None, int]:
    length = struct.unpack_from(">h", data, pos)[0]
    pos += 2
    if length < 0:
        return None, pos
    return data[pos : pos + length].decode(), pos + length


def probe(address: str, timeout: float) -> str:
    """Return a one-line description of the cluster, raising on any failure."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.settimeout(timeout)
        resp = _request(sock, API_VERSIONS, 0, 1, b"")
        error = struct.unpack_from(">h", resp, 0)[0]
        if error:
            raise RuntimeError(f"ApiVersions error {error}")
        # Metadata v4: all topics (null array), no auto creation.
        resp = _request(sock, API_METADATA, 4, 2, struct.pack(">ib", -1, 0))
        pos = 4  # throttle_time_ms
        count = struct.unpack_from(">i", resp, pos)[0]
        pos += 4
        brokers = []
        for _ in range(count):
            node_id = struct.unpack_from(">i", resp, pos)[0]
            bhost, pos = _string(resp, pos + 4)
            bport = struct.unpack_from(">i", resp, pos)[0]
            _, pos = _string(resp, pos + 4)
            brokers.append(f"{node_id}@{bhost}:{bport}")
        cluster_id, pos = _string(resp, pos)
        if not brokers:
            raise RuntimeError("metadata lists no brokers yet")
        return f"cluster {cluster_id}, brokers {', '.join(brokers)}"


def main() -> int:
    address = sys.argv[1]
    timeout = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
    try:
        print(probe(address, timeout))
    except (OSError, RuntimeError, struct.error) as exc:
        print(f"kafka at {address} not ready: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
