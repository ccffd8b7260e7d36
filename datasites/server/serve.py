"""Serve one hospital datasite in this process: on loopback, or over TLS on its address.

syft's own `orchestra.launch` listens on 0.0.0.0 by default, forks a second process, keeps
state in /tmp, and in non-dev mode gives the server a new random identity on every start
(so nothing survives a restart). Here the hospital builds its `Datasite` itself: a fixed
uid and signing key from `identity.json`, state under the hospital's own folder, the root
login from the hospital's secrets, and uvicorn bound to the config's host (127.0.0.1 for
the local federation). A config with TLS is served with the certificate and key in the
hospital's folder; `HospitalConfig` refuses a non-loopback host without TLS, so plain HTTP
never leaves the machine.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from datasites.server import code_owner
from datasites.server.admin_key import forget_admin_key
from datasites.server.audit_hooks import audit_api_calls, audit_auth_routes
from datasites.server.gate import ROUTES, Gate, GateSettings
from datasites.server.guard import Guard
from datasites.server.phase_route import phase_router
from datasites.server.refusals import RefusalAudit
from datasites.server.rotate import apply_pending_rotation
from datasites.server.syft_fixes import apply_all as apply_syft_fixes
from datasites.site.audit import AuditLog
from datasites.site.identity import Identity
from datasites.site.paths import HOSPITAL_ROOT_ENV, HospitalConfig, SiteSettings
from datasites.site.permissions import PRIVATE_UMASK, narrow_permissions

if TYPE_CHECKING:
    from fastapi import FastAPI
    from syft.server.datasite import Datasite

API_PREFIX = "/api/v2"
logger = logging.getLogger(__name__)


def build_worker(config: HospitalConfig, identity: Identity) -> Datasite:
    """Create (or reopen) the hospital's syft Datasite from its persisted identity."""
    config.syft_dir.mkdir(parents=True, exist_ok=True)
    apply_syft_fixes()
    code_owner.install()  # the runtime keys a study by the account that submitted it
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


def database_path(config: HospitalConfig, identity: Identity) -> Path:
    """The SQLite file `build_worker`'s Datasite opens: syft's default layout under
    SYFT_TEMP_ROOT, `<syft>/<uid>/db/<uid>_json.db`."""
    from syft.types.uid import UID

    uid = str(UID.from_string(identity.server_uid))
    return config.syft_dir / uid / "db" / f"{uid}_json.db"


def build_app(worker: Datasite, audit: AuditLog | None = None) -> FastAPI:
    """The HTTP API a syft client talks to, without syft's allow-all CORS policy or API docs,
    and only the routes this platform uses (`datasites.server.gate.ROUTES`); with an audit
    log, the unused syft surface is closed (`datasites.server.guard`), every request passes
    the gate first (sizes, rates, logins, who may call what, `datasites.server.gate`), and
    refused calls (one entry per source and interval, `datasites.server.refusals`), logins,
    registrations and new requests are recorded."""
    from fastapi import APIRouter, FastAPI
    from syft.server.routes import make_routes
    from syft.server.uvicorn import get_lifetime

    # No /docs, /redoc or /openapi.json: a map of the API helps nobody the hospital serves.
    app = FastAPI(
        title=worker.name,
        lifespan=get_lifetime(worker=worker),
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    served = {path.removeprefix(API_PREFIX) for _, path in ROUTES}
    syft_routes = make_routes(worker=worker)
    syft_routes.routes = [r for r in syft_routes.routes if getattr(r, "path", None) in served]
    router = APIRouter()
    router.include_router(syft_routes)
    app.include_router(router, prefix=API_PREFIX)
    if audit is not None:
        settings = GateSettings.from_env()
        audit = RefusalAudit(audit.path, interval=settings.refusal_interval)
        audit_api_calls(worker, audit)  # syft's own refusals (inner)
        Guard(worker, audit).install()  # what syft would allow but this hospital does not
        audit_auth_routes(app, worker, audit, API_PREFIX)
        # A secure study's light phases, outside syft's code execution (issue 26).
        app.include_router(phase_router(worker, audit), prefix=API_PREFIX)
        app.add_middleware(Gate, worker=worker, audit=audit, settings=settings)  # outermost
    return app


def serve(config: HospitalConfig) -> None:
    """Run the datasite until SIGINT/SIGTERM, then stop it cleanly."""
    import uvicorn

    from datasites.server.connections import DeadlineProtocol

    # Everything syft writes later (database, WAL, blobs) is owner-only from the start.
    os.umask(PRIVATE_UMASK)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # Before anything is written: it counts what was readable.
    narrow_permissions(config, warn=True, log=logger.warning)
    record_settings(config)
    identity = Identity.load_or_create(config.identity_path, config.name)
    os.environ[HOSPITAL_ROOT_ENV] = str(config.root)
    if apply_pending_rotation(config, identity, database_path(config, identity)):
        logger.info("%s: new signing keys and passwords applied", config.name)
    worker = build_worker(config, identity)
    forget_admin_key(worker, database_path(config, identity))
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
        http=DeadlineProtocol,  # idle and slow-header connections are closed
        **proxy_options(),
        **tls_options(config),
    )


TRUSTED_PROXY_ENV = "DATASITE_TRUSTED_PROXY"


def proxy_options() -> dict[str, object]:
    """Whose `X-Forwarded-For` is believed: nobody's unless the operator names the reverse
    proxy's address(es) in DATASITE_TRUSTED_PROXY. uvicorn believes it from 127.0.0.1 by
    default, so any local process or loopback tunnel could pick the address the gate
    counts limits and lockouts by (found live)."""
    trusted = os.environ.get(TRUSTED_PROXY_ENV, "").strip()
    if not trusted:
        return {"proxy_headers": False}
    return {"proxy_headers": True, "forwarded_allow_ips": trusted}


def tls_options(config: HospitalConfig) -> dict[str, str]:
    """uvicorn's TLS arguments: the hospital's own certificate and key, or none on loopback.

    Python's default server context already refuses anything older than TLS 1.2.
    """
    if not config.tls:
        return {}
    return {"ssl_certfile": str(config.tls_cert_path), "ssl_keyfile": str(config.tls_key_path)}


def record_settings(config: HospitalConfig) -> None:
    """Write how the hospital is served now to site.json (the operator's commands and
    invitations read it), keeping the DNS names init recorded."""
    try:
        previous = SiteSettings.read(config)
    except ValueError:  # damaged: rewritten from what is served now
        previous = None
    dns_names = previous.dns_names if previous else ()
    SiteSettings(config.host, config.port, config.tls, dns_names).write(config)
