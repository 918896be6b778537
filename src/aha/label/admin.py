"""The admin's API: progress and agreement, the export, revoking a labeler."""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict

from aha.label.deps import admin, admin_writer, store
from aha.label.store import Store

router = APIRouter(prefix="/api/admin")


class RevokeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


@router.get("/stats")
def admin_stats(u: dict = Depends(admin), db: Store = Depends(store)):
    return db.stats()


@router.get("/export")
def admin_export(u: dict = Depends(admin), db: Store = Depends(store)):
    lines = (json.dumps(row, ensure_ascii=False) + "\n" for row in db.export_rows())
    return StreamingResponse(
        lines, media_type="application/x-ndjson", headers={"content-disposition": 'attachment; filename="prefs.jsonl"'}
    )


@router.post("/revoke")
def revoke(body: RevokeIn, u: dict = Depends(admin_writer), db: Store = Depends(store)):
    """The labeler's token and sessions stop working at once; their rankings stay."""
    changed = db.revoke(body.name)
    return {"name": body.name.strip(), "revoked": True, "already": not changed}
