"""A `gs://` workdir end to end, against a local GCS emulator (`gcp-storage-emulator`, on loopback).

Import an HF Llama into a run on gs://, train 2 steps, resume for 2 more (the checkpoint restores
from the bucket) with the periodic evaluation at step 4, export to a local directory: the exported
tensors stay the imported ones at lr 1e-7, and metrics.jsonl, the tokenizer, TensorBoard's event
file and the evaluation's files are in the bucket.

Two emulator gaps are patched in this process (GCS itself behaves as the clients expect): an empty
upload body crashes it, and its media downloads lack `x-goog-generation`, without which tensorstore
cannot make its next conditional write of the OCDBT manifest.

Each client reaches the emulator through its standard setting:
- etils.epath (run files, metrics, tokenizer, Orbax's metadata) through gcsfs: `EPATH_USE_TF=false`
  and `STORAGE_EMULATOR_HOST`;
- tensorstore (Orbax's arrays): `TENSORSTORE_GCS_HTTP_URL`;
- TF's gfile (TensorBoard's writer) has no endpoint setting: it always calls www.googleapis.com and
  storage.googleapis.com over HTTPS. It goes through `HTTPS_PROXY`, a proxy here that answers as
  those hosts with a certificate made for the test (`CURL_CA_BUNDLE`) and relays to the emulator;
  `GOOGLE_AUTH_TOKEN_FOR_TESTING` stands in for credentials.
"""

from __future__ import annotations

import datetime
import http.client
import json
import socket
import ssl
import threading
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from gcp_storage_emulator.handlers import objects as emulator_objects
from gcp_storage_emulator.server import create_server

from tests.train_helpers import run_command, train_command
from tpu_train.interop.safetensors_io import CheckpointReader

BUCKET = "tpu-train-test"
GOOGLE_HOSTS = ("www.googleapis.com", "storage.googleapis.com")
TIMEOUT = 240  # seconds for one command: a client that hangs on the emulator fails the test


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _media_upload_of_empty_objects(original):
    """The emulator reads an empty body as None and fails on it; gfile's directory markers are
    empty objects."""

    def upload(request, response, storage):
        if request.data is None:
            request._data = b""
        return original(request, response, storage)

    return upload


def _download_with_generation(original):
    """GCS answers a media download with the object's `x-goog-generation`; the emulator leaves it
    out, and tensorstore then has no generation for its next conditional write of the OCDBT
    manifest ("Malformed StorageGeneration" on the second save)."""

    def download(request, response, storage, *args, **kwargs):
        try:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        except emulator_objects.NotFound:
            pass
        else:
            response["x-goog-generation"] = obj["generation"]
            response["x-goog-metageneration"] = obj["metageneration"]
        return original(request, response, storage, *args, **kwargs)

    return download


def _list_objects(url: str, prefix: str) -> list[str]:
    """The names of the bucket's objects under `prefix` (the JSON API, paged)."""
    names, token = [], ""
    while True:
        query = urllib.parse.urlencode(
            {"prefix": prefix, **({"pageToken": token} if token else {})}
        )
        with urllib.request.urlopen(f"{url}/storage/v1/b/{BUCKET}/o?{query}", timeout=30) as answer:
            page = json.load(answer)
        names += [item["name"] for item in page.get("items", [])]
        token = page.get("nextPageToken", "")
        if not token:
            return names


def _read_object(url: str, name: str) -> bytes:
    quoted = urllib.parse.quote(name, safe="")
    with urllib.request.urlopen(
        f"{url}/storage/v1/b/{BUCKET}/o/{quoted}?alt=media", timeout=30
    ) as answer:
        return answer.read()


