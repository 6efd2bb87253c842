"""Ingestion jobs: their status and progress."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

from fastapi import APIRouter

from app.dependencies import ServicesDep
from app.errors import NotFound
from app.jobs import Job
from app.schemas import ErrorResponse, JobOut

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get(
    "/{job_id}",
    response_model=JobOut,
    responses={code: {"model": ErrorResponse} for code in (401, 403, 404, 503)},
)
async def get_job(job_id: str, services: ServicesDep) -> JobOut:
    """The job's status (`queued`, `running`, `done`, `failed`), progress from 0 to 1, and error."""
    job = await asyncio.to_thread(services.job, job_id)
    if job is None:
        raise NotFound(f"no job with id {job_id!r}")
    return job_out(job)


def job_out(job: Job) -> JobOut:
    """The API view of a job."""
    return JobOut(
        job_id=job.id,
        status=job.status,
        progress=job.progress,
        error=job.error,
        document_ids=job.document_ids,
        documents_total=job.documents_total,
        documents_indexed=job.documents_indexed,
        chunks_total=job.chunks_total,
        chunks_stored=job.chunks_stored,
        created_at=datetime.fromtimestamp(job.created_at, timezone.utc),
        updated_at=datetime.fromtimestamp(job.updated_at, timezone.utc),
    )
