"""`vitkit serve`: the HTTP API answers like `vitkit predict`, batches concurrent requests, and bad
uploads and stalled clients get a clear 4xx (or are dropped) without holding anything up."""
import base64
import io
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_classifier_run

import vitkit
from vitkit.errors import VitkitError
from vitkit.inference.predict import predict_files
from vitkit.serve import Predictor, ServerOptions, ServeSettings, create_app, running
from vitkit.serve.server import bind


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve") / "ckpt"
    return folder, *tiny_classifier_run(folder)


def predictor_of(checkpoint, topk: int = 2) -> Predictor:
    folder, classifier, config, model = checkpoint
    return Predictor(classifier, config, str(folder), "torch fp32", topk=topk, model=model)


@pytest.fixture(scope="module")
def served(checkpoint):
    with running(create_app(predictor_of(checkpoint), ServeSettings(max_body=50_000))) as url:
        yield url, checkpoint[1], checkpoint[2], checkpoint[0]


def call(url: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET",
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def noise_png(seed: int, size: int = 16) -> bytes:
    return png(Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)))


def huge_png() -> bytes:
    """A small PNG whose header claims 60,000 x 60,000 pixels (its IHDR patched, CRC fixed)."""
    import struct
    import zlib
    data = bytearray(png(Image.new("L", (8, 8))))
    data[16:24] = struct.pack(">II", 60_000, 60_000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def metric(text: str, name: str) -> float:
    """The value of one sample of /metrics (``name`` with its labels, as printed)."""
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(match[1]) if match else 0.0


def test_predict_answers_what_vitkit_predict_prints(served, tmp_path):
    url, classifier, config, _ = served
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 4), dtype=np.uint8), "RGBA")
    (tmp_path / "p.png").write_bytes(png(picture))
    status, body = call(f"{url}/predict?name=p.png&topk=3", png(picture))
    assert status == 200
    answer = json.loads(body)
    expected = next(predict_files(classifier, [tmp_path / "p.png"], config, topk=3))
    assert answer["name"] == "p.png" and answer["ms"] > 0
    assert [(t["class"], t["prob"]) for t in answer["topk"]] == expected.topk
    assert len(json.loads(call(f"{url}/predict", png(picture))[1])["topk"]) == 2  # the server's default


@pytest.mark.parametrize("path, data, status, message", [
    ("/predict?name=x.png", b"GIF89a but not really", 400, "x.png: unreadable image data"),
    ("/predict?name=empty.jpg", b"", 400, "empty.jpg: the image is empty"),
    ("/predict?name=cut.png", noise_png(3)[:60], 400, "cut.png: "),
    ("/predict?name=huge.png", huge_png(), 400, "huge.png: image is too large (3,600,000,000 pixels"),
    ("/predict?name=big.png", b"\0" * 60_000, 413, "big.png: 60,000 bytes is over the limit of 50,000"),
    ("/predict?name=zeros.png", b"\0" * 40_000_000, 413, "zeros.png: 40,000,000 bytes is over the limit"),
    ("/predict?topk=0", png(Image.new("L", (8, 8))), 400, "topk must be a positive integer"),
    ("/predict?topk=abc", png(Image.new("L", (8, 8))), 400, "topk must be a positive integer, got 'abc'"),
    ("/predict?topk=%C2%B2", png(Image.new("L", (8, 8))), 400, "topk must be a positive integer"),  # '²'.isdigit()
    ("/predict", None, 405, "/predict takes POST"),
    ("/classify", b"x", 404, "/classify: no such endpoint"),
    ("/nothing", None, 404, "/nothing: no such endpoint"),
])
def test_bad_requests_get_a_clear_error(served, path, data, status, message):
    code, body = call(served[0] + path, data)
    assert code == status and message in json.loads(body)["error"]


def multipart(fields: list[tuple[str, str | None, bytes]], boundary: str = "vitkitBoundary42") -> tuple[bytes, str]:
    """A form body as curl -F builds it: (field name, file name or None, content) per part."""
    body = b""
    for field, filename, content in fields:
        disposition = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename else "")
        kind = "image/png" if filename else "text/plain"
        body += (f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {kind}\r\n\r\n"
                 .encode() + content + b"\r\n")
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_a_form_upload_is_read_like_the_raw_image(served):
    url = served[0]
    image = noise_png(1, 20)
    raw = json.loads(call(f"{url}/predict", image)[1])
    body, content_type = multipart([("note", None, b"hello"), ("file", "shoe.png", image)])
    code, answer = call(f"{url}/predict", body, {"Content-Type": content_type})
    assert code == 200 and json.loads(answer)["name"] == "shoe.png" and json.loads(answer)["topk"] == raw["topk"]
    body, content_type = multipart([("note", None, b"hello")])
    code, answer = call(f"{url}/predict", body, {"Content-Type": content_type})
    assert code == 400 and "the form holds no file" in json.loads(answer)["error"]