def _certificate(directory) -> tuple[str, str]:
    """A self-signed certificate for the GCS hosts (its own CA): (cert file, key file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tpu_train test GCS")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(h) for h in GOOGLE_HOSTS]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "gcs.pem", directory / "gcs.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_file), str(key_file)


def _relay_proxy(emulator_port: int, tls: ssl.SSLContext) -> ThreadingHTTPServer:
    """An HTTPS proxy for TF's gfile: CONNECT tunnels end here in TLS, and every request (in a
    tunnel, or sent straight here, as resumable-upload chunks are) is relayed to the emulator,
    its body de-chunked (the emulator reads Content-Length before Transfer-Encoding). The emulator
    is told this proxy is its host, so the upload URLs it returns point here."""

    class Relay(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_CONNECT(self):
            self.send_response(200, "Connection established")
            self.end_headers()
            self.connection = tls.wrap_socket(self.connection, server_side=True)
            self.rfile = self.connection.makefile("rb")
            self.wfile = self.connection.makefile("wb", buffering=0)

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                body = b""
                while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                    body += self.rfile.read(size)
                    self.rfile.readline()
                while self.rfile.readline().strip():  # trailers
                    pass
                return body
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def relay(self):
            body = self._body()
            skip = {"host", "connection", "proxy-connection", "content-length"}
            skip |= {"transfer-encoding", "expect"}
            headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
            headers["Host"] = f"127.0.0.1:{self.server.server_address[1]}"
            upstream = http.client.HTTPConnection("127.0.0.1", emulator_port, timeout=60)
            try:
                upstream.request(self.command, self.path, body, headers)
                answer = upstream.getresponse()
                data = answer.read()
            finally:
                upstream.close()
            self.send_response(answer.status, answer.reason)
            for k, v in answer.getheaders():
                if k.lower() not in {"connection", "content-length", "transfer-encoding"}:
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = relay

    server = ThreadingHTTPServer(("127.0.0.1", 0), Relay)
    server.daemon_threads = True
    return server


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """(environment for the subprocesses, the emulator's URL) of an emulator on loopback holding
    BUCKET; the emulator and the proxy stop at the end of the module."""
    patch = pytest.MonkeyPatch()
    patch.setattr(
        emulator_objects,
        "_media_upload",
        _media_upload_of_empty_objects(emulator_objects._media_upload),
    )
    patch.setattr(
        emulator_objects, "download", _download_with_generation(emulator_objects.download)
    )
    port = _free_port()
    emulator = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    emulator._api.daemon = True  # a test that dies cannot keep pytest from exiting
    emulator.start()
    cert_file, key_file = _certificate(tmp_path_factory.mktemp("gcs-tls"))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert_file, key_file)
    proxy = _relay_proxy(port, tls)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    env = {
        "EPATH_USE_TF": "false",
        # gcsfs's HNS/zonal-bucket extension asks Storage Control over gRPC for every bucket's
        # layout, which the emulator does not serve (a warning per call, and retries).
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        # google-auth (under gcsfs) looks for the GCE metadata server at a link-local address; every
        # lookup goes to a closed loopback port instead (strace showed no other address reached).
        "NO_GCE_CHECK": "True",
        "GCE_METADATA_HOST": "127.0.0.1:9",
        "GCE_METADATA_IP": "127.0.0.1:9",
        "STORAGE_EMULATOR_HOST": url,
        "TENSORSTORE_GCS_HTTP_URL": url,
        "HTTPS_PROXY": f"http://127.0.0.1:{proxy.server_address[1]}",
        "https_proxy": f"http://127.0.0.1:{proxy.server_address[1]}",
        "CURL_CA_BUNDLE": cert_file,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "HTTP_PROXY": "",
        "http_proxy": "",
    }
    try:
        yield env, url
    finally:
        proxy.shutdown()
        proxy.server_close()
        emulator.stop()
        patch.undo()


def test_gs_workdir_imports_trains_resumes_and_exports(tmp_path, hf_llama_factory, gcs):
    env, url = gcs
    hf_dir, _ = hf_llama_factory(vocab_size=4096, num_key_value_heads=2)
    workdir = f"gs://{BUCKET}/runs/tiny"
    flags = [
        f"--config.init.hf_dir={hf_dir}",
        "--config.optimizer.learning_rate=1e-7",  # tiny steps: the weights stay the imported ones
        "--config.optimizer.warmup_steps=0",
        "--config.data.report_overlong=False",
        "--config.train.log_every=1",
        "--config.checkpoint.every_steps=2",
        # The periodic evaluation writes its items, table, chart and summary into the bucket.
        "--config.eval.every_steps=4",
        "--config.eval.items_per_benchmark=2",
        "--config.eval.batch_size=2",
        "--config.eval.max_new_tokens=8",
    ]

    def run(command):
        done = run_command(command, env=env, timeout=TIMEOUT, check=False)
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
        return done.stdout

    first = run(train_command(workdir, *flags, "--config.train.num_steps=2"))
    assert "imported" in first and "step 2/2" in first
    resumed = run(train_command(workdir, *flags, "--config.train.num_steps=4"))
    assert "resumed from" in resumed and "(step 2)" in resumed and "step 4/4" in resumed

    root = "runs/tiny"
    names = {p.removeprefix(root + "/") for p in _list_objects(url, root + "/")}
    assert {"metrics.jsonl", "tokenizer.model", "config.json", "model_config.json"} <= names
    rows = [json.loads(r) for r in _read_object(url, f"{root}/metrics.jsonl").decode().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert any(n.startswith("tensorboard/events.out.tfevents.") for n in names), sorted(names)
    assert any(n.startswith("checkpoints/4/") for n in names), sorted(names)
    evaluation = {"items.jsonl", "table.md", "chart.png", "summary.json"}
    assert {f"eval/step_4/{n}" for n in evaluation} <= names, sorted(names)
    assert _read_object(url, f"{root}/eval/step_4/chart.png").startswith(b"\x89PNG")

    out = tmp_path / "export"
    exported = run(
        [
            train_command(workdir)[0],
            "-m",
            "tpu_train.export_hf",
            f"--workdir={workdir}",
            f"--out={out}",
        ]
    )
    assert "4" in exported
    assert (out / "tokenizer.model").exists() and (out / "config.json").exists()
    ours, imported = CheckpointReader(out), CheckpointReader(hf_dir)
    tensors = sorted(imported.names())
    assert sorted(ours.names()) == tensors
    worst = max(float(np.abs(ours.get(n) - imported.get(n)).max()) for n in tensors)
    assert worst < 1e-3
