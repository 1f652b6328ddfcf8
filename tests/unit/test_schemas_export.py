"""`schemas export`: one valid JSON Schema file per wire shape, and what the processor writes conforms to them."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from devtools.samples import json_event
from processor.app import load_engine
from processor.cli import main
from processor.decode import DecodeLimits, Decoder, Preprocessor
from processor.errors import ImageDecodeFailed
from processor.inflight import InFlight
from processor.outcomes import dead_letter_outcome, result_outcome
from processor.settings import Settings
from schemas import DLQ_HEADERS, DeadLetterHeaders, ScoreResult
from schemas.export import DIALECT, SCHEMAS, export_schemas
from tests.corpus import jpeg_bytes

jsonschema_rs = pytest.importorskip("jsonschema_rs", reason="jsonschema-rs comes with the [dev] extra (schemathesis)")

FILES = ("image-event.schema.json", "score-result.schema.json", "dead-letter.schema.json")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    directory = tmp_path_factory.mktemp("schemas")
    export_schemas(directory)
    return {name: json.loads((directory / name).read_text()) for name in FILES}


def scored_item() -> InFlight:
    """An event decoded and scored by the bundled model, as the pipeline does it (without Kafka)."""
    engine = load_engine(Settings(providers="cpu"))
    limits = DecodeLimits(max_image_bytes=1 << 20, max_image_pixels=10_000_000, max_faces=8)
    value = json_event("e-1", jpeg_bytes(96, 128), [{"x": 8, "y": 8, "width": 64, "height": 64}])
    item = InFlight(
        topic="images.uploaded", partition=0, offset=42, key=b"k", value=value, headers=[], timestamp_ms=None
    )
    Decoder(Preprocessor(engine.model.preprocess), limits, None).decode(item)
    assert item.crops is not None
    item.probs, item.scored_by = engine.infer(item.crops), engine
    return item


def test_export_writes_one_2020_12_schema_per_wire_shape(exported: dict[str, dict[str, Any]]) -> None:
    assert set(SCHEMAS) == set(FILES)
    for name, document in exported.items():
        assert document["$schema"] == DIALECT and document["$id"].endswith(name)
        assert document["description"]
        jsonschema_rs.meta.validate(document)


def test_cli_schemas_export_writes_the_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schemas", "export", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(FILES)
    assert capsys.readouterr().out.count(".schema.json") == len(FILES)


def test_a_real_result_conforms_to_the_result_schema_and_model(exported: dict[str, dict[str, Any]]) -> None:
    value = result_outcome(scored_item(), "images.deepfake-scores").value
    jsonschema_rs.validate(exported["score-result.schema.json"], json.loads(value))
    result = ScoreResult.model_validate_json(value)
    assert result.source.offset == 42 and result.faces is not None and len(result.faces) == 1


def test_the_input_schema_accepts_an_envelope_and_refuses_a_non_object(exported: dict[str, dict[str, Any]]) -> None:
    schema = exported["image-event.schema.json"]
    assert jsonschema_rs.is_valid(schema, json.loads(json_event("e-2", b"\xff\xd8")))
    assert not jsonschema_rs.is_valid(schema, [1, 2])
    assert not jsonschema_rs.is_valid(schema, {"image_b64": "AAAA"})  # event_id is required


def test_a_real_dead_letter_conforms_to_the_dead_letter_schema(exported: dict[str, dict[str, Any]]) -> None:
    item = InFlight(
        topic="in",
        partition=2,
        offset=7,
        key=None,
        value=b"\x00junk",
        headers=[("trace", b"t-1")],
        timestamp_ms=1_700_000_000_000,
        event_id="e-3",
    )
    outcome = dead_letter_outcome(item, ImageDecodeFailed("not an image"), "dlq")
    headers = {k: v.decode() for k, v in outcome.headers}
    record = {"key": None, "value": base64.b64encode(outcome.value).decode(), "headers": headers}
    jsonschema_rs.validate(exported["dead-letter.schema.json"], record)
    parsed = DeadLetterHeaders.model_validate(headers)
    assert (parsed.error_code, parsed.source_offset, parsed.event_id) == ("image_decode_failed", "7", "e-3")


def test_dead_letter_headers_model_names_exactly_the_spec_headers() -> None:
    aliases = {field.alias or name for name, field in DeadLetterHeaders.model_fields.items()}
    assert set(DLQ_HEADERS) <= aliases and aliases - set(DLQ_HEADERS) == {"event_id"}
