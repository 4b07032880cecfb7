"""The deployment test (`make test-deploy`): deploy/compose.yaml really run, with Podman.

Builds the three images (from a local Debian base when no registry is reachable), brings the
compose file up under its own project name and network, runs the seed's acceptance steps 1-8
(../shared/seed beside the checkout, else the copy in tests/deploy) as the seed writes them,
with `docker` being Podman (a shim first on PATH), connects a device over TLS from this host
with the deployment's CA, backs the database up with deploy/backup.sh and restores it into a
fresh iot-postgres, checks the
start-up errors (one line, non-zero exit), and tears everything down: no container, volume
or network of the project is left. The images stay in Podman's store as the next run's cache.

The only changes to the seed's commands: `localhost:8000` becomes the UI port this run
publishes, `<ingest_port>` the ingest port, `tok-your-device-token` the device's real token
(the seed leaves those to the reader); the `python3 -c` blocks of step 2 run in ui_iot.
Standard library only; run with `python tests/deploy/run_deployment.py` (root, Podman).
"""

from __future__ import annotations

import json
import os
import re
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SEED_NAME = "phase-107-verify-device-twin.md"
# The user's script where it lives beside the checkout (../shared/seed), else the verbatim
# copy kept here for a clean clone elsewhere; SEED_SCRIPT names another.
SEED = Path(
    os.environ.get("SEED_SCRIPT")
    or next(
        (
            str(candidate)
            for candidate in (ROOT.parent / "shared" / "seed" / SEED_NAME,)
            if candidate.exists()
        ),
        str(Path(__file__).with_name(SEED_NAME)),
    )
).resolve()
PROJECT = os.environ.get("DEPLOY_TEST_PROJECT", "iotcloud-deploytest")
TAG = os.environ.get("DEPLOY_TEST_TAG", "deploytest")
IMAGES = {
    "IOT_IMAGE": (f"localhost/iotcloud:{TAG}", "deploy/Containerfile"),
    "IOT_POSTGRES_IMAGE": (f"localhost/iotcloud-postgres:{TAG}", "deploy/postgres.Containerfile"),
    "IOT_BROKER_IMAGE": (f"localhost/iotcloud-broker:{TAG}", "deploy/broker.Containerfile"),
}
NAMED = ("iot-postgres", "iot-mosquitto", "ui_iot")
TENANT, ADMIN = "acme", "admin@acme.example"
DEVICE = "boiler-1"
TLS_NAME = "mqtt.deploytest.example"
INGEST = (f"{PROJECT}_ingest_iot_1", f"{PROJECT}_ingest_iot_2")
STARTED = time.monotonic()


class Failed(Exception):
    pass


def log(message: str) -> None:
    print(f"[deploy-test {time.monotonic() - STARTED:6.1f}s] {message}", flush=True)


