"""Input envelopes (docs/EVENTS.md): JSON vs raw bytes, event ids, and every refusal with its dead-letter code."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from processor.envelope import decode_b64, looks_like_json, open_envelope
from processor.errors import ImageDecodeFailed, ImageTooLarge, InvalidJson, InvalidSchema, MissingImage
from processor.inflight import Headers, InFlight

MAX_BYTES = 4096
MAX_FACES = 4
IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(200))  # the envelope does not look inside the image
BOX = {"x": 1, "y": 2, "width": 3, "height": 4}


def _item(value: bytes, headers: Headers | None = None) -> InFlight:
    return InFlight(topic="images", partition=2, offset=41, key=b"k", value=value, headers=headers, timestamp_ms=1)


def _doc(**fields: Any) -> bytes:
    return json.dumps({"event_id": "e-1", **fields}).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _open(item: InFlight) -> tuple[bytes | None, str | None]:
    return open_envelope(item, MAX_BYTES, MAX_FACES)


# --- JSON or raw --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [b"{}", b"  \n\t{}", b"[1]", b"\r\n [", b"{not json"])
def test_value_starting_with_brace_or_bracket_after_whitespace_is_json(value: bytes) -> None:
    assert looks_like_json(value, None)


@pytest.mark.parametrize("value", [IMAGE, b"\xff\xd8\xff\xe0", b"  x{", b"", b"   "])
def test_other_values_are_image_bytes(value: bytes) -> None:
    assert not looks_like_json(value, None)


@pytest.mark.parametrize("content_type", [b"application/json", b"Application/JSON; charset=utf-8"])
def test_json_content_type_header_makes_any_value_json(content_type: bytes) -> None:
    assert looks_like_json(IMAGE, [("Content-Type", content_type)])


def test_non_json_content_type_does_not_force_json() -> None:
    assert not looks_like_json(IMAGE, [("content-type", b"image/png")])


# --- event ids ----------------------------------------------------------------------------------------------


def test_raw_image_takes_event_id_from_header() -> None:
    item = _item(IMAGE, [("event_id", b"hdr-7")])
    assert _open(item) == (IMAGE, None)
    assert item.event_id == "hdr-7"


def test_raw_image_without_header_gets_topic_partition_offset_id() -> None:
    item = _item(IMAGE)
    assert _open(item) == (IMAGE, None)
    assert item.event_id == "images:2:41"


def test_json_event_id_comes_from_the_body_not_the_header() -> None:
    item = _item(_doc(image_b64=_b64(IMAGE)), [("event_id", b"hdr-7")])
    _open(item)
    assert item.event_id == "e-1"


def test_refused_json_keeps_the_header_id_for_its_dead_letter() -> None:
    item = _item(b"{broken", [("event_id", b"hdr-9")])
    with pytest.raises(InvalidJson):
        _open(item)
    assert item.event_id == "hdr-9"


# --- accepted JSON ------------------------------------------------------------------------------------------


def test_json_envelope_fills_event_fields_and_returns_image_bytes() -> None:
    value = _doc(post_id="p-9", user_id="u-7", image_b64=_b64(IMAGE), faces=[BOX], metadata={"any": "thing"})
    item = _item(value)
    assert _open(item) == (IMAGE, None)
    assert (item.post_id, item.user_id, item.metadata) == ("p-9", "u-7", {"any": "thing"})
    assert item.faces is not None and [f.model_dump() for f in item.faces] == [BOX]


def test_image_url_is_returned_for_fetching() -> None:
    assert _open(_item(_doc(image_url="https://cdn.facesocial.example/a.jpg"))) == (
        None,
        "https://cdn.facesocial.example/a.jpg",
    )


def test_data_url_prefix_is_accepted_in_image_b64() -> None:
    data, _ = _open(_item(_doc(image_b64="data:image/png;base64," + _b64(IMAGE))))
    assert data == IMAGE


def test_unknown_extra_fields_are_ignored() -> None:
    data, _ = _open(_item(_doc(image_b64=_b64(IMAGE), camera="front", tags=[1, 2], nested={"a": None})))
    assert data == IMAGE


def test_integer_valued_float_face_box_is_accepted() -> None:
    item = _item(_doc(image_b64=_b64(IMAGE), faces=[{**BOX, "x": 10.0}]))
    _open(item)
    assert item.faces is not None and item.faces[0].x == 10


def test_exactly_max_faces_boxes_are_accepted() -> None:
    item = _item(_doc(image_b64=_b64(IMAGE), faces=[BOX] * MAX_FACES))
    _open(item)
    assert item.faces is not None and len(item.faces) == MAX_FACES


# --- refusals -----------------------------------------------------------------------------------------------


REFUSALS: list[tuple[str, bytes, Headers | None, type]] = [
    ("empty_value", b"", None, MissingImage),
    ("empty_image_b64", _doc(image_b64=""), None, MissingImage),
    ("empty_data_url", _doc(image_b64="data:image/png;base64,"), None, MissingImage),
    ("unterminated_json", b'{"event_id": "e", "image_b64": "x"', None, InvalidJson),
    ("non_utf8_json", b'{"event_id": "\xff\xfe"}', None, InvalidJson),
    ("image_labelled_json", IMAGE, [("content-type", b"application/json")], InvalidJson),
    ("json_array", b"[1, 2]", None, InvalidSchema),
    ("json_number_labelled_json", b"42", [("content-type", b"application/json")], InvalidSchema),
    ("missing_event_id", json.dumps({"image_b64": _b64(IMAGE)}).encode(), None, InvalidSchema),
    ("event_id_number", json.dumps({"event_id": 7, "image_b64": _b64(IMAGE)}).encode(), None, InvalidSchema),
    ("event_id_empty", json.dumps({"event_id": "", "image_b64": _b64(IMAGE)}).encode(), None, InvalidSchema),
    ("event_id_257", json.dumps({"event_id": "e" * 257, "image_b64": _b64(IMAGE)}).encode(), None, InvalidSchema),
    ("both_sources", _doc(image_b64=_b64(IMAGE), image_url="https://a.example/x.png"), None, InvalidSchema),
    ("no_source", _doc(post_id="p"), None, InvalidSchema),
    ("metadata_list", _doc(image_b64=_b64(IMAGE), metadata=[1]), None, InvalidSchema),
    ("faces_object", _doc(image_b64=_b64(IMAGE), faces={"x": 1}), None, InvalidSchema),
    ("face_fractional", _doc(image_b64=_b64(IMAGE), faces=[{**BOX, "x": 1.5}]), None, InvalidSchema),
    ("face_zero_width", _doc(image_b64=_b64(IMAGE), faces=[{**BOX, "width": 0}]), None, InvalidSchema),
    ("face_string", _doc(image_b64=_b64(IMAGE), faces=[{**BOX, "y": "2"}]), None, InvalidSchema),
    ("too_many_faces", _doc(image_b64=_b64(IMAGE), faces=[BOX] * (MAX_FACES + 1)), None, InvalidSchema),
    ("bad_base64", _doc(image_b64="!!!not*base64@@@"), None, ImageDecodeFailed),
    ("raw_over_max", IMAGE + bytes(MAX_BYTES), [("event_id", b"big")], ImageTooLarge),
    ("b64_over_max", _doc(image_b64=_b64(bytes(MAX_BYTES + 1))), None, ImageTooLarge),
]


@pytest.mark.parametrize(
    ("value", "headers", "error"), [pytest.param(*r[1:], id=f"{r[0]}-{r[3].code}") for r in REFUSALS]
)
def test_refused_envelope_raises_error_with_its_dlq_code(value: bytes, headers: Headers | None, error: type) -> None:
    with pytest.raises(error):
        _open(_item(value, headers))


def test_codes_of_refusals_match_the_spec() -> None:
    assert {e.code for e in (MissingImage, InvalidJson, InvalidSchema, ImageTooLarge, ImageDecodeFailed)} == {
        "missing_image",
        "invalid_json",
        "invalid_schema",
        "image_too_large",
        "image_decode_failed",
    }


def test_image_too_large_is_judged_from_base64_length_before_decoding() -> None:
    # Not valid base64 at all: only a length check can refuse it as too large (decoding would fail instead).
    with pytest.raises(ImageTooLarge):
        decode_b64("!" * (MAX_BYTES * 2), MAX_BYTES)


def test_image_b64_at_the_size_limit_is_accepted() -> None:
    assert decode_b64(_b64(bytes(MAX_BYTES)), MAX_BYTES) == bytes(MAX_BYTES)


def test_raw_image_at_the_size_limit_is_accepted() -> None:
    value = IMAGE + bytes(MAX_BYTES - len(IMAGE))
    assert _open(_item(value)) == (value, None)


def test_invalid_base64_is_image_decode_failed() -> None:
    with pytest.raises(ImageDecodeFailed):
        decode_b64("abc", MAX_BYTES)  # incorrect padding