def test_explain_returns_the_image_beside_its_rollout_overlay(served):
    url = served[0]
    picture = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16))
    status, body = call(f"{url}/explain?name=ramp.png", png(picture))
    assert status == 200
    strip = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
    assert strip.shape == (224, 448, 3)  # 16 px enlarged 14x (nearest), input then overlay
    assert np.array_equal(strip[::14, :224:14, 0], np.asarray(picture))  # the left half is the input
    assert not np.array_equal(strip[:, :224], strip[:, 224:])
    code, body = call(f"{url}/explain?name=bad.png", b"not an image")
    assert code == 400 and "bad.png: unreadable image data" in json.loads(body)["error"]
    both = json.loads(call(f"{url}/predict?name=ramp.png&explain=1", png(picture))[1])  # one upload, as the page does
    explanation = base64.b64encode(call(f"{url}/explain", png(picture))[1]).decode()
    assert both["explanation"] == "data:image/png;base64," + explanation
    assert len(both["topk"]) == 2 and "explanation" not in json.loads(call(f"{url}/predict", png(picture))[1])


def test_a_cnn_is_served_without_explain():
    from fastapi.testclient import TestClient
    cnn = vitkit.create_model("resnet_mini_28").eval()
    config = dict(classes=[str(i) for i in range(10)], mean=[0.5], std=[0.5], img_size=28, in_chans=1)
    with TestClient(create_app(Predictor(cnn, config, "cnn", "torch", model=cnn))) as client:
        assert client.get("/info").json()["explain"] is False
        image = png(Image.new("L", (28, 28)))
        for path in ("/explain", "/predict?explain=1"):
            r = client.post(path, content=image)
            assert r.status_code == 400 and "no attention layers" in r.json()["error"]
        assert len(client.post("/predict", content=image).json()["topk"]) == 5


def test_page_health_info_and_docs(served):
    url = served[0]
    status, page = call(url + "/")
    assert status == 200 and b'type="file"' in page and b"predict?" in page and b"explain=1" in page
    assert b"topk=" not in page  # the page lists the server's --topk, as curl gets without ?topk
    assert json.loads(call(url + "/health")[1]) == {"status": "ok"}
    with urllib.request.urlopen(urllib.request.Request(url + "/health", method="HEAD"), timeout=30) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "application/json" and r.read() == b""
    info = json.loads(call(url + "/info")[1])
    assert info["classes"] == ["ant", "bee", "cat"] and (info["img_size"], info["in_chans"]) == (16, 1)
    assert info["explain"] is True and info["checkpoint"] == "ckpt"  # the run's name, not where it lives
    schema = json.loads(call(url + "/openapi.json")[1])
    assert {"/predict", "/explain", "/health", "/info", "/metrics"} <= set(schema["paths"])
    assert "image/*" in schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert call(url + "/docs")[0] == 200
    request = urllib.request.Request(url + "/predict?topk=1", data=noise_png(0), method="PUT")  # curl -T
    with urllib.request.urlopen(request, timeout=30) as r:
        assert len(json.loads(r.read())["topk"]) == 1


def test_concurrent_requests_are_batched_and_answered_as_one_by_one(checkpoint):
    predictor = predictor_of(checkpoint, topk=3)
    images = [noise_png(seed) for seed in range(12)]
    alone = [predictor.classify(predictor.decode(data, "x")[None], [3])[0] for data in images]
    with running(create_app(predictor, ServeSettings(max_wait_ms=300))) as url:
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda data: json.loads(call(url + "/predict", data)[1]), images))
        text = call(url + "/metrics")[1].decode()
    for answer, expected in zip(answers, alone):
        assert [t["class"] for t in answer["topk"]] == [c for c, _ in expected]
        assert np.allclose([t["prob"] for t in answer["topk"]], [p for _, p in expected], atol=2e-6)
    assert metric(text, "vitkit_batch_size_sum") == 12
    assert metric(text, "vitkit_batch_size_count") < 12  # some forward passes took several images
    assert metric(text, 'vitkit_requests_total{route="/predict",status="200"}') == 12


def test_a_full_queue_answers_503_and_the_queued_requests_still_finish(checkpoint):
    predictor = predictor_of(checkpoint)
    entered, release = threading.Event(), threading.Event()
    classify = predictor.classify

    def slow_classify(images, topks):
        entered.set()
        release.wait(30)
        return classify(images, topks)

    predictor.classify = slow_classify
    app = create_app(predictor, ServeSettings(max_batch=1, max_wait_ms=0, max_queue=1))
    with running(app) as url, ThreadPoolExecutor(2) as pool:
        first = pool.submit(call, url + "/predict", noise_png(0))  # taken by the model, which waits
        assert entered.wait(30)
        second = pool.submit(call, url + "/predict", noise_png(1))  # fills the queue
        for _ in range(300):
            if app.state.batcher.waiting == 1:
                break
            time.sleep(0.01)
        code, body = call(url + "/predict", noise_png(2))
        assert code == 503 and "queue is full" in json.loads(body)["error"]
        release.set()
        assert first.result()[0] == 200 and second.result()[0] == 200
        text = call(url + "/metrics")[1].decode()
    assert metric(text, 'vitkit_errors_total{kind="queue_full"}') == 1
    assert metric(text, 'vitkit_requests_total{route="/predict",status="503"}') == 1


