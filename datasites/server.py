"""Serve one hospital datasite in this process, on loopback only.

syft's own `orchestra.launch` listens on 0.0.0.0 by default, forks a second process, keeps
state in /tmp, and in non-dev mode gives the server a new random identity on every start
(so nothing survives a restart). Here the hospital builds its `Datasite` itself: a fixed
uid and signing key from `identity.json`, state under the hospital's own folder, the root
login from the hospital's secrets, and uvicorn bound to 127.0.0.1.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from datasites.audit import AuditLog
from datasites.config import HOSPITAL_ROOT_ENV, HospitalConfig
from datasites.identity import Identity
from datasites.server_audit import audit_api_calls, audit_auth_routes
from datasites.syft_fixes import apply_all as apply_syft_fixes

if TYPE_CHECKING:
    from fastapi import FastAPI
    from syft.server.datasite import Datasite

API_PREFIX = "/api/v2"


def build_worker(config: HospitalConfig, identity: Identity) -> Datasite:
    """Create (or reopen) the hospital's syft Datasite from its persisted identity."""
    config.syft_dir.mkdir(parents=True, exist_ok=True)
    apply_syft_fixes()
    # syft resolves its state folder as tempdir / SYFT_TEMP_ROOT / uid; an absolute root
    # wins the join, which puts the database and blobs under the hospital's folder.
    os.environ["SYFT_TEMP_ROOT"] = str(config.syft_dir)
    from syft.server.credentials import SyftSigningKey
    from syft.server.datasite import Datasite
    from syft.types.uid import UID

    return Datasite(
        name=config.name,
        id=UID.from_string(identity.server_uid),
        signing_key=SyftSigningKey.from_string(identity.signing_key),
        root_email=identity.admin_email,
        root_username=f"{config.name} operator",
        root_password=identity.admin_password,
        processes=1,
        in_memory_workers=True,
        deployment_type="remote",
        reset=False,
    )


def build_app(worker: Datasite, audit: AuditLog | None = None) -> FastAPI:
    """The HTTP API a syft client talks to, without syft's allow-all CORS policy; with an
    audit log, refused calls, logins and registrations and new requests are recorded."""
    from fastapi import APIRouter, FastAPI
    from syft.server.routes import make_routes
    from syft.server.uvicorn import get_lifetime

    app = FastAPI(title=worker.name, lifespan=get_lifetime(worker=worker))
    router = APIRouter()
    router.include_router(make_routes(worker=worker))
    app.include_router(router, prefix=API_PREFIX)
    if audit is not None:
        audit_api_calls(worker, audit)
        audit_auth_routes(app, worker, audit, API_PREFIX)
    return app


def serve(config: HospitalConfig) -> None:
    """Run the datasite until SIGINT/SIGTERM, then stop it cleanly."""
    import uvicorn

    identity = Identity.load_or_create(config.identity_path, config.name)
    os.environ[HOSPITAL_ROOT_ENV] = str(config.root)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    worker = build_worker(config, identity)
    # syft sets the root logger to CRITICAL while building the server; the runtime's
    # incident reports and per-round lines are for the operator, so keep them.
    logging.getLogger("datasites").setLevel(logging.INFO)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    uvicorn.run(
        build_app(worker, AuditLog.open(config.root)),
        host=config.host,
        port=config.port,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
