"""The local federation as the scientist and the operators see it, on real datasites."""

from __future__ import annotations

import hashlib
import json
import socket
import stat
from typing import Any

import numpy as np
import pandas as pd
import pytest
from syft.types.errors import SyftException

from scientist import Federation, FederationError
from synthetic.ehr import EHR_COLUMNS, IDENTIFIER_COLUMNS, load_ehr_csv
from tests.conftest import (
    SESSION_BASE_PORT,
    SESSION_HOSPITALS,
    Launch,
    listening_addresses,
    login,
    outside_address,
)

NAMES = [f"hospital-{c}" for c in "abc"][:SESSION_HOSPITALS]


@pytest.fixture(scope="session")
def fed(federation: Launch) -> Federation:
    return Federation.connect(federation.data_dir)


def private(client: Any, dataset: str, asset: str) -> Any:
    return client.datasets[dataset].assets[asset].data


@pytest.fixture(scope="session")
def hosted(admin_clients: dict[str, Any]) -> dict[tuple[str, str, str], tuple[Any, Any]]:
    """(hospital, dataset, asset) -> (private value, mock), read once as each operator."""
    out = {}
    for name, client in admin_clients.items():
        for dataset in ("ehr", "pathmnist"):
            for asset in ("train", "test"):
                item = client.datasets[dataset].assets[asset]
                out[(name, dataset, asset)] = (item.data, item.mock)
    return out


def test_federation_file_lists_loopback_hospitals(federation: Launch) -> None:
    listed = json.loads((federation.data_dir / "federation.json").read_text())["hospitals"]
    assert [h["name"] for h in listed] == NAMES
    assert [h["url"] for h in listed] == [
        f"http://127.0.0.1:{SESSION_BASE_PORT + i}" for i in range(SESSION_HOSPITALS)
    ]
    assert "ready:" in federation.output


def test_secrets_are_owner_only_and_strong(federation: Launch) -> None:
    for path in [
        federation.data_dir / "credentials.json",
        *federation.data_dir.glob("hospital-*/identity.json"),
    ]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    identities = [
        json.loads(p.read_text()) for p in federation.data_dir.glob("hospital-*/identity.json")
    ]
    passwords = [i[f"{role}_password"] for i in identities for role in ("admin", "scientist")]
    assert [h["scientist"]["password"] for h in federation.credentials()["hospitals"]] == [
        i["scientist_password"] for i in sorted(identities, key=lambda i: i["admin_email"])
    ]
    assert all("password" not in h["admin"] for h in federation.credentials()["hospitals"])
    assert len(set(passwords)) == len(passwords)
    assert all(len(p) >= 24 and p != "changethis" for p in passwords)


def test_default_root_login_is_refused(federation: Launch) -> None:
    url = federation.hospital("hospital-a")["url"]
    with pytest.raises(SyftException, match="[Ii]nvalid|not found"):
        login(url, "info@openmined.org", "changethis")


def test_scientist_sees_every_hospital_and_its_datasets(fed: Federation) -> None:
    assert sorted(fed.hospitals) == NAMES
    table = fed.datasets()
    assert len(table) == SESSION_HOSPITALS * 2 * 2
    assert set(table["dataset"]) == {"ehr", "pathmnist"}
    assert set(table["asset"]) == {"train", "test"}
    assert (table["mock rows"] > 0).all()


def test_scientist_gets_mocks_in_the_private_formats(fed: Federation) -> None:
    for frame in fed.mock("ehr").values():
        assert list(frame.columns) == list(EHR_COLUMNS)
        assert frame["patient_nbr"].is_unique
    for images, labels in fed.mock("pathmnist", "test").values():
        assert images.dtype == np.uint8 and images.shape[1:] == (28, 28, 3)
        assert labels.shape == (len(images), 1) and labels.max() <= 8


def test_scientist_is_refused_the_private_data(federation: Launch) -> None:
    for name in NAMES:
        h = federation.hospital(name)
        client = login(h["url"], h["scientist"]["email"], h["scientist"]["password"])
        for dataset in ("ehr", "pathmnist"):
            value = private(client, dataset, "train")
            assert not isinstance(value, (pd.DataFrame, dict)), (name, dataset)


def test_mocks_schema_matches_private(hosted: dict) -> None:
    for (_, dataset, _), (data, mock) in hosted.items():
        if dataset == "ehr":
            assert list(data.columns) == list(mock.columns)
            assert (data.dtypes == mock.dtypes).all()
        else:
            for key in ("images", "labels"):
                assert data[key].dtype == mock[key].dtype
                assert data[key].shape[1:] == mock[key].shape[1:]


