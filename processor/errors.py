"""Exception hierarchy: one class per stable error code, so one place can turn any failure into a dead letter."""

from __future__ import annotations


class ProcessorError(Exception):
    """Base of every error the processor turns into a dead letter or an exit code."""

    code = "processing_failed"
    stage = "process"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidJson(ProcessorError):
    """The value looked like JSON (or said so) but does not parse as UTF-8 JSON."""

    code = "invalid_json"
    stage = "parse"


class InvalidSchema(ProcessorError):
    """The JSON envelope breaks the envelope rules (docs/EVENTS.md) (types, lengths, exactly one image source)."""

    code = "invalid_schema"
    stage = "parse"


class MissingImage(ProcessorError):
    """There are no image bytes at all (empty value, empty base64)."""

    code = "missing_image"
    stage = "parse"


class ImageTooLarge(ProcessorError):
    """The image's bytes exceed MAX_IMAGE_BYTES."""

    code = "image_too_large"
    stage = "parse"


class ImageTooManyPixels(ProcessorError):
    """The image header declares more than MAX_IMAGE_PIXELS (decompression-bomb guard)."""

    code = "image_too_many_pixels"
    stage = "decode"


class ImageDecodeFailed(ProcessorError):
    """The bytes are not an image we can decode (unknown format, truncated, corrupt)."""

    code = "image_decode_failed"
    stage = "decode"


class FaceOutOfBounds(ProcessorError):
    """A face box lies wholly outside the image, so there is nothing to crop."""

    code = "face_out_of_bounds"
    stage = "decode"


class UrlNotAllowed(ProcessorError):
    """`image_url` is refused: fetching is off, the host is not allowlisted, or it resolves somewhere private."""

    code = "url_not_allowed"
    stage = "fetch"


class FetchFailed(ProcessorError):
    """Fetching an allowed `image_url` failed (timeout, HTTP error, too large, bad redirect)."""

    code = "fetch_failed"
    stage = "fetch"


class InferenceFailed(ProcessorError):
    """The model raised or returned non-finite output for this item (isolated by batch splitting)."""

    code = "inference_failed"
    stage = "inference"


class ResultTooLarge(ProcessorError):
    """The result (with its echoed metadata) was refused by OUTPUT_TOPIC for size; dead-lettered with a cut payload.

    Raised at publish time, never by /detect, so it is not one of the input-side `DLQ_ERRORS`.
    """

    code = "result_too_large"
    stage = "publish"


class ConfigError(Exception):
    """A setting or the model directory is unusable; the CLI exits 2 with this message."""


class TransactionAborted(Exception):
    """Exactly-once: an abortable transaction error (e.g. a rebalance made the group generation stale) was aborted.

    Nothing of it is visible to read_committed readers; its events are released again in the next transaction.
    """


class Unrecoverable(Exception):
    """The processor cannot go on (session broken for good, delivery failed for good); exit 1, commit nothing more."""


DLQ_ERRORS: tuple[type[ProcessorError], ...] = (
    InvalidJson,
    InvalidSchema,
    MissingImage,
    ImageTooLarge,
    ImageTooManyPixels,
    ImageDecodeFailed,
    FaceOutOfBounds,
    UrlNotAllowed,
    FetchFailed,
    InferenceFailed,
)
ERROR_CODES: tuple[str, ...] = tuple(cls.code for cls in DLQ_ERRORS)
