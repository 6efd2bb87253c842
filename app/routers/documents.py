"""Documents: asynchronous ingestion (JSON or file upload), listing, reading and deleting."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.dependencies import ServicesDep, SettingsDep, require_api_key
from app.errors import InvalidInput, NotFound, PayloadTooLarge
from app.ingestion import NewDocument, new_document_id
from app.schemas import (
    ChunkOut,
    Deleted,
    DocumentList,
    DocumentOut,
    DocumentsIn,
    ErrorResponse,
    IngestAccepted,
)
from app.settings import Settings
from retrieval import DocumentRecord, extract_text, supported_suffixes

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/documents", tags=["documents"])

def _standalone_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its nested models written in place.

    Pydantic refers to nested models through `#/$defs/...`, which points nowhere once the
    schema sits inside the OpenAPI document.
    """
    schema = model.model_json_schema()
    definitions = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            reference = node.get("$ref", "")
            if reference.startswith("#/$defs/"):
                return inline(definitions[reference.removeprefix("#/$defs/")])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(value) for value in node]
        return node

    return inline(schema)


# The longest file name common file systems store.
MAX_FILE_NAME_CHARS = 255

_ERRORS = {
    code: {"model": ErrorResponse}
    for code in (401, 403, 413, 422, 503)
}

# The body is parsed by hand (JSON or multipart), so its two shapes are described here.
_INGEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _standalone_schema(DocumentsIn)},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "Files of type " + ", ".join(supported_suffixes()),
                        }
                    },
                    "required": ["files"],
                }
            },
        },
    }
}


@router.post(
    "",
    status_code=202,
    response_model=IngestAccepted,
    response_model_exclude_none=True,
    responses={200: {"model": IngestAccepted, "description": "With `?wait=true`: finished"}, **_ERRORS},
    openapi_extra=_INGEST_BODY,
    summary="Ingest documents (JSON or file upload)",
    dependencies=[Depends(require_api_key)],
)
async def ingest(
    request: Request,
    response: Response,
    services: ServicesDep,
    settings: SettingsDep,
    wait: Annotated[bool, Query(description="Answer once the documents are indexed and cached.")] = False,
) -> IngestAccepted:
    """Queue documents for indexing and KV-cache precomputation; poll the job it returns."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        documents = await _uploaded_documents(request, settings)
    elif content_type.startswith("application/json"):
        documents = await _json_documents(request)
    else:
        raise InvalidInput(
            "send the documents as application/json ({\"documents\": [...]}) "
            "or as multipart/form-data file uploads",
            code="unsupported_media_type",
        )
    if len(documents) > settings.max_documents_per_request:
        raise PayloadTooLarge(
            f"{len(documents)} documents in one request; at most "
            f"{settings.max_documents_per_request} are accepted"
        )
    ids = [d.id for d in documents]
    if len(set(ids)) != len(ids):
        raise InvalidInput("two documents in the request have the same id", code="duplicate_id")
    # Committed (text and job) before the answer: a crash after it loses nothing.
    job = await asyncio.to_thread(services.submit, documents)
    if not wait:
        return IngestAccepted(job_id=job.id, document_ids=ids)
    finished = await services.wait_for_job(job.id) or job
    response.status_code = 200
    return IngestAccepted(
        job_id=job.id,
        document_ids=ids,
        status=finished.status,
        progress=finished.progress,
        error=finished.error,
    )


async def _json_documents(request: Request) -> list[NewDocument]:
    body = await request.body()
    try:
        parsed = DocumentsIn.model_validate_json(body)
    except ValidationError as error:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in error.errors(include_url=False)]
        ) from None
    return [
        NewDocument(d.id or new_document_id(), d.text, d.metadata or {}) for d in parsed.documents
    ]


async def _uploaded_documents(request: Request, settings: Settings) -> list[NewDocument]:
    limit = settings.max_documents_per_request
    try:
        form = await request.form(max_files=limit)
    except StarletteHTTPException as error:  # the parser's 400: the caller's mistake, so 4xx
        if "too many files" in str(error.detail).lower():
            raise PayloadTooLarge(f"more than {limit} files in one request") from None
        raise InvalidInput(
            f"the upload is not valid multipart/form-data: {error.detail}", code="invalid_upload"
        ) from None
    uploads = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
    if not uploads:
        raise InvalidInput("the upload holds no files (send them in a `files` field)", code="no_files")
    documents: list[NewDocument] = []
    received = 0
    for upload in uploads:
        name = _checked_file_name(upload.filename)
        data = await upload.read()
        received += len(data)
        if received > settings.max_request_bytes:
            raise PayloadTooLarge(
                f"the uploaded files exceed {settings.max_request_bytes} bytes; send fewer or smaller files"
            )
        # Extraction is quick next to embedding and encoding; doing it here turns a bad file
        # into a 422 at once rather than a failed job later.
        text = await asyncio.to_thread(extract_text, name, data)
        if not text.strip():
            raise InvalidInput(f"{name} holds no text", code="invalid_document")
        documents.append(NewDocument(new_document_id(), text, {"filename": name}))
    return documents


@router.get("", response_model=DocumentList, responses=_ERRORS)
async def list_documents(
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> DocumentList:
    """The stored documents (without their text), oldest first."""
    records = await asyncio.to_thread(services.list_documents)
    return DocumentList(
        documents=[_document_out(r) for r in records[offset : offset + limit]], total=len(records)
    )


@router.get("/{document_id}", response_model=DocumentOut, responses={404: {"model": ErrorResponse}, **_ERRORS})
async def get_document(document_id: str, services: ServicesDep) -> DocumentOut:
    """One document with its text and chunks."""
    record = await asyncio.to_thread(services.get_document, document_id)
    if record is None:
        raise NotFound(f"no document with id {document_id!r}")
    return _document_out(record)


@router.delete(
    "/{document_id}",
    response_model=Deleted,
    responses={404: {"model": ErrorResponse}, **_ERRORS},
    dependencies=[Depends(require_api_key)],
)
async def delete_document(document_id: str, services: ServicesDep) -> Deleted:
    """Remove the document's chunks from the index and their KV caches from every tier."""
    if not await asyncio.to_thread(services.delete_document, document_id):
        raise NotFound(f"no document with id {document_id!r}")
    return Deleted(id=document_id)


def _checked_file_name(name: str | None) -> str:
    """The upload's file name, refused (422) when it is not a plain name.

    The name is stored and shown back to users, so one carrying directories (`../etc/x.txt`,
    `C:\\x.txt`) or control characters is refused rather than quietly rewritten.
    """
    if not name:
        return "upload.txt"
    if (
        "/" in name
        or "\\" in name
        or name.strip(".") == ""
        or len(name) > MAX_FILE_NAME_CHARS
        or any(ord(char) < 32 or ord(char) == 127 for char in name)
    ):
        raise InvalidInput(
            f"file name {name[:80]!r} is not accepted: send a plain name of at most "
            f"{MAX_FILE_NAME_CHARS} characters, without directories or control characters",
            code="invalid_file_name",
        )
    return name


def _document_out(record: DocumentRecord) -> DocumentOut:
    return DocumentOut(
        id=record.id,
        metadata=record.metadata,
        state=record.state,
        created_at=record.created_at,
        updated_at=record.updated_at,
        chunk_count=record.chunk_count,
        text=record.text,
        chunks=None
        if record.chunks is None
        else [ChunkOut(id=c.id, position=c.position, text=c.text, token_count=c.token_count) for c in record.chunks],
    )
