"""The TUI's AWS side against the lab's moto server (boto3 over HTTP, no in-process mocks): the
cluster pane with `r` refresh, `s` start/stop, and the `d` discover screen importing a profile."""

from __future__ import annotations

from pathlib import Path

from tests.lab.moto_server import REGION, MotoServer
from tests.lab.toml_profile import write_profile
from tests.test_aws_lab import client, seed
from tests.tui_support import main_text, sync, wait_for, wait_for_screen
from tunnelman.core import profiles as prof
from tunnelman.tui.app import make_app
from tunnelman.tui.screens.discover import DiscoverScreen
from tunnelman.tui.screens.modals import ConfirmScreen

SIZE = (160, 45)


def geo_profile(config: Path) -> None:
    write_profile(
        config,
        "geo",
        description="Aurora PostGIS in moto",
        bastion="ec2-user@bastion.example.com",
        endpoint="geo-prod.cluster-x.us-east-2.rds.amazonaws.com",
        cluster="geo-prod",
        region=REGION,
    )


@sync
async def test_cluster_pane_shows_status_mode_capacity_endpoints_and_r_refreshes(
    aws_env: MotoServer, tmp_home: Path
) -> None:
    seeded = seed(aws_env)
    config = tmp_home / ".config" / "tunnelman" / "profiles.toml"
    geo_profile(config)
    app = make_app(config, initial_profile="geo")
    async with app.run_test(size=SIZE) as pilot:
        # highlighting a profile with AWS settings fetches its status lazily, in a worker
        await wait_for(pilot, lambda: "geo" in app.clusters, 30, "cluster status from moto")
        await pilot.pause()
        text = main_text(app, "#cluster-info")
        assert "geo-prod" in text
        assert "available" in text
        assert "provisioned" in text  # engine mode
        assert "aurora-postgresql 15.4" in text
        assert "0–4 ACU" in text  # serverless v2 capacity range
        status = app.clusters["geo"]
        assert status.endpoint is not None
        assert status.reader_endpoint is not None
        assert status.endpoint in text
        assert status.reader_endpoint in text
        assert f"{seeded.geo_writer} (writer)" in text
        # somebody stops it in the console; r shows it
        client(aws_env, "rds").stop_db_cluster(DBClusterIdentifier="geo-prod")
        before = app.clusters["geo"]
        await pilot.press("r")
        await wait_for(pilot, lambda: app.clusters["geo"] is not before, 30, "a refresh")
        await pilot.pause()
        assert "stopped" in main_text(app, "#cluster-info")


@sync
async def test_s_stops_and_starts_the_cluster_after_asking(
    aws_env: MotoServer, tmp_home: Path
) -> None:
    seed(aws_env)
    config = tmp_home / ".config" / "tunnelman" / "profiles.toml"
    geo_profile(config)
    rds = client(aws_env, "rds")

    def aws_status() -> str:
        return str(
            rds.describe_db_clusters(DBClusterIdentifier="geo-prod")["DBClusters"][0]["Status"]
        )

    app = make_app(config, initial_profile="geo")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "geo" in app.clusters, 30, "cluster status")
        await pilot.press("s")
        await wait_for_screen(pilot, app, ConfirmScreen, "#no", 2, "the question")
        await pilot.press("escape")  # no
        assert aws_status() == "available"
        await pilot.click("#btn-startstop")  # the mouse way
        await wait_for_screen(pilot, app, ConfirmScreen, "#no", 2, "the question")
        await pilot.click("#yes")
        await wait_for(pilot, lambda: aws_status() in ("stopping", "stopped"), 30, "the stop")
        await wait_for(pilot, lambda: app.cluster_running("geo") is False, 30, "the new status")
        await pilot.press("s")
        await wait_for_screen(pilot, app, ConfirmScreen, "#no", 2)
        await pilot.click("#yes")
        await wait_for(pilot, lambda: aws_status() in ("starting", "available"), 30, "the start")


@sync
async def test_discover_imports_a_cluster_as_a_profile(aws_env: MotoServer, tmp_home: Path) -> None:
    seed(aws_env)
    config = tmp_home / ".config" / "tunnelman" / "profiles.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("# my profiles\n")
    app = make_app(config)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("d")
        await wait_for_screen(pilot, app, DiscoverScreen, "#d-import", 2)
        screen = app.screen
        assert isinstance(screen, DiscoverScreen)
        await pilot.press(*REGION, "enter")
        await wait_for(pilot, lambda: screen.items, 60, "discovery results")
        ids = [item["id"] for item in screen.items]
        assert "geo-prod" in ids
        assert "bastion" in [item["kind"] for item in screen.items]
        table = screen.query_one("#d-results")
        rows = [str(table.get_row_at(i)[1]) for i in range(table.row_count)]  # type: ignore[attr-defined]
        table.move_cursor(row=rows.index("geo-prod"))  # type: ignore[attr-defined]
        bastion = next(i for i in screen.items if i["kind"] == "bastion" and i.get("public_ip"))
        screen.query_one(
            "#d-bastion-pick"
        ).value = f"ec2-user@{bastion.get('public_dns') or bastion['public_ip']}"  # type: ignore[attr-defined]
        await pilot.pause()
        screen.query_one("#d-port").value = "5433"  # type: ignore[attr-defined]
        await pilot.click("#d-import")
        await wait_for(pilot, lambda: "geo-prod" in app.profiles, 5, "the imported profile")
        saved = prof.load(config).get("geo-prod")
        assert saved.cluster == "geo-prod"
        assert saved.region == REGION
        assert saved.endpoint is not None
        assert saved.endpoint.host.startswith("geo-prod.cluster-")
        assert saved.local_port == 5433
        assert saved.bastion is not None
        assert saved.bastion.user == "ec2-user"
        assert config.read_text().startswith("# my profiles\n")
        assert app.main is not None
        assert app.main.current == "geo-prod"
