#!/usr/bin/env python3
"""Readiness check of the local MongoDB (FerretDB): sends {ping: 1} to the admin
database over the MongoDB wire protocol (one OP_MSG) and expects {ok: 1}.

    mongo-ping.py HOST PORT [TIMEOUT_SECONDS]

Standard library only, so the stack needs no driver. Exit 0 when the server
answered ok: 1; otherwise one line on stderr and exit 1.
"""
import socket
import struct
import sys

OP_MSG = 2013


def bson_doc(items):
    """Encodes a flat document of int32 / string values."""
    body = b""
    for key, value in items:
        k = key.encode() + b"\x00"
        if isinstance(value, int):
            body += b"\x10" + k + struct.pack("<i", value)
        else:
            v = value.encode() + b"\x00"
            body += b"\x02" + k + struct.pack("<i", len(v)) + v
    return struct.pack("<i", len(body) + 5) + body + b"\x00"


def ok_field(doc):
    """Finds the numeric field `ok` at the top level of a BSON document."""
    pos, end = 4, len(doc) - 1
    while pos < end:
        kind = doc[pos]
        name_end = doc.index(b"\x00", pos + 1)
        name = doc[pos + 1 : name_end].decode()
        pos = name_end + 1
        if kind == 0x01:  # double
            value, size = struct.unpack_from("<d", doc, pos)[0], 8
        elif kind == 0x10:  # int32
            value, size = struct.unpack_from("<i", doc, pos)[0], 4
        elif kind == 0x12:  # int64
            value, size = struct.unpack_from("<q", doc, pos)[0], 8
        elif kind == 0x08:  # bool
            value, size = doc[pos], 1
        elif kind in (0x02, 0x0D, 0x0E):  # string, code, symbol
            value, size = None, 4 + struct.unpack_from("<i", doc, pos)[0]
        elif kind in (0x03, 0x04):  # document, array
            value, size = None, struct.unpack_from("<i", doc, pos)[0]
        elif kind == 0x05:  # binary
            value, size = None, 5 + struct.unpack_from("<i", doc, pos)[0]
        elif kind == 0x07:  # object id
            value, size = None, 12
        elif kind in (0x09, 0x11):  # datetime, timestamp
            value, size = None, 8
        elif kind in (0x0A, 0x06, 0xFF, 0x7F):  # null, undefined, min/max key
            value, size = None, 0
        elif kind == 0x13:  # decimal128
            value, size = None, 16
        else:
            return None
        if name == "ok":
            return value
        pos += size
    return None


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed by server")
        data += chunk
    return data


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    timeout = float(sys.argv[3]) if len(sys.argv) > 3 else 3.0
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            section = b"\x00" + bson_doc([("ping", 1), ("$db", "admin")])
            payload = struct.pack("<I", 0) + section
            header = struct.pack("<iiii", 16 + len(payload), 1, 0, OP_MSG)
            sock.sendall(header + payload)
            length, _, _, opcode = struct.unpack("<iiii", recv_exact(sock, 16))
            reply = recv_exact(sock, length - 16)
            if opcode != OP_MSG or reply[4] != 0:
                raise ValueError(f"unexpected reply opcode {opcode}")
            doc_len = struct.unpack_from("<i", reply, 5)[0]
            ok = ok_field(reply[5 : 5 + doc_len])
            if ok != 1:
                raise ValueError(f"ping answered ok={ok!r}")
    except (OSError, ValueError, IndexError, struct.error) as err:
        print(f"mongodb ping to {host}:{port} failed: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