def run(
    cmd: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    check: bool = True,
    input_text: str | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(cmd),
        env=env,
        capture_output=True,
        text=True,
        input=input_text,
        timeout=timeout,
        check=False,
        cwd=ROOT,
    )
    if check and result.returncode != 0:
        raise Failed(
            f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout[-3000:]}"
            f"\n{result.stderr[-3000:]}"
        )
    return result


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(what: str, probe: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(1)
    raise Failed(f"timed out after {timeout:.0f} s waiting for {what}")


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310 - http to us
            return bool(response.status == 200)
    except OSError:
        return False


def json_documents(text: str) -> list[Any]:
    """The JSON documents printed one after another (two json.tool outputs in one block)."""
    decoder, documents, at = json.JSONDecoder(), [], 0
    while at < len(text.rstrip()):
        while text[at].isspace():
            at += 1
        document, at = decoder.raw_decode(text, at)
        documents.append(document)
    return documents


def seed_blocks(step: int) -> list[str]:
    """The ```bash blocks of the seed's "## Step N" section, verbatim."""
    text = SEED.read_text()
    sections = re.split(r"^## Step (\d+)", text, flags=re.MULTILINE)
    for number, body in zip(sections[1::2], sections[2::2], strict=True):
        if int(number) == step:
            return re.findall(r"```bash\n(.*?)```", body, flags=re.DOTALL)
    raise Failed(f"the seed {SEED} has no step {step}")


class Deployment:
    def __init__(self, work: Path) -> None:
        self.work = work
        # Two ingest_iot replicas (deploy.replicas), each on a host port of the kernel's
        # choosing (IOT_INGEST_PORT empty): the seed's <ingest_port> is the first one's.
        self.ports = {
            "IOT_UI_PORT": free_port(),
            "IOT_INGEST_PORT": 0,
            "IOT_MQTT_PORT": free_port(),
            "IOT_MQTTS_PORT": free_port(),
        }
        self.secrets = {
            "POSTGRES_PASSWORD": secrets.token_hex(16),
            "IOTCLOUD_JWT_SECRET": secrets.token_hex(32),
            "IOTCLOUD_BROKER_SERVICE_PASSWORD": secrets.token_hex(16),
            "IOTCLOUD_BOOTSTRAP_ADMIN_PASSWORD": secrets.token_hex(12),
        }
        self.env = self._environment()
        self.env_file = work / ".env"
        self.token = ""
        self.prov_token = ""
        self.ingest_ports: list[int] = []
        # Every volume there before the run (anonymous ones too): the teardown checks that no
        # other is left, not only the project's named ones.
        self.volumes_before = set(self._volumes())

    def _environment(self) -> dict[str, str]:
        # Podman as CI's Debian 12 needs it: runc (crun fails on hybrid cgroups) and ulimits
        # it may set (the defaults cannot be set here).
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nofile = 65536 if nofile == resource.RLIM_INFINITY else min(nofile, 1048576)
        conf = self.work / "containers.conf"
        conf.write_text(
            "[containers]\n"
            f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc=4096:4096"]\n'
            "[engine]\n"
            'runtime = "runc"\n'
        )
        shim = self.work / "bin"
        shim.mkdir()
        docker = shim / "docker"
        docker.write_text(
            '#!/bin/sh\n# The seed says docker; this host has Podman.\nexec podman "$@"\n'
        )
        docker.chmod(0o755)
        env = dict(os.environ)
        env["CONTAINERS_CONF"] = str(conf)
        env["PATH"] = f"{shim}:{Path(sys.executable).parent}:{env.get('PATH', '')}"
        return env

    # --- helpers --------------------------------------------------------------------------

    def podman(self, *args: str, check: bool = True, timeout: float = 600) -> str:
        return run(["podman", *args], env=self.env, check=check, timeout=timeout).stdout

    def compose(self, *args: str, timeout: float = 600) -> str:
        cmd = [
            "podman-compose",
            "--project-name",
            PROJECT,
            "--env-file",
            str(self.env_file),
            "-f",
            str(DEPLOY / "compose.yaml"),
            *args,
        ]
        return run(cmd, env=self.env, timeout=timeout).stdout

    def bash(self, script: str, *, extra: dict[str, str] | None = None) -> str:
        result = run(
            ["bash", "-o", "pipefail", "-c", script],
            env={**self.env, **(extra or {})},
            check=False,
            timeout=60,
        )
        if result.returncode != 0:
            raise Failed(f"seed block failed ({result.returncode}):\n{script}\n{result.stderr}")
        return result.stdout

    def api(self, method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.ports['IOT_UI_PORT']}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return json.loads(response.read())

    # --- phases -------------------------------------------------------------------------------

    def build(self) -> None:
        base = run([str(DEPLOY / "base-image.sh")], env=self.env).stdout.strip().splitlines()[-1]
        log(f"base image {base}")
        if not (ROOT / "frontend" / "dist" / "index.html").exists():
            raise Failed("frontend/dist is missing: run make setup first")
        # This host's CA bundle for pip in the build (a proxy that intercepts TLS may need it).
        bundle = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
        trust = []
        if bundle and Path(bundle).is_file():
            trust = [
                "-v",
                f"{bundle}:/run/host-ca.crt:ro",
                "--build-arg",
                "PIP_CERT=/run/host-ca.crt",
            ]
        for variable, (tag, containerfile) in IMAGES.items():
            before = run(
                ["podman", "image", "inspect", "--format", "{{.Id}}", tag],
                env=self.env,
                check=False,
            ).stdout.strip()
            self.podman(
                "build",
                *trust,
                "--format",
                "docker",
                "--quiet",
                "--build-arg",
                f"BASE={base}",
                "-f",
                containerfile,
                "-t",
                tag,
                ".",
                timeout=900,
            )
            after = self.podman("image", "inspect", "--format", "{{.Id}}", tag).strip()
            if before and before != after:
                # The previous run's image, now untagged: the store does not grow run by run.
                self.podman("rmi", before, check=False)
            log(f"built {tag} ({variable})")

    def up(self) -> None:
        for name in NAMED:
            exists = run(["podman", "container", "exists", name], env=self.env, check=False)
            if exists.returncode == 0:
                raise Failed(f"a container named {name} exists already; remove it first")
        lines = [f"{key}={value or ''}" for key, value in {**self.secrets, **self.ports}.items()]
        lines += [f"{key}={tag}" for key, (tag, _) in IMAGES.items()]
        lines += [
            f"IOTCLOUD_BOOTSTRAP_TENANT={TENANT}",
            f"IOTCLOUD_BOOTSTRAP_ADMIN_EMAIL={ADMIN}",
            "IOT_UI_BIND=127.0.0.1",
            "IOT_INGEST_BIND=127.0.0.1",
            "IOT_MQTTS_BIND=127.0.0.1",
            f"IOT_INGEST_REPLICAS={len(INGEST)}",
            f"IOTCLOUD_TLS_NAMES={TLS_NAME},192.0.2.7",
        ]
        self.env_file.write_text("\n".join(lines) + "\n")
        self.compose("up", "-d")
        ui = f"http://127.0.0.1:{self.ports['IOT_UI_PORT']}/readyz"
        wait_for("ui_iot /readyz", lambda: http_ok(ui), timeout=180)
        self.ingest_ports.clear()
        for replica in INGEST:
            published = self.podman("port", replica, "8001").strip().splitlines()[0]
            port = int(published.rsplit(":", 1)[1])
            self.ingest_ports.append(port)
            ready = f"http://127.0.0.1:{port}/readyz"
            wait_for(f"{replica} /readyz", lambda url=ready: http_ok(url), timeout=120)
        self.ports["IOT_INGEST_PORT"] = self.ingest_ports[0]
        bootstrap = f"{PROJECT}_bootstrap_1"
        status = self.podman("wait", bootstrap, timeout=120).strip()
        output = self.podman("logs", bootstrap)
        if status != "0" or "admin" not in output:
            raise Failed(f"bootstrap exited {status}: {output}")
        # The console: its page and the script it loads, from the image's frontend/dist.
        base_url = f"http://127.0.0.1:{self.ports['IOT_UI_PORT']}"
        with urllib.request.urlopen(f"{base_url}/", timeout=10) as response:  # noqa: S310
            page = response.read().decode()
        assert "<title>IoT Cloud console</title>" in page, page[:300]
        script = re.search(r'src="(/assets/[^"]+\.js)"', page)
        assert script, page[:300]
        assert http_ok(base_url + script.group(1)), script.group(1)
        log(f"compose up: console, device API ready; {output.strip()}")
        migrated = self.compose("run", "--rm", "bootstrap", "iotcloud-start", "migrate")
        assert "applied 0 migration(s)" in migrated, migrated
        log("upgrade step (docs/deploy.md): compose run --rm bootstrap iotcloud-start migrate")
        for name in ("ui_iot", *INGEST, "iot-mosquitto", "iot-postgres"):
            self.podman("healthcheck", "run", name)  # each image's HEALTHCHECK
        created = json.loads(
            self.podman(
                "exec", "ui_iot", "iotcloud", "device", "create", "--tenant", TENANT, "--id", DEVICE
            )
        )
        self.prov_token = created["provision_token"]
        self.token = self.podman("exec", "ui_iot", "iotcloud", "token", "--email", ADMIN).strip()

    def seed(self) -> None:
        extra = {"TOKEN": self.token, "DEVICE_ID": DEVICE, "PROV_TOKEN": self.prov_token}

        def adapt(block: str) -> str:
            return (
                block.replace("localhost:8000", f"localhost:{self.ports['IOT_UI_PORT']}")
                .replace("<ingest_port>", str(self.ports["IOT_INGEST_PORT"]))
                .replace("tok-your-device-token", self.prov_token)
            )

        def rows(output: str) -> int:
            match = re.search(r"\((\d+) rows?\)", output)
            return int(match.group(1)) if match else -1

        step1 = [self.bash(block) for block in seed_blocks(1)]
        assert rows(step1[0]) == 5, step1[0]
        assert rows(step1[1]) == 1, step1[1]
        log("seed step 1: migration applied (5 columns, 1 index)")

        step2 = [self.podman("exec", "ui_iot", "bash", "-c", b) for b in seed_blocks(2)]
        assert step2[0].strip() == "OK", step2
        assert step2[1].strip() == "delta OK", step2
        log("seed step 2: shared.twin in the image")

        (step3,) = seed_blocks(3)
        twin = json.loads(self.bash(adapt(step3), extra=extra))
        for field in (
            "desired",
            "reported",
            "delta",
            "desired_version",
            "reported_version",
            "sync_status",
        ):
            assert field in twin, twin
        log("seed step 3: GET twin")

        patch, check_db = seed_blocks(4)
        assert json.loads(self.bash(adapt(patch), extra=extra))["desired_version"] == 1
        assert re.search(r"^\s*1 \|", self.bash(adapt(check_db), extra=extra), re.MULTILINE)
        log("seed step 4: PATCH desired, desired_version 1 in the database")

        (step5,) = seed_blocks(5)
        message = json.loads(self.bash(adapt(step5), extra=extra))
        assert message["version"] == 1 and "desired" in message, message
        log("seed step 5: retained desired message (docker exec iot-mosquitto mosquitto_sub)")

        (step6,) = seed_blocks(6)
        pulled = json.loads(self.bash(adapt(step6), extra=extra))
        assert pulled["version"] == 1 and pulled["desired"]["reporting_interval_s"] == 30, pulled
        log("seed step 6: device HTTP pull")

        report, synced = seed_blocks(7)
        answer = json.loads(self.bash(adapt(report), extra=extra))
        assert answer["accepted"] is True and answer["version"] == 1, answer
        assert self.bash(adapt(synced), extra=extra).strip() == "synced 1"
        log("seed step 7: device HTTP report, synced 1")
        other = urllib.request.Request(
            f"http://127.0.0.1:{self.ingest_ports[1]}/device/v1/shadow",
            headers={"X-Provision-Token": self.prov_token},
        )
        with urllib.request.urlopen(other, timeout=10) as response:  # noqa: S310
            assert json.loads(response.read())["version"] == 1
        log("the second ingest_iot replica serves the same twin")

        (step8,) = seed_blocks(8)
        patched, delta = json_documents(self.bash(adapt(step8), extra=extra))
        assert patched["desired_version"] == 2, patched
        assert delta["delta"].get("reporting_interval_s") == 60, delta
        assert delta["in_sync"] is False, delta
        log("seed step 8: delta reporting_interval_s 60, in_sync false")

    def tls_device(self) -> None:
        """A device over TLS from this host, trusting the deployment's CA."""
        ca = self.work / "ca.pem"
        ca.write_text(self.podman("exec", "iot-mosquitto", "cat", "/tls/ca.pem"))
        port = str(self.ports["IOT_MQTTS_PORT"])
        topic = f"tenant/{TENANT}/device/{DEVICE}/shadow"
        login = ["-u", DEVICE, "-P", self.prov_token, "-i", DEVICE]
        base = ["-h", "localhost", "-p", port, "--cafile", str(ca), "-V", "mqttv311"]
        desired = run(
            [
                "mosquitto_sub",
                *base,
                *login,
                "-q",
                "1",
                "-t",
                f"{topic}/desired",
                "-C",
                "1",
                "-W",
                "10",
            ],
            env=self.env,
        ).stdout
        message = json.loads(desired)
        assert message["version"] == 2 and message["desired"]["reporting_interval_s"] == 60
        run(
            [
                "mosquitto_pub",
                *base,
                *login,
                "-q",
                "1",
                "-t",
                f"{topic}/reported",
                "-m",
                json.dumps({"reported": message["desired"], "version": message["version"]}),
            ],
            env=self.env,
        )
        wait_for(
            "the TLS report to reach the twin",
            lambda: self.api("GET", f"/customer/devices/{DEVICE}/twin")["reported_version"] == 2,
            timeout=20,
        )
        anonymous = run(
            ["mosquitto_sub", *base, "-t", f"{topic}/desired", "-C", "1", "-W", "5"],
            env=self.env,
            check=False,
        )
        assert anonymous.returncode != 0, "the broker took an anonymous client"
        wrong = run(
            [
                "mosquitto_sub",
                *base,
                "-u",
                DEVICE,
                "-P",
                "not-the-token",
                "-i",
                DEVICE,
                "-t",
                f"{topic}/desired",
                "-C",
                "1",
                "-W",
                "5",
            ],
            env=self.env,
            check=False,
        )
        assert wrong.returncode != 0, "the broker took a wrong token"
        # Another device's topics: the broker denies the subscription (tenant isolation).
        foreign = run(
            [
                "mosquitto_sub",
                *base,
                *login,
                "-t",
                f"tenant/{TENANT}/device/other/shadow/desired",
                "-t",
                f"tenant/other-tenant/device/{DEVICE}/shadow/desired",
                "-C",
                "1",
                "-W",
                "5",
            ],
            env=self.env,
            check=False,
        )
        # (mosquitto_sub exits 0 then, saying so; no message may arrive)
        assert "All subscription requests were denied" in foreign.stderr, foreign
        assert foreign.stdout == "", foreign
        names = self.podman(
            "exec",
            "iot-mosquitto",
            "openssl",
            "x509",
            "-in",
            "/tls/server.pem",
            "-noout",
            "-ext",
            "subjectAltName",
        )
        assert f"DNS:{TLS_NAME}" in names and "IP Address:192.0.2.7" in names, names
        log(
            "TLS device: retained desired v2 received, report v2 applied; anonymous, a wrong "
            "token and other devices' topics refused; IOTCLOUD_TLS_NAMES in the certificate"
        )

    def logs_clean(self) -> None:
        """No service logged a traceback while the deployment ran."""
        for name in (*NAMED, *INGEST):
            logs = run(["podman", "logs", name], env=self.env)
            if "Traceback" in logs.stdout + logs.stderr:
                raise Failed(f"{name} logged a traceback:\n{logs.stdout}{logs.stderr}")
        log("no traceback in any service's log")

    def backup_restore(self) -> None:
        dump = self.work / "iotcloud.dump"
        run([str(DEPLOY / "backup.sh"), "backup", str(dump)], env=self.env)
        before = self.api("GET", f"/customer/devices/{DEVICE}/twin")
        # As on a new host: everything down (the tls volume kept: devices trust its CA), a new
        # empty database volume, iot-postgres alone, the restore, then the rest.
        self.compose("down", "-t", "10")
        self.podman("volume", "rm", f"{PROJECT}_pgdata")
        self.compose("up", "-d", "iot-postgres")
        wait_for(
            "the fresh iot-postgres",
            lambda: (
                run(
                    ["podman", "exec", "iot-postgres", "pg_isready", "-q", "-d", "iotcloud"],
                    env=self.env,
                    check=False,
                ).returncode
                == 0
            ),
        )
        fresh = self.podman(
            "exec",
            "iot-postgres",
            "psql",
            "-U",
            "iot",
            "iotcloud",
            "-tAc",
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
        )
        assert fresh.strip() == "0", f"the new iot-postgres is not empty: {fresh}"
        run([str(DEPLOY / "backup.sh"), "restore", str(dump)], env=self.env)
        # Again, over the database it just filled (docs/deploy.md: restore into a running one).
        run([str(DEPLOY / "backup.sh"), "restore", str(dump)], env=self.env)
        self.compose("up", "-d")
        ui = f"http://127.0.0.1:{self.ports['IOT_UI_PORT']}/readyz"
        wait_for("ui_iot after the restore", lambda: http_ok(ui), timeout=120)
        status = self.podman("wait", f"{PROJECT}_bootstrap_1", timeout=120).strip()
        again = self.podman("logs", f"{PROJECT}_bootstrap_1")
        assert status == "0" and "exist already" in again, (status, again)
        after = self.api("GET", f"/customer/devices/{DEVICE}/twin")
        for field in ("desired", "reported", "desired_version", "reported_version"):
            assert after[field] == before[field], (field, before, after)
        # The broker's plugin reconnects to the new database: the device logs in again.
        ca = self.work / "ca.pem"
        wait_for(
            "a device login checked against the restored database",
            lambda: (
                run(
                    [
                        "mosquitto_sub",
                        "-h",
                        "localhost",
                        "-p",
                        str(self.ports["IOT_MQTTS_PORT"]),
                        "--cafile",
                        str(ca),
                        "-u",
                        DEVICE,
                        "-P",
                        self.prov_token,
                        "-i",
                        DEVICE,
                        "-t",
                        f"tenant/{TENANT}/device/{DEVICE}/shadow/desired",
                        "-C",
                        "1",
                        "-W",
                        "5",
                    ],
                    env=self.env,
                    check=False,
                ).returncode
                == 0
            ),
            timeout=60,
        )
        log(
            f"backup.sh backup/restore into a fresh iot-postgres: twin v{after['desired_version']}"
            " intact, device logs in"
        )

    def bad_input(self) -> None:
        """Each start-up error: one line in the container's log, a non-zero exit."""
        app, broker, pg = (
            IMAGES[k][0] for k in ("IOT_IMAGE", "IOT_BROKER_IMAGE", "IOT_POSTGRES_IMAGE")
        )
        good = {
            "POSTGRES_PASSWORD": self.secrets["POSTGRES_PASSWORD"],
            "IOTCLOUD_BROKER_SERVICE_PASSWORD": self.secrets["IOTCLOUD_BROKER_SERVICE_PASSWORD"],
            "IOTCLOUD_JWT_SECRET": self.secrets["IOTCLOUD_JWT_SECRET"],
        }
        network = f"{PROJECT}_default"

        def one_line(
            label: str, image: str, env: dict[str, str], args: Sequence[str], expect: str, code: int
        ) -> None:
            flags = [item for key, value in env.items() for item in ("-e", f"{key}={value}")]
            name = f"{PROJECT}-badinput"
            run(["podman", "rm", "-f", "-v", name], env=self.env, check=False)
            self.podman(
                "run",
                "-d",
                "--name",
                name,
                "--no-healthcheck",
                "--network",
                network,
                "--label",
                f"io.podman.compose.project={PROJECT}",
                *flags,
                image,
                *args,
            )
            try:
                status = int(self.podman("wait", name, timeout=120).strip())
                logs = run(["podman", "logs", name], env=self.env)
            finally:
                run(["podman", "rm", "-f", "-v", name], env=self.env, check=False)
            lines = (logs.stdout + logs.stderr).strip().splitlines()
            if status != code or len(lines) != 1 or expect not in lines[0]:
                raise Failed(f"{label}: exit {status}, container log {lines!r}")
            log(f"bad input, {label}: exit {code}, log: {lines[0]}")

        no_jwt = {k: v for k, v in good.items() if k != "IOTCLOUD_JWT_SECRET"}
        one_line(
            "missing secret",
            app,
            no_jwt,
            ["iotcloud-start", "ui"],
            "IOTCLOUD_JWT_SECRET is not set",
            2,
        )
        one_line(
            "example secret",
            app,
            {**good, "IOTCLOUD_JWT_SECRET": "change-me-x" * 4},
            ["iotcloud-start", "ingest"],
            "example value",
            2,
        )
        one_line(
            "database unreachable",
            app,
            {**good, "POSTGRES_HOST": "nowhere.invalid", "IOTCLOUD_DB_WAIT_S": "3"},
            ["iotcloud-start", "ui"],
            "did not answer within 3 s",
            1,
        )
        one_line(
            "unreadable TLS file (app)",
            app,
            {**good, "IOTCLOUD_TLS_CERT": "/nope/cert.pem", "IOTCLOUD_TLS_KEY": "/nope/k"},
            ["iotcloud-start", "ingest"],
            "IOTCLOUD_TLS_CERT names a file that cannot",
            2,
        )
        one_line(
            "unreadable TLS file (broker)",
            broker,
            {**good, "IOTCLOUD_TLS_CERT": "/etc/shadow", "IOTCLOUD_TLS_KEY": "/etc/shadow"},
            [],
            "IOTCLOUD_TLS_CERT (/etc/shadow) cannot be read",
            2,
        )
        one_line(
            "missing secret (broker)",
            broker,
            {"POSTGRES_PASSWORD": "x" * 20},
            [],
            "IOTCLOUD_BROKER_SERVICE_PASSWORD is not set",
            2,
        )
        one_line("missing secret (postgres)", pg, {}, [], "POSTGRES_PASSWORD is not set", 2)
        one_line(
            "default admin password",
            app,
            {
                **good,
                "IOTCLOUD_BOOTSTRAP_TENANT": "t1",
                "IOTCLOUD_BOOTSTRAP_ADMIN_EMAIL": "a@b.example",
                "IOTCLOUD_BOOTSTRAP_ADMIN_PASSWORD": "change-me-admin-password",
            },
            ["iotcloud-start", "bootstrap"],
            "IOTCLOUD_BOOTSTRAP_ADMIN_PASSWORD",
            2,
        )
        # A port in use: a second ui_iot in the running container, on the port it holds.
        result = run(
            ["podman", "exec", "ui_iot", "iotcloud-start", "ui"], env=self.env, check=False
        )
        lines = (result.stdout + result.stderr).strip().splitlines()
        if result.returncode != 2 or len(lines) != 1 or "already in use" not in lines[0]:
            raise Failed(f"port in use: exit {result.returncode}, output {lines!r}")
        log(f"bad input, port in use: exit 2: {lines[0]}")

    def compose_bad_secret(self) -> None:
        """Through compose: ingest_iot without its secret stops, its log one line per try, and
        restarts only as often as compose.yaml allows (no endless loop). Runs last."""
        good = self.env_file.read_text()
        self.env_file.write_text(
            "\n".join(
                "IOTCLOUD_JWT_SECRET=" if line.startswith("IOTCLOUD_JWT_SECRET=") else line
                for line in good.splitlines()
            )
            + "\n"
        )
        expected = "ingest_iot: IOTCLOUD_JWT_SECRET is not set (see deploy/.env.example)"
        try:
            self.compose("up", "-d", "--no-deps", "--force-recreate", "ingest_iot")
            for replica in INGEST:

                def inspect(name: str = replica) -> list[str]:
                    return self.podman(
                        "inspect",
                        "--format",
                        "{{.State.Status}} {{.State.ExitCode}} {{.RestartCount}}",
                        name,
                    ).split()

                wait_for(f"{replica} to stop for good", lambda i=inspect: i()[0] == "exited", 90)
                time.sleep(3)  # a restart the policy would still make shows up by now
                status, code, restarts = inspect()
                logs = run(["podman", "logs", replica], env=self.env)
                lines = (logs.stdout + logs.stderr).strip().splitlines()
                assert (status, code) == ("exited", "2"), (status, code)
                assert int(restarts) <= 3, f"{replica} restarted {restarts} times"
                assert lines and {line.strip() for line in lines} == {expected}, lines
        finally:
            self.env_file.write_text(good)
        log(
            f"compose, missing secret: ingest_iot exited 2 after {restarts} restart(s), "
            "one line each"
        )

    def own_certificate(self) -> None:
        """IOTCLOUD_TLS_CERT/KEY: the broker serves an operator's certificate on 8883."""
        certs = self.work / "own-tls"
        certs.mkdir()
        openssl = [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
        ]
        run(
            [
                *openssl,
                "-subj",
                "/CN=own CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-keyout",
                str(certs / "ca.key"),
                "-out",
                str(certs / "ca.pem"),
            ]
        )
        run(
            [
                "openssl",
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-keyout",
                str(certs / "key.pem"),
                "-out",
                str(certs / "req.csr"),
            ]
        )
        (certs / "ext").write_text("subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n")
        run(
            [
                "openssl",
                "x509",
                "-req",
                "-in",
                str(certs / "req.csr"),
                "-CA",
                str(certs / "ca.pem"),
                "-CAkey",
                str(certs / "ca.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                str(certs / "ext"),
                "-out",
                str(certs / "cert.pem"),
            ]
        )
        for path in certs.iterdir():
            path.chmod(0o644)  # readable by the broker's user in the container
        name = f"{PROJECT}-owncert"
        broker = IMAGES["IOT_BROKER_IMAGE"][0]
        env = {
            "POSTGRES_PASSWORD": self.secrets["POSTGRES_PASSWORD"],
            "IOTCLOUD_BROKER_SERVICE_PASSWORD": self.secrets["IOTCLOUD_BROKER_SERVICE_PASSWORD"],
            "IOTCLOUD_TLS_CERT": "/tls-own/cert.pem",
            "IOTCLOUD_TLS_KEY": "/tls-own/key.pem",
        }
        flags = [item for key, value in env.items() for item in ("-e", f"{key}={value}")]
        self.podman(
            "run",
            "-d",
            "--name",
            name,
            "--no-healthcheck",
            "--network",
            f"{PROJECT}_default",
            "--label",
            f"io.podman.compose.project={PROJECT}",
            "-v",
            f"{certs}:/tls-own:ro",
            *flags,
            broker,
        )
        try:

            def served() -> bool:
                probe = run(
                    [
                        "podman",
                        "exec",
                        name,
                        "mosquitto_sub",
                        "-p",
                        "8883",
                        "--cafile",
                        "/tls-own/ca.pem",
                        "-t",
                        "$SYS/broker/uptime",
                        "-C",
                        "1",
                        "-W",
                        "3",
                    ],
                    env=self.env,
                    check=False,
                )
                return probe.returncode == 0

            wait_for("the broker with the operator's certificate", served, timeout=30)
        finally:
            run(["podman", "rm", "-f", "-v", name], env=self.env, check=False)
        log("own certificate: the broker serves IOTCLOUD_TLS_CERT on 8883 (verified by its CA)")

    def _volumes(self) -> list[str]:
        return self.podman("volume", "ls", "-q", check=False).split()

    def teardown(self) -> None:
        """compose down -v, then whatever it missed; then check nothing of ours is left."""
        label = f"io.podman.compose.project={PROJECT}"
        if self.env_file.exists():
            run(
                [
                    "podman-compose",
                    "--project-name",
                    PROJECT,
                    "--env-file",
                    str(self.env_file),
                    "-f",
                    str(DEPLOY / "compose.yaml"),
                    "down",
                    "-v",
                    "-t",
                    "5",
                ],
                env=self.env,
                check=False,
                timeout=300,
            )
        ids = self.podman("ps", "-aq", "--filter", f"label={label}", check=False).split()
        if ids:
            self.podman("rm", "-f", "-v", *ids, check=False)
        for volume in self.podman(
            "volume", "ls", "-q", "--filter", f"label={label}", check=False
        ).split():
            self.podman("volume", "rm", "-f", volume, check=False)
        for volume in ("pgdata", "mosquitto-data", "tls"):
            self.podman("volume", "rm", "-f", f"{PROJECT}_{volume}", check=False)
        self.podman("network", "rm", "-f", f"{PROJECT}_default", check=False)
        left = (
            self.podman("ps", "-aq", "--filter", f"label={label}", check=False).split()
            + [v for v in self._volumes() if v.startswith(PROJECT) or v not in self.volumes_before]
            + [
                n
                for n in self.podman("network", "ls", "--format", "{{.Name}}", check=False).split()
                if n.startswith(PROJECT)
            ]
        )
        if left:
            raise Failed(f"teardown left {left}")
        log("teardown: no container, volume or network of the project is left")


def main() -> int:
    for tool in ("podman", "podman-compose", "mosquitto_sub", "curl"):
        if shutil.which(tool, path=f"{Path(sys.executable).parent}:{os.environ['PATH']}") is None:
            print(f"deploy-test: {tool} is missing (make test-deploy installs it)", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="iotcloud-deploytest-") as tmp:
        deployment = Deployment(Path(tmp))
        ok = False
        try:
            log(f"seed script {SEED}")
            deployment.teardown()  # what an interrupted earlier run left
            deployment.build()
            deployment.up()
            deployment.seed()
            deployment.tls_device()
            deployment.logs_clean()
            deployment.backup_restore()
            deployment.bad_input()
            deployment.own_certificate()
            deployment.compose_bad_secret()  # last: it leaves ingest_iot stopped
            ok = True
        except (Failed, AssertionError) as exc:
            print(f"deploy-test FAILED: {exc!r}", file=sys.stderr)
            for name in (*NAMED, *INGEST, f"{PROJECT}_bootstrap_1"):
                logs = run(
                    ["podman", "logs", "--tail", "30", name], env=deployment.env, check=False
                )
                print(f"--- {name}\n{logs.stdout}{logs.stderr}", file=sys.stderr)
        finally:
            deployment.teardown()
    log("PASSED" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
