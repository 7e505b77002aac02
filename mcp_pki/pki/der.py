"""The little DER (X.690) encoding we do by hand, where cryptography offers no builder."""

import base64


def der(tag: int, content: bytes) -> bytes:
    """One element: tag, definite length, content."""
    length = len(content)
    if length < 0x80:
        return bytes((tag, length)) + content
    size = (length.bit_length() + 7) // 8
    return bytes((tag, 0x80 | size)) + length.to_bytes(size, "big") + content


def children(data: bytes) -> list[bytes]:
    """The encoded elements inside the outermost SEQUENCE of `data`."""
    def header(at: int) -> tuple[int, int]:  # (content start, content length)
        first = data[at + 1]
        if first < 0x80:
            return at + 2, first
        size = first & 0x7F
        return at + 2 + size, int.from_bytes(data[at + 2 : at + 2 + size], "big")

    start, length = header(0)
    found, at = [], start
    while at < start + length:
        content, size = header(at)
        found.append(data[at : content + size])
        at = content + size
    return found


def integer(value: int) -> bytes:
    """A non-negative INTEGER, minimal, with room for the sign bit."""
    return der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def oid(dotted: str) -> bytes:
    first, second, *rest = (int(arc) for arc in dotted.split("."))
    body = bytearray()
    for arc in (40 * first + second, *rest):
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body += bytes(reversed(chunk))
    return der(0x06, bytes(body))


def sequence(*items: bytes) -> bytes:
    return der(0x30, b"".join(items))


def octets(value: bytes) -> bytes:
    return der(0x04, value)


def pem_encode(data: bytes, label: str = "X509 CRL") -> bytes:
    """PEM armour (RFC 7468) around DER we already hold."""
    body = base64.b64encode(data)
    lines = b"\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN {label}-----\n".encode() + lines + f"\n-----END {label}-----\n".encode()
