"""botocore's Stubber in place of AWS, for the answers the moto server cannot give.

`Stubs` hands out stubbed clients instead of real ones (`aws_session.make_client`), one per
service and region; `stubs_fixture()` makes the `stubs` fixture a test module takes (assign it to
a module-level `stubs`), with the region and, where the code reads them, fake keys in the
environment. `run_main` runs the CLI in-process and returns its exit code and output, for tests
that need the stubs (a subprocess would not see them).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.stub import Stubber

from tunnelman.cli.main import main
from tunnelman.core import aws
from tunnelman.core.aws import session as aws_session

__all__ = ["REGION", "Stubs", "run_main", "stubs_fixture"]

REGION = "us-east-2"


@functools.cache
def _botocore_session() -> Any:
    """One botocore session for every stubbed client: it loads each service's model once
    (a new session per client read the JSON again, half a second a test)."""
    return botocore.session.get_session()


class Stubs:
    """Stubbed botocore clients handed out instead of real ones (`aws_session.make_client`)."""

    def __init__(self) -> None:
        self.clients: dict[tuple[str, str], tuple[Any, Stubber]] = {}

    def __call__(self, service: str, region: str = REGION) -> Stubber:
        if (service, region) not in self.clients:
            made = _botocore_session().create_client(
                service,
                region_name=region,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            )
            stubber = Stubber(made)
            stubber.activate()
            self.clients[(service, region)] = (made, stubber)
        return self.clients[(service, region)][1]

    def client(self, service: str, region: str = REGION) -> Any:
        self(service, region)
        return self.clients[(service, region)][0]

    def make_client(self, session: Any, service: str, region: str) -> Any:
        if (service, region) not in self.clients:
            raise AssertionError(f"no stub for {service} in {region}")
        return self.clients[(service, region)][0]

    def verify(self) -> None:
        for _, stubber in self.clients.values():
            stubber.assert_no_pending_responses()


def stubs_fixture(*, keys: bool = False) -> Callable[..., Iterator[Stubs]]:
    """The `stubs` fixture: a fresh `Stubs` in place of botocore's clients, in the test's home,
    with AWS's region (and, with `keys`, fake access keys) in the environment."""

    @pytest.fixture(name="stubs")
    def stubs(tmp_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stubs]:
        made = Stubs()
        monkeypatch.setattr(aws_session, "make_client", made.make_client)
        monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
        if keys:
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        aws.clear_cache()
        yield made
        aws.clear_cache()

    return stubs


def run_main(argv: list[str], captured: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The CLI in-process (`main(argv)`): its exit code, stdout and stderr."""
    try:
        main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    else:
        code = 0
    out = captured.readouterr()
    return code, out.out, out.err