def test_no_mock_row_equals_a_private_row(hosted: dict) -> None:
    clinical = [c for c in EHR_COLUMNS if c not in ("encounter_id", "patient_nbr")]
    rows = lambda f: set(map(tuple, f[clinical].astype(str).to_numpy()))  # noqa: E731
    digest = lambda a: {hashlib.sha256(x.tobytes()).hexdigest() for x in a}  # noqa: E731
    for (_, dataset, _), (data, mock) in hosted.items():
        if dataset == "ehr":
            assert not set(mock["encounter_id"]) & set(data["encounter_id"])
            assert not rows(mock) & rows(data)
        else:
            assert not digest(mock["images"]) & digest(data["images"])


def test_identifiers_stay_in_the_hospital_source(
    federation: Launch, admin_clients: dict[str, Any]
) -> None:
    for name, client in admin_clients.items():
        source = load_ehr_csv(federation.data_dir / name / "source" / "ehr_identified.csv")
        assert set(IDENTIFIER_COLUMNS) <= set(source.columns)
        for asset in ("train", "test"):
            for frame in (private(client, "ehr", asset), client.datasets["ehr"].assets[asset].mock):
                assert not set(IDENTIFIER_COLUMNS) & set(frame.columns)
                assert not set(source["ssn"]) & set(frame.astype(str).to_numpy().ravel())


def test_training_view_is_one_encounter_per_patient(hosted: dict) -> None:
    for name in NAMES:
        train, test = hosted[(name, "ehr", "train")][0], hosted[(name, "ehr", "test")][0]
        assert train["patient_nbr"].is_unique and test["patient_nbr"].is_unique
        assert not set(train["patient_nbr"]) & set(test["patient_nbr"])


def test_hospitals_hold_different_data(hosted: dict) -> None:
    patients = [set(hosted[(n, "ehr", "train")][0]["patient_nbr"]) for n in NAMES]
    sizes = [len(p) for p in patients]
    assert len(set(sizes)) == len(sizes)
    for i in range(len(patients)):
        for j in range(i + 1, len(patients)):
            assert not patients[i] & patients[j]
    shares = [
        np.bincount(hosted[(n, "pathmnist", "train")][0]["labels"].ravel(), minlength=9)
        for n in NAMES
    ]
    shares = [s / s.sum() for s in shares]
    assert max(np.abs(shares[0] - s).max() for s in shares[1:]) > 0.05


def test_datasites_listen_on_loopback_only(federation: Launch) -> None:
    outside = outside_address()
    for i in range(SESSION_HOSPITALS):
        port = SESSION_BASE_PORT + i
        assert listening_addresses(port) == ["127.0.0.1"]
        if outside:
            with socket.socket() as s, pytest.raises(OSError):
                s.settimeout(2)
                s.connect((outside, port))


def test_self_registration_is_off(federation: Launch, admin_clients: dict[str, Any]) -> None:
    import syft as sy

    h = federation.hospital("hospital-a")
    assert admin_clients["hospital-a"].settings.get().signup_enabled is False
    host, port = h["url"].rsplit(":", 1)
    guest = sy.login_as_guest(url=host, port=int(port))
    with pytest.raises(Exception, match="no permission"):
        guest.register(
            name="x",
            email="intruder@example.org",
            password="pw-123456789",
            password_verify="pw-123456789",
        )
    emails = [u.email for u in admin_clients["hospital-a"].users.get_all()]
    assert "intruder@example.org" not in emails


def test_one_hospitals_login_does_not_open_another(federation: Launch) -> None:
    a, b = federation.hospital("hospital-a"), federation.hospital("hospital-b")
    with pytest.raises(SyftException, match="[Ii]nvalid"):
        login(b["url"], a["scientist"]["email"], a["scientist"]["password"])


def test_unreachable_hospital_is_named(federation: Launch) -> None:
    a = federation.hospital("hospital-a")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(FederationError, match=closed.replace(".", r"\.")) as info:
        Federation.connect(
            [a["url"], closed], email=a["scientist"]["email"], password=a["scientist"]["password"]
        )
    assert "1 of 2" in str(info.value)


def test_sample_grid_is_written(fed: Federation, tmp_path: Any) -> None:
    import matplotlib.image

    path = fed.show_samples("pathmnist", tmp_path / "samples.png").path
    picture = matplotlib.image.imread(path)
    assert picture.shape[0] > 300 and picture.shape[1] > 300
    assert picture[..., :3].std() > 0.05