def test_metrics_count_requests_errors_and_latency(served):
    url = served[0]
    before = call(url + "/metrics")[1].decode()
    call(url + "/predict", noise_png(5))
    call(url + "/predict?name=bad.png", b"not an image")
    code, text = call(url + "/metrics")
    text = text.decode()
    assert code == 200 and "# TYPE vitkit_request_seconds histogram" in text
    for sample in ('vitkit_requests_total{route="/predict",status="200"}',
                   'vitkit_requests_total{route="/predict",status="400"}', 'vitkit_errors_total{kind="bad_upload"}',
                   'vitkit_request_seconds_count{route="/predict"}'):
        assert metric(text, sample) >= metric(before, sample) + 1, sample
    assert metric(text, 'vitkit_batch_size_bucket{le="+Inf"}') >= 1


def raw_connection(url: str) -> socket.socket:
    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def test_stalled_clients_are_dropped_and_hold_nothing_up(checkpoint):
    app = create_app(predictor_of(checkpoint), ServeSettings(body_timeout=0.5))
    with running(app, ServerOptions(port=0, header_timeout=0.5)) as url:
        idle = [raw_connection(url) for _ in range(40)]  # valid headers, a body that never comes
        for s in idle:
            s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
        silent = raw_connection(url)  # sends nothing at all
        assert call(url + "/predict", noise_png(0))[0] == 200  # served meanwhile, at once
        answer = idle[0].recv(4096).decode()
        assert answer.startswith("HTTP/1.1 408") and "did not arrive within 0.5 s" in answer
        assert silent.recv(4096) == b""  # closed after the header timeout
        for s in idle + [silent]:
            s.close()
        leaving = raw_connection(url)  # a client that leaves mid-upload is counted, not a server error
        leaving.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
        time.sleep(0.1)
        leaving.close()
        for _ in range(100):
            text = call(url + "/metrics")[1].decode()
            if metric(text, 'vitkit_errors_total{kind="disconnected"}') == 1:
                break
            time.sleep(0.02)
        assert metric(text, 'vitkit_errors_total{kind="disconnected"}') == 1
        assert metric(text, 'vitkit_errors_total{kind="timeout"}') == 40
        assert metric(text, 'vitkit_errors_total{kind="internal"}') == 0


@pytest.mark.slow
def test_the_serve_command_listens_and_stops(served):
    """`vitkit serve --port 0` prints its address, answers, and stops on Ctrl-C (SIGINT)."""
    import signal
    # A shell's background job (`pytest &`) ignores SIGINT, and an ignored signal stays ignored across
    # exec; the server is given Ctrl-C's usual meaning, as in a terminal.
    proc = subprocess.Popen([sys.executable, "-m", "vitkit", "serve", "--checkpoint", str(served[3]), "--port", "0",
                             "--precision", "fp32"], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = proc.stderr.readline()
        assert line.startswith("serving ") and "http://127.0.0.1:" in line, line
        url = line.split()[3].rstrip("/")
        status, body = call(url + "/predict?name=a.png", png(Image.new("RGB", (20, 20), "red")))
        assert status == 200 and len(json.loads(body)["topk"]) == 3  # --topk 5, capped at the 3 classes
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0


@pytest.mark.slow
def test_workers_share_the_port_and_their_metrics_are_summed(served):
    """`--workers 2`: two processes answer on one port; /metrics counts the requests of both."""
    import signal
    proc = subprocess.Popen([sys.executable, "-m", "vitkit", "serve", "--checkpoint", str(served[3]), "--port", "0",
                             "--precision", "fp32", "--workers", "2"], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        url = proc.stderr.readline().split()[3].rstrip("/")
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # a full pipe would block the server
        with ThreadPoolExecutor(8) as pool:
            codes = [code for code, _ in pool.map(lambda i: call(url + "/predict", noise_png(i)), range(16))]
        assert codes == [200] * 16
        text = call(url + "/metrics")[1].decode()
        assert metric(text, 'vitkit_requests_total{route="/predict",status="200"}') == 16
        assert metric(text, "vitkit_batch_size_sum") == 16
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0


def test_a_port_out_of_range_is_refused_before_loading_anything(capsys):
    from vitkit.cli import main
    with pytest.raises(SystemExit) as e:
        main(["serve", "--checkpoint", "/no/such/run", "--port", "70000"])
    assert e.value.code == 2 and "a port is 0 to 65535" in capsys.readouterr().err


def test_a_taken_port_is_one_clear_error_and_ipv6_gets_an_ipv6_socket():
    taken = bind("127.0.0.1", 0)
    taken.listen()
    with pytest.raises(VitkitError, match=f"cannot listen on 127.0.0.1:{taken.getsockname()[1]}"):
        bind("127.0.0.1", taken.getsockname()[1])
    taken.close()
    try:
        ipv6 = bind("::1", 0)
    except VitkitError:
        pytest.skip("no IPv6 on this machine")
    assert ipv6.family == socket.AF_INET6
    ipv6.close()
