"""`multipart/form-data` bodies → named parts, stdlib only (`cgi` is gone in 3.13; `email` is slow on big bodies)."""

from __future__ import annotations

from dataclasses import dataclass
from email import policy
from email.parser import BytesParser

from processor.errors import InvalidSchema

_HEADER_PARSER = BytesParser(policy=policy.HTTP)


@dataclass(frozen=True, slots=True)
class Part:
    """One form field: its name, the file name when it is a file, and its bytes exactly as sent."""

    name: str
    filename: str | None
    data: bytes


def parse_form(body: bytes, boundary: str, max_parts: int) -> list[Part]:
    """Split a form body on its boundary (RFC 7578). Anything malformed is `invalid_schema`."""
    if not boundary or len(boundary) > 70:
        raise InvalidSchema("multipart/form-data needs a boundary of 1-70 characters")
    delimiter = b"--" + boundary.encode("latin-1")
    start = body.find(delimiter)
    if start < 0:
        raise InvalidSchema("multipart body does not contain its boundary")
    parts: list[Part] = []
    pos = start + len(delimiter)
    # bytes.find over the whole body: one C-speed pass, and part contents are single slices of it.
    while not body.startswith(b"--", pos):
        if len(parts) >= max_parts:
            raise InvalidSchema(f"multipart body has more than {max_parts} parts")
        line_end = body.find(b"\r\n", pos)
        end = body.find(b"\r\n" + delimiter, line_end)
        if line_end < 0 or end < 0:
            raise InvalidSchema("multipart body is truncated (no closing boundary)")
        parts.append(_part(body[line_end + 2 : end]))
        pos = end + 2 + len(delimiter)
    return parts


def _part(raw: bytes) -> Part:
    if raw.startswith(b"\r\n"):
        head, content = b"", raw[2:]
    else:
        head, sep, content = raw.partition(b"\r\n\r\n")
        if not sep:
            raise InvalidSchema("multipart part has no blank line after its headers")
    try:
        headers = _HEADER_PARSER.parsebytes(head + b"\r\n\r\n", headersonly=True)
        name = headers.get_param("name", header="content-disposition")
        filename = headers.get_filename()
    except (ValueError, TypeError, IndexError) as exc:  # email raises these on malformed header syntax
        raise InvalidSchema(f"multipart part has malformed headers: {str(exc)[:200]}") from None
    # A part without a name is an unknown field to every caller, and unknown fields are ignored (SPEC §4).
    return Part(
        name=name if isinstance(name, str) else "",
        filename=filename if isinstance(filename, str) else None,
        data=content,
    )
